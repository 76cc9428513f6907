import { type ClientOptions, WebSocket } from "./_ws.ts";

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

/** `url` with the value of its `token` query parameter hidden, for logs and error messages. */
export function redactUrl(url: string): string {
  return url.replace(/([?&]token=)[^&#]*/gi, "$1***");
}

/**
 * Opens a `ws` client socket and resolves once it is open; rejects with a clear reason.
 * `onMessage` is attached before the handshake ends: a server may send its first frame in the
 * same packet as the handshake answer, and `ws` emits it before an awaiting caller resumes.
 */
export function openSocket(
  url: string,
  options: ConnectOptions,
  onMessage: (text: string) => void,
  signal?: AbortSignal,
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
  socket.on("message", (data: unknown) => onMessage(messageText(data)));
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
      reject(
        new Error(`Cannot connect to ${redactUrl(url)}: ${error.message}`, {
          cause: error,
        }),
      );
    };
    const onUnexpected = (_req: unknown, res: { statusCode?: number }) => {
      cleanup();
      socket.terminate();
      const status = res.statusCode ?? 0;
      const reason = status === 401
        ? "unauthorized (missing or wrong token)"
        : `HTTP ${status}`;
      reject(new Error(`Cannot connect to ${redactUrl(url)}: ${reason}`));
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
