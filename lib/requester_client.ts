/**
 * The requester client: many requests in flight on one connection, answers matched by
 * `request_id`.
 *
 * @module
 */

import { type ConnectOptions, openSocket, redactUrl } from "./_connect.ts";
import {
  ConnectionClosedError,
  RequestTimeoutError,
  WrongPortError,
} from "./errors.ts";
import type { RequesterAnswer } from "./protocol.ts";
import type { WebSocket } from "./_ws.ts";

/** Whether `message` is a worker-port envelope (`{"type", "msg_id", …}`) rather than an answer. */
function isWorkerEnvelope(
  message: unknown,
): message is Record<string, unknown> {
  return typeof message === "object" && message !== null &&
    typeof (message as { type?: unknown }).type === "string" &&
    "msg_id" in message;
}

/** Options for {@linkcode RequesterClient}. */
export interface RequesterClientOptions extends ConnectOptions {
  /** Default `timeout` sent with each request, in seconds; the server's default when unset. */
  timeout?: number;
  /** Extra time the client waits beyond a request's timeout before giving up itself, in ms. @default 5000 */
  graceMs?: number;
}

/** Per-request choices for {@linkcode RequesterClient.request}. */
export interface RequestOptions {
  /** Seconds the server may take; sent as the request's `timeout`. */
  timeout?: number;
  /** Abandons the wait (the server's answer, when it comes, is dropped). */
  signal?: AbortSignal;
  /** Asks for progress frames and receives them here (batches). */
  onProgress?: (progress: { done: number; total?: number }) => void;
  /** Use this `request_id` instead of a fresh UUID. */
  requestId?: string;
}

/** One finished item of a streamed batch. */
export interface StreamedItem {
  /** The item's position in the batch's input list. */
  index: number;
  /** Its `get_market` result (or error object). */
  result: unknown;
}

/**
 * A streamed batch in progress: iterate it for the items as they finish (completion order);
 * `answer` resolves with the final answer (`summary` and `distributed`, no `results`).
 */
export interface BatchStream extends AsyncIterable<StreamedItem> {
  /** The final answer (leaving the loop early does not stop the batch). */
  readonly answer: Promise<RequesterAnswer>;
}

interface Pending {
  resolve(answer: RequesterAnswer): void;
  reject(error: unknown): void;
  onProgress?: RequestOptions["onProgress"];
  onItem?: (item: StreamedItem) => void;
}

/**
 * A connection to the requester port.
 *
 * @example
 * ```ts ignore
 * const client = new RequesterClient("ws://localhost:8766");
 * await client.connect();
 * const answer = await client.request("get_time");
 * console.log(answer.success, answer.data, answer.processed_by);
 * await client.close();
 * ```
 */
export class RequesterClient {
  readonly url: string;
  #options: RequesterClientOptions;
  #socket: WebSocket | undefined;
  #pending = new Map<string, Pending>();
  #closed: Promise<void> | undefined;

  constructor(url: string, options: RequesterClientOptions = {}) {
    this.url = url;
    this.#options = options;
  }

  /** Whether the connection is open. */
  get connected(): boolean {
    return this.#socket?.readyState === 1;
  }

  /** Requests waiting for an answer. */
  get inFlight(): number {
    return this.#pending.size;
  }

