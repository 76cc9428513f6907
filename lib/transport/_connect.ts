import type { ConnSocket } from "./_websocket.ts";
import { connectWebSocket, HandshakeError } from "./_ws_client.ts";
import { UnauthorizedError, WrongPortError } from "../errors.ts";

// A leading U+FEFF is part of the message, as the ports read it.
const utf8 = new TextDecoder("utf-8", { ignoreBOM: true });

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
  /**
   * Which port the client means to reach: a refusal from the other port then says so, whatever
   * the tokens, instead of blaming the token.
   */
  role?: "worker" | "requester";
}

/**
 * A refusal (401, 429) from the port the client did not mean to reach, as the server names its
 * port in `x-switchyard-port`; undefined when it is the right port or the server did not say.
 */
export function wrongPortRefusal(
  url: string,
  role: "worker" | "requester" | undefined,
  headers: Headers | undefined,
): WrongPortError | undefined {
  const port = headers?.get("x-switchyard-port");
  if (role === undefined || !port || port === role) return undefined;
  const right = headers?.get(`x-switchyard-${role}-port`);
  return new WrongPortError(
    `${
      redactUrl(url)
    } is the ${port} port: ${role}s connect to the ${role} port${
      right
        ? ` ${right}`
        : role === "worker"
        ? " (8765 by default)"
        : " (8766 by default)"
    }`,
  );
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
  if (/CaUsedAsEndEntity/i.test(message)) {
    // A self-signed server certificate given as --ca: rustls wants a CA that signed it.
    return "the certificate given as --ca is the server's own, self-signed and marked CA:TRUE, which TLS refuses for a server: make it again with -addext basicConstraints=CA:FALSE, or sign the server's certificate with a CA and give the CA's certificate as --ca (docs/operations.md)";
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
 * A client connection as the worker and requester clients use it: the framing the ports use,
 * client side (`send`, `close`, `terminate`, `pause`/`resume`, `ping`, `onping`/`onpong` and
 * `addEventListener("close")`).
 */
export type ClientSocket = ConnSocket;

/**
 * Opens a client socket and resolves once it is open; rejects with a clear reason.
 * `onBytes`, when given, sees each text frame's bytes first and returns true for those it took
 * (a view into a reused buffer: copy what is kept). `onMessage` is attached before the
 * handshake ends: a server may send its first frame in the same packet as the handshake answer.
 */
export async function openSocket(
  url: string,
  options: ConnectOptions,
  onMessage: (text: string) => void,
  signal?: AbortSignal,
  onBytes?: (bytes: Uint8Array) => boolean,
): Promise<ClientSocket> {
  let socket: ConnSocket;
  try {
    socket = await connectWebSocket(url, {
      headers: options.token
        ? { authorization: `Bearer ${options.token}` }
        : undefined,
      ca: options.ca,
      maxMessageBytes: options.maxPayload ?? 256 * 1024 * 1024,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 10_000,
      signal,
      onTextBytes: onBytes,
      setup: (socket) => {
        socket.onmessage = (event) => {
          onMessage(
            typeof event.data === "string"
              ? event.data
              : utf8.decode(event.data),
          );
        };
      },
    });
  } catch (error) {
    if (signal?.aborted) throw signal.reason;
    const status = error instanceof HandshakeError ? error.status : undefined;
    if (status === 401 || status === 429) {
      const wrong = wrongPortRefusal(
        url,
        options.role,
        (error as HandshakeError).headers,
      );
      if (wrong) throw wrong;
    }
    if (status === 401) {
      throw new UnauthorizedError(
        `Cannot connect to ${
          redactUrl(url)
        }: unauthorized (missing or wrong token): ` +
          (options.token
            ? "check --token (or its environment variable)"
            : "the server wants one: give --token (or its environment variable)"),
      );
    }
    if (status === 429) {
      // The server holds back an address after many wrong tokens: the same fix, and the same
      // long wait before the next try.
      throw new UnauthorizedError(
        `Cannot connect to ${
          redactUrl(url)
        }: too many failed tries from this address (HTTP 429): check --token (or its environment variable)`,
      );
    }
    if (status !== undefined) {
      throw new Error(`Cannot connect to ${redactUrl(url)}: HTTP ${status}`);
    }
    const message = error instanceof Error ? error.message : String(error);
    const hint = connectHint(url, message);
    throw new Error(
      `Cannot connect to ${redactUrl(url)}: ${message}${
        hint ? `: ${hint}` : ""
      }`,
      { cause: error },
    );
  }
  return socket;
}
