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
import { logger } from "./log.ts";

const log = logger("websocket");

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const CHUNK = 64 * 1024;
/** The outgoing buffer's size; a text up to a third of it is encoded straight into it. */
const OUT_BUFFER = 16 * 1024;
const SHORT_TEXT = 16 * 1024;
const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

const encoder = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

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
}

type Listener = (event: SocketClose) => void;

/** A WebSocket over a `Deno.Conn`, server side; see the module doc. */
export class ConnSocket {
  readyState: number = CONNECTING;
  onopen: ((event: Event) => void) | null = null;
  onmessage: ((event: SocketMessage) => void) | null = null;
  onclose: ((event: SocketClose) => void) | null = null;
  onerror: ((event: Event) => void) | null = null;

  #conn: Deno.Conn;
  #options: ConnSocketOptions;
  /** Frames waiting for the next write, `#outLen` bytes of them. */
  #out = new Uint8Array(OUT_BUFFER);
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

  constructor(conn: Deno.Conn, options: ConnSocketOptions = {}) {
    this.#conn = conn;
    this.#options = options;
  }

  /** Bytes given to `send` that the peer's connection has not taken yet. */
  get bufferedAmount(): number {
    return this.#outLen + this.#inFlight;
  }

  /** Resolves once the connection is closed and `onclose` has run. */
  get closed(): Promise<void> {
    return this.#done.promise;
  }

  /** Ends a socket that never opened (its handshake answer could not be written). */
  abort(): void {
    this.#finish({ code: 1006, reason: "", wasClean: false });
  }

  /** Only `"close"` is dispatched to listeners; the ports use nothing else. */
  addEventListener(
    type: string,
    listener: Listener,
    _options?: { once?: boolean },
  ): void {
    if (type === "close") this.#closeListeners.push(listener);
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
    this.onopen?.(new Event("open"));
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
    const text = encoder.encode(reason).subarray(0, 123);
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
    const room = most < 126 ? 2 : 4;
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
    this.#outLen = at + head + written;
    this.#schedule();
  }

