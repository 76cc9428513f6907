/**
 * The client's opening handshake (RFC 6455 §4.1) on a `Deno.connect` connection, and the
 * {@linkcode ConnSocket} it opens.
 *
 * @module
 */

import { acceptKey } from "./_ws_frame.ts";
import { headEnd, writeAll } from "./_http.ts";
import { ConnSocket } from "./_websocket.ts";

const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

/** A handshake that the server answered with something else than 101. */
export class HandshakeError extends Error {
  constructor(
    message: string,
    readonly status?: number,
    /** The answer's headers, when there was an answer. */
    readonly headers?: Headers,
  ) {
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
    const answer = await readAnswerHead(conn, signal);
    const { status, headers, rest } = answer;
    if (status !== 101) {
      throw new HandshakeError(
        `Unexpected server response: ${status}`,
        status,
        headers,
      );
    }
    checkAnswer(answer, await acceptKey(key));
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

/** The server's answer head. */
interface AnswerHead {
  version: string;
  status: number;
  headers: Headers;
  /** The bytes after the head: the first frames. */
  rest: Uint8Array;
}

/** What a header says, for an error message. */
function said(value: string | null): string {
  return value === null ? "none" : JSON.stringify(value);
}

/** Headers a 101 may carry only for what the client offered, which is nothing. */
const UNOFFERED = [
  ["sec-websocket-extensions", "extension"],
  ["sec-websocket-protocol", "subprotocol"],
] as const;

/**
 * Fails a 101 that RFC 6455 §4.1 says the client must fail: not HTTP/1.1, no `Upgrade:
 * websocket`, no `upgrade` token in `Connection`, a wrong accept key, or an extension or
 * subprotocol this client did not offer (it offers none).
 */
export function checkAnswer(answer: AnswerHead, accept: string): void {
  const h = answer.headers;
  if (answer.version !== "HTTP/1.1") {
    throw new HandshakeError(
      `Invalid handshake answer: a 101 must be HTTP/1.1, not ${answer.version}`,
    );
  }
  if (h.get("upgrade")?.toLowerCase() !== "websocket") {
    throw new HandshakeError(
      `Invalid handshake answer: Upgrade header ${
        said(h.get("upgrade"))
      } (expected "websocket")`,
    );
  }
  const connection = h.get("connection");
  if (
    !connection?.split(",").some((t) => t.trim().toLowerCase() === "upgrade")
  ) {
    throw new HandshakeError(
      `Invalid handshake answer: Connection header ${
        said(connection)
      } (expected "Upgrade")`,
    );
  }
  if (h.get("sec-websocket-accept") !== accept) {
    throw new HandshakeError("Invalid Sec-WebSocket-Accept header");
  }
  for (const [header, what] of UNOFFERED) {
    const value = h.get(header);
    if (value !== null) {
      throw new HandshakeError(
        `Invalid handshake answer: ${what} ${
          said(value)
        } was not offered (this client offers none)`,
      );
    }
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
): Promise<AnswerHead> {
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
    const line = /^(HTTP\/1\.[01]) (\d{3})(?: |$)/.exec(lines[0]);
    if (!line) throw new Error(`Parse Error: bad status line: ${lines[0]}`);
    const status = Number(line[2]);
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
    return {
      version: line[1],
      status,
      headers,
      rest: buffer.slice(end + 4, length),
    };
  }
}
