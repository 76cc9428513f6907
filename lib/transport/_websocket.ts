/**
 * RFC 6455 over a connection the guard accepted, in the same process: the hot path of both ports.
 *
 * Relaying an upgraded connection through a loopback `Deno.serve` doubled the server's work per
 * message (two more reads and writes, two more sockets). Owning the framing also gives what the
 * runtime's WebSocket does not: every frame that one read brought is handled in one go, every
 * frame sent in one turn of the event loop leaves in one write, liveness costs one timer per
 * connection instead of one re-armed on every message, and a message over the runtime's 64 MiB
 * cap is answered rather than closing the connection.
 *
 * {@linkcode ConnSocket} implements the part of `WebSocket` the ports use (`readyState`,
 * `bufferedAmount`, `send`, `close`, the `on…` handlers and `addEventListener("close")`), so the
 * same port code serves it and, with `--no-guard`, Deno's own.
 *
 * @module
 */

import { RUNTIME_FRAME_CAP } from "./_frame_size.ts";
import { logger } from "../log.ts";

const log = logger("websocket");

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/**
 * Buffers start small and grow with use: an idle connection costs a few KiB (a flood of them
 * must not cost the server a read buffer each of the size a busy one wants).
 */
const READ_MIN = 4 * 1024;
/** A busy connection's read buffer: frames beyond it grow it for their time only. */
const CHUNK = 64 * 1024;
const OUT_MIN = 4 * 1024;
/** Written buffers up to this size are kept for the next turn. */
const OUT_KEEP = 64 * 1024;
/** Texts up to this many characters are encoded straight into the outgoing buffer. */
const SHORT_TEXT = 16 * 1024;
const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");
// A leading U+FEFF is part of the message, not a byte-order mark to drop.
const utf8 = new TextDecoder("utf-8", { ignoreBOM: true });
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** The `Sec-WebSocket-Accept` value for a client's key. */
export async function acceptKey(key: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-1",
    encoder.encode(key + GUID),
  );
  let binary = "";
  for (const byte of new Uint8Array(digest)) {
    binary += String.fromCharCode(byte);
  }
  return btoa(binary);
}

/** What {@linkcode ConnSocket} hands to `onmessage`. */
export interface SocketMessage {
  /** A text message as a string, a binary one as an `ArrayBuffer`. */
  data: string | ArrayBuffer;
}

/** What {@linkcode ConnSocket} hands to `onclose`. */
export interface SocketClose {
  code: number;
  reason: string;
  wasClean: boolean;
}

/** Options for {@linkcode ConnSocket}. */
export interface ConnSocketOptions {
  /**
   * Seconds without a byte from the peer before it is pinged (after half) and closed with 1001
   * (after all); 0 for never. Checked by one timer per connection, not one per message.
   */
  idleTimeout?: number;
  /** Largest message taken, in bytes. @default the runtime's own cap, 64 MiB */
  maxMessageBytes?: number;
  /**
   * The text frame that answers a message over `maxMessageBytes`, given its size. Without it,
   * such a message closes the connection with 1009 (as the runtime does).
   */
  oversizeAnswer?: (bytes: number) => string;
  /**
   * The client end: frames sent are masked, frames received must not be (RFC 6455 §5.1).
   * @default false
   */
  client?: boolean;
  /**
   * Sees each text message's bytes before they are decoded; returns true for those it took.
   * The bytes are a view into a buffer the socket reuses: copy what is kept.
   */
  onTextBytes?: (bytes: Uint8Array) => boolean;
}

type Listener = (event: SocketClose) => void;

/** A WebSocket over a `Deno.Conn`, either end; see the module doc. */
export class ConnSocket {
  readyState: number = CONNECTING;
  onopen: ((event: Event) => void) | null = null;
  onmessage: ((event: SocketMessage) => void) | null = null;
  onclose: ((event: SocketClose) => void) | null = null;
  onerror: ((event: Event) => void) | null = null;
  /** A ping or a pong came: the peer is alive. */
  onping: (() => void) | null = null;
  onpong: (() => void) | null = null;