  /** Opens the connection; call again after a drop to reconnect. */
  async connect(signal?: AbortSignal): Promise<void> {
    if (this.connected) return;
    this.#wrongPort = undefined;
    const socket = await openSocket(
      this.url,
      this.#options,
      (text) => this.#onMessage(text),
      signal,
    );
    this.#socket = socket;
    // The worker port's greeting can arrive with the handshake, before `#socket` was set.
    if (this.#wrongPort) socket.close(1000, "Wrong port");
    const closed = Promise.withResolvers<void>();
    this.#closed = closed.promise;
    socket.on("error", () => {});
    socket.on("close", (code: number) => {
      if (this.#socket === socket) this.#socket = undefined;
      const error = new ConnectionClosedError(
        `Connection to ${
          redactUrl(this.url)
        } closed (code ${code}) before the answer came`,
      );
      for (const pending of this.#pending.values()) pending.reject(error);
      this.#pending.clear();
      closed.resolve();
    });
  }

  #onMessage(text: string): void {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    const id = message?.request_id;
    if (typeof id !== "string") {
      if (isWorkerEnvelope(message)) this.#onWorkerPort(message);
      return;
    }
    const pending = this.#pending.get(id);
    if (!pending) return;
    if ("progress" in message && !("success" in message)) {
      pending.onProgress?.(
        message.progress as { done: number; total?: number },
      );
      return;
    }
    if ("item" in message && !("success" in message)) {
      const item = message.item as StreamedItem | null;
      if (
        pending.onItem && typeof item === "object" && item !== null &&
        Number.isInteger(item.index)
      ) pending.onItem({ index: item.index, result: item.result });
      return;
    }
    this.#pending.delete(id);
    pending.resolve(message as unknown as RequesterAnswer);
  }

  #wrongPort: WrongPortError | undefined;

  /**
   * The server greeted this connection as a worker (`connect` envelope) or refused a request in
   * worker-port terms: this URL is a worker port. Fail every request now with a message that
   * says so, instead of waiting out their deadlines.
   */
  #onWorkerPort(envelope: Record<string, unknown>): void {
    const data = envelope.data as { error?: unknown } | null;
    const said = typeof data?.error === "string" ? data.error : undefined;
    const error = new WrongPortError(
      said ??
        `${
            redactUrl(this.url)
          } is a worker port: requesters connect to the requester port (8766 unless the server ` +
          `was started with --requester-port)`,
    );
    this.#wrongPort ??= error;
    for (const pending of this.#pending.values()) pending.reject(error);
    this.#pending.clear();
    this.#socket?.close(1000, "Wrong port");
  }

  /**
   * Sends `command` with `data` and resolves with the server's answer, whether it succeeded or
   * not (check `answer.success`). Rejects only when no answer can come: connection lost,
   * aborted, or no word within the timeout plus a grace period.
   */
  request(
    command: string,
    data: unknown = {},
    options: RequestOptions = {},
  ): Promise<RequesterAnswer> {
    return this.#send(command, data, options);
  }

  /**
   * Sends a batch (`get_markets` by default) with `stream: true` and yields each item as it
   * finishes, so neither side holds the whole batch. Items that arrive while the caller is busy
   * wait in a queue. The iteration ends with the final answer, which `answer` gives (check its
   * `success`: a batch no worker could take ends with no items and `No available workers`). It
   * throws only when no answer can come (connection lost, aborted, timed out).
   *
   * @example
   * ```ts ignore
   * const batch = client.stream("get_markets", [{ symbol_type: "etf", code: "510300" }]);
   * for await (const { index, result } of batch) console.log(index, result);
   * console.log((await batch.answer).data); // { summary, distributed }
   * ```
   */
  stream(
    command: string,
    data: unknown,
    options: RequestOptions = {},
  ): BatchStream {
    const queue: StreamedItem[] = [];
    let wake: (() => void) | undefined;
    let ended = false;
    let failure: { error: unknown } | undefined;
    const answer = this.#send(command, data, options, (item) => {
      queue.push(item);
      wake?.();
    });
    answer.then(
      () => {
        ended = true;
        wake?.();
      },
      (error) => {
        failure = { error };
        ended = true;
        wake?.();
      },
    );
    // The iterator reports a lost connection itself; `answer` must not also be unhandled.
    answer.catch(() => {});
    return {
      answer,
      async *[Symbol.asyncIterator]() {
        while (true) {
          if (queue.length > 0) {
            yield queue.shift()!;
            continue;
          }
          if (ended) {
            if (failure) throw failure.error;
            return;
          }
          await new Promise<void>((resolve) => wake = resolve);
          wake = undefined;
        }
      },
    };
  }

  #send(
    command: string,
    data: unknown,
    options: RequestOptions,
    onItem?: (item: StreamedItem) => void,
  ): Promise<RequesterAnswer> {
    const socket = this.#socket;
    if (this.#wrongPort) return Promise.reject(this.#wrongPort);
    if (!socket || socket.readyState !== 1) {
      return Promise.reject(
        new ConnectionClosedError(`Not connected to ${redactUrl(this.url)}`),
      );
    }
    if (options.signal?.aborted) return Promise.reject(options.signal.reason);
    const requestId = options.requestId ?? crypto.randomUUID();
    if (this.#pending.has(requestId)) {
      return Promise.reject(
        new RangeError(`Request id '${requestId}' is already in flight`),
      );
    }
    const timeout = options.timeout ?? this.#options.timeout;
    const frame: Record<string, unknown> = {
      request_id: requestId,
      command,
      data,
    };
    if (timeout !== undefined) frame.timeout = timeout;
    if (options.onProgress) frame.progress = true;
    if (onItem) frame.stream = true;
    const { promise, resolve, reject } = Promise.withResolvers<
      RequesterAnswer
    >();
    // The server answers every request by its deadline; this only guards against a server that
    // vanished without closing the connection.
    const waitMs = (timeout ?? 300) * 1000 + (this.#options.graceMs ?? 5000);
    const timer = setTimeout(() => {
      if (this.#pending.delete(requestId)) {
        reject(
          new RequestTimeoutError(
            `No answer to '${command}' within ${waitMs} ms`,
          ),
        );
      }
    }, waitMs);
    const onAbort = () => {
      if (this.#pending.delete(requestId)) {
        clearTimeout(timer);
        reject(options.signal!.reason);
      }
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    const done = () => {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
    };
    this.#pending.set(requestId, {
      resolve: (answer) => {
        done();
        resolve(answer);
      },
      reject: (error) => {
        done();
        reject(error);
      },
      onProgress: options.onProgress,
      onItem,
    });
    socket.send(JSON.stringify(frame));
    return promise;
  }

  /** Closes the connection; requests still in flight reject with a ConnectionClosedError. */
  async close(): Promise<void> {
    const socket = this.#socket;
    if (socket && socket.readyState <= 1) {
      socket.close(1000, "Requester closing");
      const t = setTimeout(() => socket.terminate(), 2000);
      await this.#closed;
      clearTimeout(t);
    }
  }
}
