import { type ClientOptions, WebSocket } from "./_ws.ts";
import { UnauthorizedError } from "./errors.ts";

/** How a client reaches the server. */
export interface ConnectOptions {
  /** Shared-secret token, sent as `Authorization: Bearer`. */
  token?: string;
  /** PEM text of a CA certificate to trust for `wss://` (a self-signed server). */
  ca?: string;
  /** Largest frame accepted from the server, in bytes. */
  maxPayload?: number;
  /** How long the handshake may take, in ms. @default 10000 */
  handshakeTimeoutMs?: number;
}

/**
 * What to do about a failed connection, when the error says: a `ws://` URL answered in TLS, a
 * `wss://` URL answered in plain text, a certificate nobody vouched for.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { connectHint } from "./_connect.ts";
 * assert.equal(
 *   connectHint("ws://h:8765", "Parse Error: Expected HTTP/, RTSP/ or ICE/"),
 *   "the server speaks TLS: use wss://h:8765",
 * );
 * ```
 */
export function connectHint(url: string, message: string): string | undefined {
  if (url.startsWith("ws://") && /Parse Error|Expected HTTP/i.test(message)) {
    return `the server speaks TLS: use ${url.replace(/^ws:/, "wss:")}`;
  }
  if (
    url.startsWith("wss://") &&
    /wrong version number|InvalidContentType|packet length too long/i.test(
      message,
    )
  ) {
    return `the server does not speak TLS: use ${url.replace(/^wss:/, "ws:")}`;
  }
  if (
    /self[- ]signed|unable to verify|unknown ?issuer|UnknownIssuer/i.test(
      message,
    )
  ) {
    return "trust the server's certificate authority with --ca ca.pem";
  }
  if (/ECONNREFUSED|Connection refused/i.test(message)) {
    return "nothing listens there: is the server running, and is this its port?";
  }
  return undefined;
}

/** `url` with the value of its `token` query parameter hidden, for logs and error messages. */
export function redactUrl(url: string): string {
  return url.replace(/([?&]token=)[^&#]*/gi, "$1***");
}

/**
 * Opens a `ws` client socket and resolves once it is open; rejects with a clear reason.
 * `onBytes`, when given, sees each frame's bytes first and returns true for those it took.
 * `onMessage` is attached before the handshake ends: a server may send its first frame in the
 * same packet as the handshake answer, and `ws` emits it before an awaiting caller resumes.
 */
export function openSocket(
  url: string,
  options: ConnectOptions,
  onMessage: (text: string) => void,
  signal?: AbortSignal,
  onBytes?: (bytes: Uint8Array) => boolean,
): Promise<WebSocket> {
  const init: ClientOptions = {
    handshakeTimeout: options.handshakeTimeoutMs ?? 10_000,
    maxPayload: options.maxPayload ?? 256 * 1024 * 1024,
    perMessageDeflate: false,
  };
  if (options.token) {
    init.headers = { authorization: `Bearer ${options.token}` };
  }
  if (options.ca) init.ca = options.ca;
  const socket = new WebSocket(url, init);
  // terminate() during the handshake (refused, aborted) makes `ws` emit one more "error" after
  // cleanup() removed ours; unheard, it would crash the process.
  socket.on("error", () => {});
  socket.on("message", (data: unknown) => {
    // A caller may take a frame as it came, before it is decoded to a string.
    if (onBytes && data instanceof Uint8Array && onBytes(data)) return;
    onMessage(messageText(data));
  });
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      cleanup();
      socket.terminate();
      reject(signal!.reason);
    };
    const onOpen = () => {
      cleanup();
      resolve(socket);
    };
    const onError = (error: Error) => {
      cleanup();
      socket.terminate();
      const hint = connectHint(url, error.message);
      reject(
        new Error(
          `Cannot connect to ${redactUrl(url)}: ${error.message}${
            hint ? `: ${hint}` : ""
          }`,
          { cause: error },
        ),
      );
    };
    const onUnexpected = (_req: unknown, res: { statusCode?: number }) => {
      cleanup();
      socket.terminate();
      const status = res.statusCode ?? 0;
      if (status === 401) {
        reject(
          new UnauthorizedError(
            `Cannot connect to ${
              redactUrl(url)
            }: unauthorized (missing or wrong token): ` +
              (options.token
                ? "check --token (or its environment variable)"
                : "the server wants one: give --token (or its environment variable)"),
          ),
        );
        return;
      }
      if (status === 429) {
        // The server holds back an address after many wrong tokens: the same fix, and the same
        // long wait before the next try.
        reject(
          new UnauthorizedError(
            `Cannot connect to ${
              redactUrl(url)
            }: too many failed tries from this address (HTTP 429): check --token (or its environment variable)`,
          ),
        );
        return;
      }
      reject(new Error(`Cannot connect to ${redactUrl(url)}: HTTP ${status}`));
    };
    const cleanup = () => {
      socket.off("open", onOpen);
      socket.off("error", onError);
      socket.off("unexpected-response", onUnexpected);
      signal?.removeEventListener("abort", onAbort);
    };
    if (signal?.aborted) return onAbort();
    socket.on("open", onOpen);
    socket.on("error", onError);
    socket.on("unexpected-response", onUnexpected);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Reads a `ws` message as text. */
export function messageText(data: unknown): string {
  if (typeof data === "string") return data;
  if (data instanceof Uint8Array) return new TextDecoder().decode(data);
  if (Array.isArray(data)) {
    return new TextDecoder().decode(
      new Uint8Array(data.flatMap((chunk: Uint8Array) => [...chunk])),
    );
  }
  if (data instanceof ArrayBuffer) {
    return new TextDecoder().decode(new Uint8Array(data));
  }
  return String(data);
}