  #conn: Deno.Conn;
  #options: ConnSocketOptions;
  /** Frames waiting for the next write, `#outLen` bytes of them. */
  #out = new Uint8Array(0);
  #outLen = 0;
  /** The buffer last written, kept for the next turn. */
  #spare: Uint8Array<ArrayBuffer> | undefined;
  #inFlight = 0;
  #flushing = false;
  #closeListeners: Listener[] = [];
  #closeSent = false;
  #closeEvent: SocketClose | undefined;
  /** The close the peer asked for (or our failure), reported once the connection ends. */
  #peerClosed: SocketClose | undefined;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #idleTimer: ReturnType<typeof setInterval> | undefined;
  #lastHeard = 0;
  #pinged = false;
  #done = Promise.withResolvers<void>();
  readonly #client: boolean;
  /** Set while reading is paused: resolves when it may go on. */
  #paused: PromiseWithResolvers<void> | undefined;

  constructor(conn: Deno.Conn, options: ConnSocketOptions = {}) {
    this.#conn = conn;
    this.#options = options;
    this.#client = options.client ?? false;
  }

  /** Stops reading: the peer's frames wait in the kernel and, past its buffers, in the peer. */
  pause(): void {
    this.#paused ??= Promise.withResolvers<void>();
  }

  /** Reads again after {@linkcode pause}. */
  resume(): void {
    this.#paused?.resolve();
    this.#paused = undefined;
  }

  /** Sends a ping: traffic of our own that keeps the peer's idle timer from firing. */
  ping(): void {
    if (this.readyState === OPEN) this.#enqueue(0x9, new Uint8Array(0));
  }

  /**
   * Ends the connection at once, without a closing handshake (also a socket that never opened,
   * when its handshake answer could not be written).
   */
  terminate(): void {
    this.#finish({ code: 1006, reason: "", wasClean: false });
  }

  /** Bytes given to `send` that the peer's connection has not taken yet. */
  get bufferedAmount(): number {
    return this.#outLen + this.#inFlight;
  }

  /** Resolves once the connection is closed and `onclose` has run. */
  get closed(): Promise<void> {
    return this.#done.promise;
  }

  /**
   * Only `"close"` is dispatched to listeners, the one event the ports and clients listen to; a
   * listener added after the close hears it too, in a microtask.
   */
  addEventListener(
    type: string,
    listener: Listener,
    _options?: { once?: boolean },
  ): void {
    if (type !== "close") return;
    const closed = this.#closeEvent;
    if (closed) queueMicrotask(() => listener(closed));
    else this.#closeListeners.push(listener);
  }

  /**
   * Opens the socket once the handshake answer is written: `onopen` runs, then the frames that
   * came with the request head (`initial`) and everything after.
   */
  start(initial: Uint8Array): void {
    this.readyState = OPEN;
    this.#lastHeard = Date.now();
    const idle = (this.#options.idleTimeout ?? 0) * 1000;
    if (idle > 0) {
      this.#idleTimer = setInterval(() => this.#checkIdle(idle), idle / 2);
    }
    try {
      this.onopen?.(new Event("open"));
    } catch (error) {
      log.error("An open handler failed: {error}", { error });
    }
    void this.#readLoop(initial);
  }

  /** Sends a text (string) or binary message; ignored once the socket is closing. */
  send(data: string | Uint8Array | ArrayBuffer): void {
    if (this.readyState === CONNECTING) {
      throw new DOMException("The socket is not open yet", "InvalidStateError");
    }
    if (this.readyState !== OPEN) return;
    if (typeof data === "string") {
      this.#enqueueText(data);
    } else {
      this.#enqueue(
        0x2,
        data instanceof Uint8Array ? data : new Uint8Array(data),
      );
    }
  }