  /** Frames a message for the next write; every frame sent in one turn leaves in one write. */
  #enqueue(opcode: number, payload: Uint8Array): void {
    this.#reserve(10 + payload.length);
    const head = this.#header(opcode, payload.length);
    this.#out.set(payload, this.#outLen + head);
    this.#outLen += head + payload.length;
    this.#schedule();
  }

  /** Writes a frame header at the end of the outgoing buffer; returns its length. */
  #header(opcode: number, n: number): number {
    const out = this.#out;
    const at = this.#outLen;
    out[at] = 0x80 | opcode;
    if (n < 126) {
      out[at + 1] = n;
      return 2;
    }
    if (n < 65536) {
      out[at + 1] = 126;
      out[at + 2] = n >> 8;
      out[at + 3] = n & 0xff;
      return 4;
    }
    out[at + 1] = 127;
    new DataView(out.buffer, out.byteOffset + at + 2, 8).setBigUint64(
      0,
      BigInt(n),
    );
    return 10;
  }

  #reserve(bytes: number): void {
    const need = this.#outLen + bytes;
    if (need <= this.#out.length) return;
    const bigger = new Uint8Array(Math.max(need, this.#out.length * 2));
    bigger.set(this.#out.subarray(0, this.#outLen));
    this.#out = bigger;
  }

  #schedule(): void {
    if (!this.#flushing) {
      this.#flushing = true;
      queueMicrotask(() => void this.#flush());
    }
  }

  /**
   * Writes the outgoing buffer while it has bytes. Two buffers take turns: one is written while
   * the other fills, so a frame sent during a write joins the next one.
   */
  async #flush(): Promise<void> {
    try {
      while (this.#outLen > 0) {
        const bytes = this.#out.subarray(0, this.#outLen);
        this.#inFlight = this.#outLen;
        this.#out = this.#spare ?? new Uint8Array(OUT_BUFFER);
        this.#spare = undefined;
        this.#outLen = 0;
        await writeAll(this.#conn, bytes);
        this.#inFlight = 0;
        // A buffer grown for one large message is let go rather than kept.
        if (bytes.buffer.byteLength <= 4 * OUT_BUFFER) {
          this.#spare = new Uint8Array(bytes.buffer as ArrayBuffer);
        }
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
    let buf = new Uint8Array(Math.max(CHUNK, initial.length));
    buf.set(initial);
    let start = 0;
    let end = initial.length;
    /** Payload bytes of an oversize message still to throw away. */
    let skip = 0;
    /** The size so far of an oversize message being thrown away, 0 outside one. */
    let oversize = 0;
    /** The size to answer once the skipped bytes are gone (the message's last frame came). */
    let answer = 0;
    /** Fragments of a message in progress. */
    let fragments: Uint8Array[] = [];
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
          if ((b1 & 0x80) === 0) {
            return this.#fail(1002, "Frames from a client must be masked");
          }
          const len7 = b1 & 0x7f;
          const headLen = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + 4;
          if (available < headLen) break;
          const fin = (b0 & 0x80) !== 0;
          const opcode = b0 & 0x0f;
          let length = len7;
          if (len7 === 126) length = (buf[start + 2] << 8) | buf[start + 3];
          else if (len7 === 127) {
            length = 0;
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
                fragments = [];
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
            // Wait for the rest; make room for the whole frame first.
            const need = headLen + length;
            if (need > buf.length - start) {
              const bigger = new Uint8Array(Math.max(need, buf.length * 2));
              bigger.set(buf.subarray(start, end));
              end -= start;
              start = 0;
              buf = bigger;
            }
            break;
          }
          const at = start + headLen;
          unmask(buf, at, length, start + headLen - 4);
          start = at + length;
          const payload = buf.subarray(at, at + length);
          if (control) {
            this.#control(opcode, payload);
            continue;
          }
          if (!fin || fragmentOpcode !== 0) {
            if (fragmentOpcode === 0) fragmentOpcode = opcode;
            fragments.push(payload.slice());
            fragmentBytes += length;
            if (!fin) continue;
            const whole = concat(fragments, fragmentBytes);
            const kind = fragmentOpcode;
            fragments = [];
            fragmentBytes = 0;
            fragmentOpcode = 0;
            if (!this.#deliver(kind, whole)) return;
          } else if (!this.#deliver(opcode, payload)) return;
        }
        if (this.readyState === CLOSED) return;
        if (start === end) {
          start = end = 0;
          // A large frame's buffer goes once it is handled.
          if (buf.length > CHUNK) buf = new Uint8Array(CHUNK);
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
        const n = await this.#conn.read(buf.subarray(end));
        if (n === null) break;
        end += n;
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
    if (opcode === 0x1) {
      try {
        data = strictUtf8.decode(payload);
      } catch {
        this.#fail(1007, "Text frame is not valid UTF-8");
        return false;
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
      if (this.readyState === OPEN) this.#enqueue(0xa, payload.slice());
      return;
    }
    if (opcode !== 0x8) return; // A pong: hearing it is all it was for.
    const code = payload.length >= 2 ? (payload[0] << 8) | payload[1] : 1005;
    let reason = "";
    try {
      reason = strictUtf8.decode(payload.subarray(2));
    } catch {
      // A garbled reason is still a close.
    }
    this.#peerClosed = { code, reason, wasClean: true };
    if (this.readyState === OPEN) {
      this.readyState = CLOSING;
      this.#sendClose(code === 1005 ? 1000 : code, "");
    }
    // Our close frame goes out with the next write; the connection ends after it.
    if (!this.#flushing) this.#finish(this.#peerClosed);
  }

  #fail(code: number, reason: string): void {
    if (this.readyState === OPEN) {
      this.readyState = CLOSING;
      this.#sendClose(code, reason);
    }
    this.#peerClosed = { code, reason, wasClean: false };
    if (!this.#flushing) this.#finish(this.#peerClosed);
  }

  #finish(event: SocketClose): void {
    if (this.#closeEvent !== undefined) return;
    this.#closeEvent = event;
    this.readyState = CLOSED;
    clearTimeout(this.#closeTimer);
    clearInterval(this.#idleTimer);
    this.#outLen = 0;
    try {
      this.#conn.close();
    } catch {
      // Closed already.
    }
    try {
      this.onclose?.(event);
      for (const listener of this.#closeListeners) listener(event);
    } finally {
      this.#done.resolve();
    }
  }
}

function unmask(buf: Uint8Array, at: number, length: number, keyAt: number) {
  const m0 = buf[keyAt];
  const m1 = buf[keyAt + 1];
  const m2 = buf[keyAt + 2];
  const m3 = buf[keyAt + 3];
  const end = at + length;
  let i = at;
  for (; i + 4 <= end; i += 4) {
    buf[i] ^= m0;
    buf[i + 1] ^= m1;
    buf[i + 2] ^= m2;
    buf[i + 3] ^= m3;
  }
  const mask = [m0, m1, m2, m3];
  for (let k = 0; i < end; i++, k++) buf[i] ^= mask[k];
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) {
    done += await conn.write(bytes.subarray(done));
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
