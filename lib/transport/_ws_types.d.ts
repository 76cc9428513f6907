// The part of npm `ws`'s client that Switchyard uses, typed here instead of taken from
// `@types/ws`. `@types/ws` pulls in `@types/node`, whose `/// <reference path="zlib.d.ts" />`
// lines `deno doc` (2.9.6) resolves as package names and warns about, ~80 times, in the docs of
// every project importing `lib/mod.ts` (denoland/deno#36751). `deno check` never minded; these
// declarations keep both quiet. Signatures follow `ws` 8.18 (lib/transport/_ws.ts pins the version).

/** Options of the `ws` client constructor that Switchyard sets. */
export interface ClientOptions {
  /** Milliseconds the opening handshake may take. */
  handshakeTimeout?: number;
  /** Largest message accepted, in bytes. */
  maxPayload?: number;
  /** Compression; Switchyard turns it off. */
  perMessageDeflate?: boolean;
  /** Extra HTTP headers of the upgrade request (`authorization`). */
  headers?: Record<string, string>;
  /** PEM text of a CA to trust for `wss://`. */
  ca?: string;
}

/** A message as `ws` delivers it: one buffer, or fragments, or an `ArrayBuffer`. */
export type RawData = Uint8Array | ArrayBuffer | Uint8Array[];

/** The answer to an upgrade request that was not `101 Switching Protocols`. */
export interface UpgradeResponse {
  statusCode?: number;
}

/** A `ws` client socket (an `EventEmitter`). */
declare class WebSocket {
  constructor(url: string | URL, options?: ClientOptions);
  /** 0 connecting, 1 open, 2 closing, 3 closed. */
  readonly readyState: 0 | 1 | 2 | 3;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  terminate(): void;
  /** Stops reading the socket (backpressure) until `resume()`. */
  pause(): void;
  resume(): void;
  /** Sends a ping frame. */
  ping(): void;
  on(event: "open", listener: () => void): this;
  on(
    event: "message",
    listener: (data: Uint8Array, isBinary: boolean) => void,
  ): this;
  on(
    event: "close",
    listener: (code: number, reason: Uint8Array) => void,
  ): this;
  on(event: "error", listener: (error: Error) => void): this;
  on(event: "ping" | "pong", listener: (data: Uint8Array) => void): this;
  on(
    event: "unexpected-response",
    listener: (request: unknown, response: UpgradeResponse) => void,
  ): this;
  once(event: "open", listener: () => void): this;
  once(
    event: "close",
    listener: (code: number, reason: Uint8Array) => void,
  ): this;
  once(event: "error", listener: (error: Error) => void): this;
  off(event: string, listener: (...args: never[]) => void): this;
}

export default WebSocket;