  /**
   * Starts the closing handshake. A peer that does not answer within a second (or does not
   * read: its close frame waits behind unread bytes) is cut off, which the runtime's
   * WebSocket cannot do.
   */
  close(code = 1000, reason = ""): void {
    if (this.readyState === CLOSING || this.readyState === CLOSED) return;
    this.readyState = CLOSING;
    this.#sendClose(code, reason);
    this.#closeTimer = setTimeout(
      () => this.#finish({ code, reason, wasClean: false }),
      1000,
    );
  }

  #sendClose(code: number, reason: string): void {
    if (this.#closeSent) return;
    this.#closeSent = true;
    let text = encoder.encode(reason);
    if (text.length > 123) {
      // Cut at a character boundary: a continuation byte starts with the bits 10.
      let end = 123;
      while (end > 0 && (text[end] & 0xc0) === 0x80) end--;
      text = text.subarray(0, end);
    }
    const payload = new Uint8Array(2 + text.length);
    payload[0] = code >> 8;
    payload[1] = code & 0xff;
    payload.set(text, 2);
    this.#enqueue(0x8, payload);
  }

  #checkIdle(idleMs: number): void {
    const quiet = Date.now() - this.#lastHeard;
    if (quiet >= idleMs) {
      // Gone without a word: no close handshake to wait for.
      this.#finish({ code: 1001, reason: "Idle timeout", wasClean: false });
    } else if (quiet >= idleMs / 2 && !this.#pinged) {
      this.#pinged = true;
      this.#enqueue(0x9, new Uint8Array(0));
    }
  }

  /**
   * Frames a text message into the outgoing buffer. A short string is encoded in place, behind
   * room for the longest header it could need; the header is then written and the text moved up
   * to meet it when the header came out shorter.
   */
  #enqueueText(text: string): void {
    if (text.length > SHORT_TEXT) {
      return this.#enqueue(0x1, encoder.encode(text));
    }
    const most = text.length * 3;
    const key = this.#client ? 4 : 0;
    const room = (most < 126 ? 2 : 4) + key;
    this.#reserve(room + most);
    const at = this.#outLen;
    const { written } = encoder.encodeInto(
      text,
      this.#out.subarray(at + room, at + room + most),
    );
    const head = this.#header(0x1, written);
    if (head < room) {
      this.#out.copyWithin(at + head, at + room, at + room + written);
    }
    if (key) mask(this.#out, at + head, written, at + head - 4);
    this.#outLen = at + head + written;
    this.#schedule();
  }

  /** Frames a message for the next write; every frame sent in one turn leaves in one write. */
  #enqueue(opcode: number, payload: Uint8Array): void {
    this.#reserve(14 + payload.length);
    const head = this.#header(opcode, payload.length);
    const at = this.#outLen + head;
    this.#out.set(payload, at);
    if (this.#client) mask(this.#out, at, payload.length, at - 4);
    this.#outLen = at + payload.length;
    this.#schedule();
  }

  /**
   * Writes a frame header at the end of the outgoing buffer, with a fresh mask key on the
   * client end; returns its length.
   */
  #header(opcode: number, n: number): number {
    const out = this.#out;
    const at = this.#outLen;
    const masked = this.#client ? 0x80 : 0;
    out[at] = 0x80 | opcode;
    let length: number;
    if (n < 126) {
      out[at + 1] = masked | n;
      length = 2;
    } else if (n < 65536) {
      out[at + 1] = masked | 126;
      out[at + 2] = n >> 8;
      out[at + 3] = n & 0xff;
      length = 4;
    } else {
      out[at + 1] = masked | 127;
      new DataView(out.buffer, out.byteOffset + at + 2, 8).setBigUint64(
        0,
        BigInt(n),
      );
      length = 10;
    }
    if (!masked) return length;
    maskKey(out, at + length);
    return length + 4;
  }

  #reserve(bytes: number): void {
    const need = this.#outLen + bytes;
    if (need <= this.#out.length) return;
    const bigger = new Uint8Array(
      Math.max(need, this.#out.length * 2, OUT_MIN),
    );
    bigger.set(this.#out.subarray(0, this.#outLen));
    this.#out = bigger;
  }

  readonly #flushTask = () => void this.#flush();

  #schedule(): void {
    if (!this.#flushing) {
      this.#flushing = true;
      queueMicrotask(this.#flushTask);
    }
  }

  /**
   * Writes the outgoing buffer while it has bytes. Two buffers take turns: one is written while
   * the other fills, so a frame sent during a write joins the next one.
   */
  async #flush(): Promise<void> {
    try {
      while (this.#outLen > 0) {
        const full = this.#out;
        const length = this.#outLen;
        this.#inFlight = length;
        this.#out = this.#spare ?? new Uint8Array(0);
        this.#spare = undefined;
        this.#outLen = 0;
        // Most writes take every byte at once: no view and no loop until one does not.
        const n = await this.#conn.write(full.subarray(0, length));
        if (n < length) await writeAll(this.#conn, full.subarray(n, length));
        this.#inFlight = 0;
        // A buffer grown for one large message is let go rather than kept.
        if (full.length <= OUT_KEEP) this.#spare = full;
      }
    } catch {
      this.#inFlight = 0;
      this.#finish({ code: 1006, reason: "", wasClean: false });
    } finally {
      this.#flushing = false;
    }
    if (this.#closeSent && this.#closeEvent === undefined && this.#peerClosed) {
      this.#finish(this.#peerClosed);
    }
  }

  async #readLoop(initial: Uint8Array): Promise<void> {
    let buf = new Uint8Array(Math.max(READ_MIN, initial.length));
    buf.set(initial);
    let start = 0;
    let end = initial.length;
    /** Payload bytes of an oversize message still to throw away. */
    let skip = 0;
    /** The size so far of an oversize message being thrown away, 0 outside one. */
    let oversize = 0;
    /** The size to answer once the skipped bytes are gone (the message's last frame came). */
    let answer = 0;
    /** The last read filled the buffer to its end. */
    let filled = false;
    /** Fragments of a message in progress. */
    // One growing buffer, not a list of pieces: a message sent a byte per fragment must cost
    // its bytes, not an object per byte.
    let fragments = new Uint8Array(0);
    let fragmentBytes = 0;
    let fragmentOpcode = 0;
    const max = this.#options.maxMessageBytes ?? RUNTIME_FRAME_CAP;
    try {
      for (;;) {
        // Handle every complete frame the buffer holds.
        while (this.readyState !== CLOSED) {
          if (skip > 0) {
            const n = Math.min(skip, end - start);
            skip -= n;
            start += n;
            if (skip > 0) break;
            if (answer > 0) this.#oversize(answer);
            answer = 0;
            continue;
          }
          const available = end - start;
          if (available < 2) break;
          const b0 = buf[start];
          const b1 = buf[start + 1];
          if ((b0 & 0x70) !== 0) return this.#fail(1002, "Reserved bits set");
          const masked = (b1 & 0x80) !== 0;
          if (masked === this.#client) {
            return this.#fail(
              1002,
              this.#client
                ? "Frames from a server must not be masked"
                : "Frames from a client must be masked",
            );
          }
          const len7 = b1 & 0x7f;
          const headLen = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) +
            (masked ? 4 : 0);
          if (available < headLen) break;
          const fin = (b0 & 0x80) !== 0;
          const opcode = b0 & 0x0f;
          let length = len7;
          if (len7 === 126) length = (buf[start + 2] << 8) | buf[start + 3];
          else if (len7 === 127) {
            length = 0;
            if (buf[start + 2] & 0x80) {
              return this.#fail(1002, "Payload length over 2^63");
            }
            for (let i = 2; i < 10; i++) length = length * 256 + buf[start + i];
          }
          const control = opcode >= 0x8;
          if (control && (!fin || length > 125)) {
            return this.#fail(1002, "Invalid control frame");
          }
          if (!control) {
            const continuing = opcode === 0x0;
            if (continuing !== (fragmentOpcode !== 0 || oversize > 0)) {
              return this.#fail(1002, "Unexpected continuation frame");
            }
            if (!continuing && opcode !== 0x1 && opcode !== 0x2) {
              return this.#fail(1002, `Unknown opcode ${opcode}`);
            }
            const sofar = continuing ? oversize || fragmentBytes : 0;
            if (oversize > 0 || sofar + length > max) {
              // Thrown away as it streams in, never held; answered once its last frame is in.
              if (oversize === 0) {
                if (this.#options.oversizeAnswer === undefined) {
                  return this.#fail(1009, "Message too big");
                }
                fragments = new Uint8Array(0);
                fragmentBytes = 0;
                fragmentOpcode = 0;
              }
              oversize = sofar + length;
              start += headLen;
              skip = length;
              if (fin) {
                answer = oversize;
                oversize = 0;
                if (skip === 0) {
                  this.#oversize(answer);
                  answer = 0;
                }
              }
              continue;
            }
          } else if (opcode !== 0x8 && opcode !== 0x9 && opcode !== 0xa) {
            return this.#fail(1002, `Unknown opcode ${opcode}`);
          }
          if (available < headLen + length) {
            // Wait for the rest. The buffer grows as the bytes come, never ahead of them: a
            // header alone must not make the server set aside the length it claims.
            if (start > 0 && headLen + length > buf.length - start) {
              buf.copyWithin(0, start, end);
              end -= start;
              start = 0;
            }
            break;
          }
          const at = start + headLen;
          if (masked) mask(buf, at, length, at - 4);
          start = at + length;
          const payload = buf.subarray(at, at + length);
          if (control) {
            this.#control(opcode, payload);
            continue;
          }
          if (!fin || fragmentOpcode !== 0) {
            if (fragmentOpcode === 0) fragmentOpcode = opcode;
            if (fragmentBytes + length > fragments.length) {
              const bigger = new Uint8Array(
                Math.max(fragmentBytes + length, fragments.length * 2, 1024),
              );
              bigger.set(fragments.subarray(0, fragmentBytes));
              fragments = bigger;
            }
            fragments.set(payload, fragmentBytes);
            fragmentBytes += length;
            if (!fin) continue;
            const whole = fragments.subarray(0, fragmentBytes);
            const kind = fragmentOpcode;
            fragments = new Uint8Array(0);
            fragmentBytes = 0;
            fragmentOpcode = 0;
            if (!this.#deliver(kind, whole)) return;
          } else if (!this.#deliver(opcode, payload)) return;
        }
        if (this.readyState === CLOSED) return;
        if (start === end) {
          start = end = 0;
          // A large frame's buffer goes once it is handled; a read that filled a small buffer
          // says the peer is busy: the next reads get more room, up to CHUNK.
          if (buf.length > CHUNK) buf = new Uint8Array(CHUNK);
          else if (filled && buf.length < CHUNK) {
            buf = new Uint8Array(buf.length * 2);
          }
        } else if (start > 0 && buf.length - end < CHUNK / 4) {
          buf.copyWithin(0, start, end);
          end -= start;
          start = 0;
        }
        if (end === buf.length) {
          const bigger = new Uint8Array(buf.length * 2);
          bigger.set(buf.subarray(0, end));
          buf = bigger;
        }
        if (this.#paused) await this.#paused.promise;
        if (this.readyState === CLOSED) return;
        const n = await this.#conn.read(buf.subarray(end));
        if (n === null) break;
        end += n;
        filled = end === buf.length;
        this.#lastHeard = Date.now();
        this.#pinged = false;
      }
    } catch {
      // A reset or a closed descriptor: the close below says 1006.
    }
    this.#finish(
      this.#peerClosed ?? { code: 1006, reason: "", wasClean: false },
    );
  }

  #oversize(bytes: number): void {
    if (this.readyState !== OPEN) return;
    this.#enqueueText(this.#options.oversizeAnswer!(bytes));
  }

  /** Hands a message to `onmessage`; false when the socket failed instead. */
  #deliver(opcode: number, payload: Uint8Array): boolean {
    if (this.readyState !== OPEN) return true;
    let data: string | ArrayBuffer;
    if (opcode === 0x1 && this.#options.onTextBytes?.(payload)) return true;
    if (opcode === 0x1) {
      // The runtime's strict decoder costs several times the lenient one, and a lenient
      // decode marks every invalid sequence with U+FFFD: only a text holding one (sent on
      // purpose or not) is decoded again, strictly.
      data = utf8.decode(payload);
      if (data.includes("\uFFFD")) {
        try {
          strictUtf8.decode(payload);
        } catch {
          this.#fail(1007, "Text frame is not valid UTF-8");
          return false;
        }
      }
    } else {
      data = payload.slice().buffer;
    }
    try {
      this.onmessage?.({ data });
    } catch (error) {
      // A handler's bug must not end the read loop, nor the process.
      log.error("A message handler failed: {error}", { error });
    }
    return true;
  }

  #control(opcode: number, payload: Uint8Array): void {
    if (opcode === 0x9) {
      // A peer that pings and never reads would have its pongs pile up here: past 64 KiB
      // unsent, pings go unanswered (RFC 6455 lets a pong answer only the latest ping).
      if (this.readyState === OPEN && this.bufferedAmount < 64 * 1024) {
        this.#enqueue(0xa, payload.slice());
      }
      this.onping?.();
      return;
    }
    if (opcode === 0xa) return void this.onpong?.();
    if (payload.length === 1) return this.#fail(1002, "Close frame of 1 byte");
    const code = payload.length >= 2 ? (payload[0] << 8) | payload[1] : 1005;
    if (payload.length >= 2 && !validCloseCode(code)) {
      return this.#fail(1002, `Invalid close code ${code}`);
    }
    let reason: string;
    try {
      reason = strictUtf8.decode(payload.subarray(2));
    } catch {
      return this.#fail(1007, "Close reason is not valid UTF-8");
    }
    this.#peerClosed = { code, reason, wasClean: true };
    if (this.readyState === OPEN) {
      this.readyState = CLOSING;
      this.#sendClose(code === 1005 ? 1000 : code, "");
    }
    this.#closeSoon();
  }

  /**
   * Ends the connection once our close frame is written, or after a second whatever happens:
   * a peer that stopped reading must not hold a closing socket (and its port's bookkeeping)
   * open, however much it goes on sending.
   */
  #closeSoon(): void {
    if (!this.#flushing) return this.#finish(this.#peerClosed!);
    this.#closeTimer ??= setTimeout(
      () => this.#finish({ ...this.#peerClosed!, wasClean: false }),
      1000,
    );
  }

  #fail(code: number, reason: string): void {
    if (this.readyState === OPEN) {
      this.readyState = CLOSING;
      this.#sendClose(code, reason);
    }
    this.#peerClosed = { code, reason, wasClean: false };
    this.#closeSoon();
  }

  #finish(event: SocketClose): void {
    if (this.#closeEvent !== undefined) return;
    this.#closeEvent = event;
    this.readyState = CLOSED;
    this.resume();
    clearTimeout(this.#closeTimer);
    clearInterval(this.#idleTimer);
    this.#outLen = 0;
    try {
      this.#conn.close();
    } catch {
      // Closed already.
    }
    // A handler that throws must not take the process down from a timer or a read loop.
    for (const listener of [this.onclose, ...this.#closeListeners]) {
      try {
        listener?.(event);
      } catch (error) {
        log.error("A close handler failed: {error}", { error });
      }
    }
    this.#done.resolve();
  }
}

/** Close codes a peer may send (RFC 6455 §7.4): defined ones, and 3000–4999. */
function validCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
    (code >= 3000 && code <= 4999);
}

/** Random mask keys come from a pool filled by the system's generator, 4 KiB at a time. */
const keys = new Uint8Array(4096);
let keyAt = keys.length;

function maskKey(out: Uint8Array, at: number): void {
  if (keyAt === keys.length) {
    crypto.getRandomValues(keys);
    keyAt = 0;
  }
  out[at] = keys[keyAt];
  out[at + 1] = keys[keyAt + 1];
  out[at + 2] = keys[keyAt + 2];
  out[at + 3] = keys[keyAt + 3];
  keyAt += 4;
}

/**
 * XORs `length` bytes at `at` with the 4-byte key at `keyAt` (masking and unmasking alike):
 * bytewise up to a 4-byte boundary, then a word at a time with the key turned to match.
 */
function mask(buf: Uint8Array, at: number, length: number, keyAt: number) {
  const k0 = buf[keyAt], k1 = buf[keyAt + 1], k2 = buf[keyAt + 2];
  const k3 = buf[keyAt + 3];
  const end = at + length;
  let i = at;
  if (length >= 64) {
    // Long payloads go a word at a time from the first aligned byte; short ones (most
    // requests and answers) are not worth the view this needs.
    const key = [k0, k1, k2, k3];
    let k = 0;
    for (; (buf.byteOffset + i) % 4 !== 0; i++, k++) buf[i] ^= key[k & 3];
    // Little-endian words: the byte at the lowest address is the word's low byte.
    const word = key[k & 3] | key[(k + 1) & 3] << 8 | key[(k + 2) & 3] << 16 |
      key[(k + 3) & 3] << 24;
    const words = (end - i) >> 2;
    const view = new Uint32Array(buf.buffer, buf.byteOffset + i, words);
    for (let w = 0; w < words; w++) view[w] ^= word;
    i += words * 4;
    k += words * 4;
    for (; i < end; i++, k++) buf[i] ^= key[k & 3];
    return;
  }
  for (; i + 3 < end; i += 4) {
    buf[i] ^= k0;
    buf[i + 1] ^= k1;
    buf[i + 2] ^= k2;
    buf[i + 3] ^= k3;
  }
  if (i < end) buf[i++] ^= k0;
  if (i < end) buf[i++] ^= k1;
  if (i < end) buf[i] ^= k2;
}

/** Where the blank line that ends an HTTP head starts in `buffer[from, length)`; -1 if not yet. */
export function headEnd(
  buffer: Uint8Array,
  from: number,
  length: number,
): number {
  for (let i = from; i + 3 < length; i++) {
    if (
      buffer[i] === 13 && buffer[i + 1] === 10 && buffer[i + 2] === 13 &&
      buffer[i + 3] === 10
    ) return i;
  }
  return -1;
}

/** Writes all of `bytes` (a write may take only part). */
export async function writeAll(
  conn: Deno.Conn,
  bytes: Uint8Array,
): Promise<void> {
  for (let done = 0; done < bytes.length;) {
    done += await conn.write(bytes.subarray(done));
  }
}

/** A handshake that the server answered with something else than 101. */
export class HandshakeError extends Error {
  constructor(message: string, readonly status?: number) {
    super(message);
    this.name = "HandshakeError";
  }
}

/** Options for {@linkcode connectWebSocket}. */
export interface ConnectWebSocketOptions {
  /** Extra request headers (`authorization`…). */
  headers?: Record<string, string>;
  /** PEM text of a CA certificate to trust for `wss://`. */
  ca?: string;
  /** Largest message taken from the server, in bytes. */
  maxMessageBytes?: number;
  /** How long connecting and the handshake may take, in ms. @default 10000 */
  handshakeTimeoutMs?: number;
  /** Gives up on the attempt. */
  signal?: AbortSignal;
  /** Sees each text message's bytes first: {@linkcode ConnSocketOptions.onTextBytes}. */
  onTextBytes?: (bytes: Uint8Array) => boolean;
  /** Sets the socket's handlers before any frame is read (one may come with the handshake). */
  setup?: (socket: ConnSocket) => void;
}

/**
 * Opens a client WebSocket on a `Deno.connect` (or `connectTls`) connection with Nagle off, for
 * the same reasons the ports frame their own: the runtime's client leaves Nagle on, so a
 * 1–16 KB message stalls ~44 ms; npm `ws` avoids that but runs on Node-compat streams.
 */
export async function connectWebSocket(
  url: string,
  options: ConnectWebSocketOptions = {},
): Promise<ConnSocket> {
  const target = new URL(url);
  const tls = target.protocol === "wss:";
  if (!tls && target.protocol !== "ws:") {
    throw new TypeError(`Not a WebSocket URL (ws:// or wss://): ${url}`);
  }
  const hostname = target.hostname.replace(/^\[|\]$/g, "");
  const port = Number(target.port || (tls ? 443 : 80));
  const deadline = AbortSignal.timeout(options.handshakeTimeoutMs ?? 10_000);
  const signal = options.signal
    ? AbortSignal.any([options.signal, deadline])
    : deadline;
  signal.throwIfAborted();
  let conn: Deno.Conn | undefined;
  const giveUp = () => {
    try {
      conn?.close();
    } catch {
      // Closed already.
    }
  };
  signal.addEventListener("abort", giveUp, { once: true });
  try {
    const tcp = await abortable(
      Deno.connect({ hostname, port }),
      signal,
      (c) => c.close(),
    );
    conn = tcp;
    // Nagle goes off on the TCP socket itself, before TLS (a TlsConn cannot switch it).
    tcp.setNoDelay(true);
    if (tls) {
      conn = await abortable(
        Deno.startTls(tcp, {
          hostname,
          caCerts: options.ca ? [options.ca] : undefined,
        }),
        signal,
        (c) => c.close(),
      );
      await abortable((conn as Deno.TlsConn).handshake(), signal);
    }
    const key = btoa(
      String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))),
    );
    let head = `GET ${target.pathname}${target.search} HTTP/1.1\r\n` +
      `Host: ${target.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n`;
    for (const [name, value] of Object.entries(options.headers ?? {})) {
      head += `${name}: ${value}\r\n`;
    }
    await writeAll(conn, encoder.encode(head + "\r\n"));
    const { status, headers, rest } = await readAnswerHead(conn, signal);
    if (status !== 101) {
      throw new HandshakeError(`Unexpected server response: ${status}`, status);
    }
    if (headers.get("sec-websocket-accept") !== await acceptKey(key)) {
      throw new HandshakeError("Invalid Sec-WebSocket-Accept header");
    }
    const socket = new ConnSocket(conn, {
      client: true,
      maxMessageBytes: options.maxMessageBytes,
      onTextBytes: options.onTextBytes,
    });
    options.setup?.(socket);
    socket.start(rest);
    return socket;
  } catch (error) {
    giveUp();
    if (signal.aborted && !(error instanceof HandshakeError)) {
      throw options.signal?.aborted
        ? options.signal.reason
        : new Error("Opening handshake has timed out");
    }
    throw error;
  } finally {
    signal.removeEventListener("abort", giveUp);
  }
}

