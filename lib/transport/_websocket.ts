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
 * same port code serves it and, with `--no-guard`, Deno's own. It composes the frame reader
 * (`_ws_reader.ts`) and writer (`_ws_writer.ts`) with the connection's state: the closing
 * handshake and liveness.
 *
 * @module
 */

import { RUNTIME_FRAME_CAP } from "./_frame_size.ts";
import { logger } from "../log.ts";
import {
  BINARY,
  CLOSE,
  closePayload,
  PING,
  PONG,
  TEXT,
  validCloseCode,
} from "./_ws_frame.ts";
import { FrameReader, type FrameSink } from "./_ws_reader.ts";
import { FrameWriter } from "./_ws_writer.ts";
import { type Clock, Liveness } from "./_liveness.ts";

const log = logger("websocket");

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

// A leading U+FEFF is part of the message, not a byte-order mark to drop.
const utf8 = new TextDecoder("utf-8", { ignoreBOM: true });
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

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
   * (when the ping is not answered within the other half); 0 for never. A peer that answers
   * pings is never closed. One timer per connection, not one per message.
   */
  idleTimeout?: number;
  /** Time and timers for liveness. @default the system's */
  clock?: Clock;
  /** Largest message taken, in bytes. @default the runtime's own cap, 64 MiB */
  maxMessageBytes?: number;
  /**
   * The text frame that answers a message over `maxMessageBytes`, given its size and its first
   * 64 KiB (where a request names its id). Without it, such a message closes the connection
   * with 1009 (as the runtime does).
   */
  oversizeAnswer?: (bytes: number, head: Uint8Array) => string;
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
  /**
   * A message over the cap was thrown away (`bytes` its size, `head` its first 64 KiB): when
   * set, it answers in place of `oversizeAnswer`.
   */
  onoversize: ((bytes: number, head: Uint8Array) => void) | null = null;

  #conn: Deno.Conn;
  #options: ConnSocketOptions;
  #writer: FrameWriter;
  #closeListeners: Listener[] = [];
  #closeSent = false;
  #closeEvent: SocketClose | undefined;
  /** The close the peer asked for (or our failure), reported once the connection ends. */
  #peerClosed: SocketClose | undefined;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #liveness: Liveness | undefined;
  #done = Promise.withResolvers<void>();
  readonly #client: boolean;
  /** Set while reading is paused: resolves when it may go on. */
  #paused: PromiseWithResolvers<void> | undefined;

  /** What the frame reader finds goes here. */
  readonly #sink: FrameSink;

  constructor(conn: Deno.Conn, options: ConnSocketOptions = {}) {
    // deno-lint-ignore no-this-alias
    const socket = this;
    this.#sink = {
      get reading() {
        return socket.readyState !== CLOSED;
      },
      message: (opcode, payload, checked) =>
        this.#message(opcode, payload, checked),
      control: (opcode, payload) => this.#control(opcode, payload),
      oversize: (bytes, head) => this.#oversize(bytes, head),
      fail: (code, reason) => this.#fail(code, reason),
    };
    this.#conn = conn;
    this.#options = options;
    this.#client = options.client ?? false;
    this.#writer = new FrameWriter(conn, this.#client, {
      broken: () => this.#finish({ code: 1006, reason: "", wasClean: false }),
      drained: () => {
        if (
          this.#closeSent && this.#closeEvent === undefined && this.#peerClosed
        ) this.#finish(this.#peerClosed);
      },
    });
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
    if (this.readyState === OPEN) this.#writer.frame(PING, new Uint8Array(0));
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
    return this.#writer.buffered;
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
   * came with the handshake (`initial`: the bytes, or a read already under way, null when
   * it found the connection closed) and everything after.
   */
  start(initial: Uint8Array | Promise<Uint8Array | null>): void {
    this.readyState = OPEN;
    const idle = (this.#options.idleTimeout ?? 0) * 1000;
    if (idle > 0) {
      this.#liveness = new Liveness(idle, {
        ping: () => this.ping(),
        expire: (silentMs) =>
          this.#fail(
            1001,
            `Idle timeout: no answer to a ping in ${silentMs / 1000} s`,
          ),
      }, this.#options.clock);
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
      this.#writer.text(data);
    } else {
      this.#writer.frame(
        BINARY,
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
    this.#logClose(code, reason);
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
    this.#writer.frame(CLOSE, closePayload(code, reason));
  }

  async #readLoop(
    initial: Uint8Array | Promise<Uint8Array | null>,
  ): Promise<void> {
    try {
      const first = await initial;
      if (first === null) throw new Error("Closed");
      if (first.length > 0) this.#liveness?.heard();
      const reader = new FrameReader(
        {
          client: this.#client,
          maxMessageBytes: this.#options.maxMessageBytes ?? RUNTIME_FRAME_CAP,
          skipOversize: this.#options.oversizeAnswer !== undefined,
        },
        this.#sink,
        first,
      );
      for (;;) {
        // Stopped: failed (its close is on its way) or ended.
        if (!reader.parse()) return;
        if (this.#paused) await this.#paused.promise;
        if (this.readyState === CLOSED) return;
        const n = await this.#conn.read(reader.space());
        if (n === null) break;
        reader.received(n);
        this.#liveness?.heard();
      }
    } catch {
      // A reset or a closed descriptor: the close below says 1006.
    }
    this.#finish(
      this.#peerClosed ?? { code: 1006, reason: "", wasClean: false },
    );
  }

  /** A message over the cap was thrown away: answer it. */
  #oversize(bytes: number, head: Uint8Array): void {
    if (this.readyState !== OPEN) return;
    if (this.onoversize) {
      try {
        this.onoversize(bytes, head);
      } catch (error) {
        log.error("An oversize handler failed: {error}", { error });
      }
      return;
    }
    this.#writer.text(this.#options.oversizeAnswer!(bytes, head));
  }

  /** Hands a message to `onmessage`; false when the socket failed instead. */
  #message(opcode: number, payload: Uint8Array, checked: boolean): boolean {
    if (this.readyState !== OPEN) return true;
    let data: string | ArrayBuffer;
    if (opcode === TEXT && this.#options.onTextBytes?.(payload)) return true;
    if (opcode === TEXT) {
      // The runtime's strict decoder costs several times the lenient one, and a lenient
      // decode marks every invalid sequence with U+FFFD: only a text holding one (sent on
      // purpose or not) is decoded again, strictly.
      data = utf8.decode(payload);
      if (!checked && data.includes("\uFFFD")) {
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
    if (opcode === PING) {
      // A peer that pings and never reads would have its pongs pile up here: past 64 KiB
      // unsent, pings go unanswered (RFC 6455 lets a pong answer only the latest ping).
      if (this.readyState === OPEN && this.bufferedAmount < 64 * 1024) {
        this.#writer.frame(PONG, payload.slice());
      }
      this.onping?.();
      return;
    }
    if (opcode === PONG) return void this.onpong?.();
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

  #fail(code: number, reason: string): void {
    if (this.readyState === OPEN) {
      this.#logClose(code, reason);
      this.readyState = CLOSING;
      this.#sendClose(code, reason);
    }
    this.#peerClosed = { code, reason, wasClean: false };
    this.#closeSoon();
  }

  /** A close this end starts, on the server: said at info, with its reason. */
  #logClose(code: number, reason: string): void {
    if (this.#client) return;
    let peer = "a peer";
    try {
      const addr = this.#conn.remoteAddr as Deno.NetAddr;
      peer = addr.hostname.includes(":")
        ? `[${addr.hostname}]:${addr.port}`
        : `${addr.hostname}:${addr.port}`;
    } catch {
      // Closed already: the address is gone with it.
    }
    log.info("Closing the connection of {peer}: {code} {reason}", {
      peer,
      code,
      reason: reason || "(no reason)",
    });
  }

  /**
   * Ends the connection once our close frame is written, or after a second whatever happens:
   * a peer that stopped reading must not hold a closing socket (and its port's bookkeeping)
   * open, however much it goes on sending.
   */
  #closeSoon(): void {
    if (!this.#writer.flushing) return this.#finish(this.#peerClosed!);
    this.#closeTimer ??= setTimeout(
      () => this.#finish({ ...this.#peerClosed!, wasClean: false }),
      1000,
    );
  }

  #finish(event: SocketClose): void {
    if (this.#closeEvent !== undefined) return;
    this.#closeEvent = event;
    this.readyState = CLOSED;
    this.resume();
    clearTimeout(this.#closeTimer);
    this.#liveness?.stop();
    this.#writer.clear();
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