/** `promise`, or a rejection once `signal` aborts (what it resolves with later is cleaned up). */
function abortable<T>(
  promise: Promise<T>,
  signal: AbortSignal,
  cleanup?: (value: T) => void,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        if (signal.aborted) cleanup?.(value);
        else resolve(value);
      },
      (error) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

/** Reads the server's answer head; the bytes after it are the first frames. */
async function readAnswerHead(
  conn: Deno.Conn,
  signal: AbortSignal,
): Promise<{ status: number; headers: Headers; rest: Uint8Array }> {
  let buffer = new Uint8Array(4096);
  let length = 0;
  for (;;) {
    if (length === buffer.length) {
      if (length >= 65536) throw new HandshakeError("Answer head too long");
      const bigger = new Uint8Array(length * 2);
      bigger.set(buffer);
      buffer = bigger;
    }
    const n = await abortable(conn.read(buffer.subarray(length)), signal);
    if (n === null) {
      throw new Error(
        length === 0
          ? "The server closed the connection during the handshake"
          : "The server closed the connection in its answer",
      );
    }
    length += n;
    // Anything but HTTP (a TLS alert, say) is said at once rather than waited out.
    const start = latin1.decode(buffer.subarray(0, Math.min(length, 5)));
    if (!"HTTP/".startsWith(start.slice(0, Math.min(start.length, 5)))) {
      throw new Error("Parse Error: Expected HTTP/: the answer is not HTTP");
    }
    const end = headEnd(buffer, Math.max(0, length - n - 3), length);
    if (end < 0) continue;
    const lines = latin1.decode(buffer.subarray(0, end)).split("\r\n");
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0])?.[1]);
    if (!status) throw new Error(`Parse Error: bad status line: ${lines[0]}`);
    const headers = new Headers();
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      if (colon > 0) {
        try {
          headers.append(
            line.slice(0, colon).trim(),
            line.slice(colon + 1).trim(),
          );
        } catch {
          // A header the fetch API refuses: not one the handshake needs.
        }
      }
    }
    return { status, headers, rest: buffer.slice(end + 4, length) };
  }
}

/** An upgrade the guard offers for one request, taken by {@linkcode upgradeWebSocket}. */
export interface PendingUpgrade {
  socket?: ConnSocket;
  response?: Response;
  conn: Deno.Conn;
  options?: ConnSocketOptions;
}

const pending = new WeakMap<Request, PendingUpgrade>();

/** Marks `req` as one the guard can upgrade in-process over `conn`. */
export function offerUpgrade(
  req: Request,
  conn: Deno.Conn,
  options: ConnSocketOptions,
): PendingUpgrade {
  const offer: PendingUpgrade = { conn, options };
  pending.set(req, offer);
  return offer;
}

/**
 * `Deno.upgradeWebSocket`, or the in-process upgrade when the guard offered one for `req`. The
 * socket it returns is a {@linkcode ConnSocket} typed as the `WebSocket` the ports expect: it
 * has every member they use.
 */
export function upgradeWebSocket(
  req: Request,
  options: { idleTimeout?: number } = {},
): { socket: WebSocket; response: Response } {
  const offer = pending.get(req);
  if (offer === undefined) return Deno.upgradeWebSocket(req, options);
  pending.delete(req);
  const key = req.headers.get("sec-websocket-key");
  if (
    req.method !== "GET" || !key || !/^[A-Za-z0-9+/]{22}==$/.test(key) ||
    req.headers.get("sec-websocket-version") !== "13"
  ) {
    throw new TypeError("Invalid WebSocket upgrade request");
  }
  const socket = new ConnSocket(offer.conn, {
    ...offer.options,
    idleTimeout: options.idleTimeout,
  });
  // Identifies the handler's acceptance: the guard writes the real 101 in its place.
  const response = new Response(null, { status: 200 });
  offer.socket = socket;
  offer.response = response;
  return { socket: socket as unknown as WebSocket, response };
}
