/**
 * The requester client: many requests in flight on one connection, answers matched by
 * `request_id`.
 *
 * @module
 */

import {
  type ClientSocket,
  type ConnectOptions,
  openSocket,
  redactUrl,
} from "../transport/_connect.ts";
import { Backoff, sleep } from "../backoff.ts";
import {
  ConnectionClosedError,
  RequestTimeoutError,
  WrongPortError,
} from "../errors.ts";
import type { RequesterAnswer } from "../protocol.ts";
import {
  type ArrivedItem,
  type BatchStream,
  batchStream,
  frameDecoder,
  ITEM_BYTES_MIN,
  ITEM_HEAD,
  ReadHold,
  type StreamedItem,
} from "./batch_stream.ts";

export type { BatchStream, StreamedItem } from "./batch_stream.ts";

/** What a worker port's `envelope` on the connection to `url` means for a requester. */
function wrongPortError(
  envelope: Record<string, unknown>,
  url: string,
): WrongPortError {
  const data = envelope.data as
    | { error?: unknown; requester_port?: unknown }
    | null;
  const said = typeof data?.error === "string" ? data.error : undefined;
  const port = typeof data?.requester_port === "number"
    ? ` ${data.requester_port}`
    : " (8766 unless the server was started with --requester-port)";
  return new WrongPortError(
    said ??
      `${
        redactUrl(url)
      } is the worker port: requesters connect to the requester port${port}`,
  );
}

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
  /**
   * Reconnect by itself when the connection drops, trying each URL in turn (a cluster's servers)
   * with backoff; requests made meanwhile wait for the new connection. @default false
   */
  reconnect?: boolean;
  /**
   * With `reconnect`: requests in flight when the connection dropped are sent again on the new
   * connection instead of failing. Only for commands safe to run twice; list the others in
   * `nonRetriable`. @default false
   */
  resubmit?: boolean;
  /** Commands never sent twice by `resubmit`. @default [] */
  nonRetriable?: string[];
  /**
   * When a request is aborted, also send `{"request_id", "cancel": true}` so the server stops
   * its work and answers it with `CANCELLED`. Off by default: a server that predates the
   * `cancel` frame answers the frame itself with an error, which frees the request id early.
   * @default false
   */
  cancelOnAbort?: boolean;
}

/** Per-request choices for {@linkcode RequesterClient.request}. */
export interface RequestOptions {
  /** Seconds the server may take; sent as the request's `timeout`. */
  timeout?: number;
  /**
   * Abandons the wait. The server's answer, when it comes, is dropped, and until it comes (or
   * the request's deadline passes) its `request_id` stays reserved: reusing it is refused, so a
   * late answer can never settle a newer request. With `cancelOnAbort` the server is told too.
   */
  signal?: AbortSignal;
  /** Asks for progress frames and receives them here (batches). */
  onProgress?: (progress: { done: number; total?: number }) => void;
  /** Use this `request_id` instead of a fresh UUID. */
  requestId?: string;
}

interface Pending {
  /** The request frame, kept for resubmission. */
  frame: string;
  command: string;
  /** Written to the current connection. */
  sent: boolean;
  resolve(answer: RequesterAnswer): void;
  reject(error: unknown): void;
  onProgress?: RequestOptions["onProgress"];
  onItem?: (item: ArrivedItem) => void;
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
  /** Every URL the client may connect to (a comma-separated `url` names several). */
  readonly urls: readonly string[];
  #at = 0;
  #options: RequesterClientOptions;
  #socket: ClientSocket | undefined;
  /** Streams that fell behind hold the socket unread. */
  #readHold = new ReadHold(() => this.#socket);
  #pending = new Map<string, Pending>();
  /**
   * Ids of aborted requests whose answer may still come, each with the timer that frees it at
   * the request's deadline. The server keeps working on an aborted request, so its answer and a
   * new request with the same id could cross on the wire.
   */
  #reserved = new Map<string, ReturnType<typeof setTimeout>>();
  #closed: Promise<void> | undefined;
  #closing = false;
  #reconnecting: Promise<void> | undefined;
  #stop = new AbortController();
  #resubmitted = 0;
  #stray = 0;

  /** A client for `url` (several, comma-separated, for a cluster); `connect()` opens it. */
  constructor(url: string, options: RequesterClientOptions = {}) {
    this.urls = url.split(",").map((u) => u.trim()).filter(Boolean);
    if (this.urls.length === 0) throw new RangeError("No server URL given");
    this.#options = options;
  }

  /** The URL of the current (or next) connection. */
  get url(): string {
    return this.urls[this.#at];
  }

  /** Final answers that matched no waiting request (abandoned, or a duplicate). */
  get strayAnswers(): number {
    return this.#stray;
  }

  /** Requests sent again after a dropped connection (with `resubmit`). */
  get resubmitted(): number {
    return this.#resubmitted;
  }

  /** Whether the connection is open. */
  get connected(): boolean {
    return this.#socket?.readyState === 1;
  }

  /** Requests waiting for an answer. */
  get inFlight(): number {
    return this.#pending.size;
  }

  /**
   * Opens the connection, trying each URL once in turn when there are several; call again after
   * a drop to reconnect (the `reconnect` option does that by itself).
   */
  async connect(signal?: AbortSignal): Promise<void> {
    for (let tried = 1;; tried++) {
      try {
        return await this.#open(signal);
      } catch (error) {
        if (tried >= this.urls.length || signal?.aborted) throw error;
        this.#at = (this.#at + 1) % this.urls.length;
      }
    }
  }

  async #open(signal?: AbortSignal): Promise<void> {
    if (this.connected) return;
    this.#wrongPort = undefined;
    const socket = await openSocket(
      this.url,
      { ...this.#options, role: "requester" },
      (text) => this.#onMessage(text),
      signal,
      (bytes) => this.#onItemBytes(bytes),
    );
    this.#socket = socket;
    // The worker port's greeting can arrive with the handshake, before `#socket` was set.
    if (this.#wrongPort) socket.close(1000, "Wrong port");
    const closed = Promise.withResolvers<void>();
    this.#closed = closed.promise;
    socket.addEventListener("close", ({ code }) => {
      if (this.#socket === socket) this.#socket = undefined;
      const error = new ConnectionClosedError(
        `Connection to ${
          redactUrl(this.url)
        } closed (code ${code}) before the answer came`,
      );
      const again = this.#options.reconnect && !this.#closing &&
        !this.#wrongPort;
      const nonRetriable = new Set(this.#options.nonRetriable ?? []);
      for (const [id, pending] of [...this.#pending]) {
        if (
          again && (!pending.sent ||
            (this.#options.resubmit && !nonRetriable.has(pending.command)))
        ) {
          pending.sent = false;
          continue;
        }
        this.#pending.delete(id);
        pending.reject(error);
      }
      // The server forgets a closed connection's requests: nothing late can come on another.
      for (const timer of this.#reserved.values()) clearTimeout(timer);
      this.#reserved.clear();
      closed.resolve();
      if (again) void this.#reconnect();
    });
    // Requests made while disconnected, or kept from the last connection, go out now.
    for (const pending of this.#pending.values()) {
      if (pending.sent) continue;
      pending.sent = true;
      this.#resubmitted++;
      socket.send(pending.frame);
    }
  }

  /** Tries each URL in turn, with backoff between rounds, until one connects or `close()`. */
  #reconnect(): Promise<void> {
    this.#reconnecting ??= (async () => {
      const backoff = new Backoff({ initialMs: 100, maxMs: 5000 });
      let tried = 0;
      try {
        while (!this.#closing) {
          this.#at = (this.#at + 1) % this.urls.length;
          try {
            await this.#open(this.#stop.signal);
            return;
          } catch {
            if (this.#closing) return;
          }
          if (++tried % this.urls.length === 0) {
            await sleep(backoff.next(), this.#stop.signal).catch(() => {});
          }
        }
      } finally {
        this.#reconnecting = undefined;
      }
    })();
    return this.#reconnecting;
  }

  /** Takes a large item frame of a stream as bytes, undecoded; false for any other frame. */
  #onItemBytes(bytes: Uint8Array): boolean {
    if (bytes.length < ITEM_BYTES_MIN) return false;
    const head = ITEM_HEAD.exec(frameDecoder.decode(bytes.subarray(0, 200)));
    const pending = head ? this.#pending.get(head[1]) : undefined;
    if (!pending?.onItem) return false;
    // A view into a larger buffer may be a read buffer the socket reuses: keep a copy.
    const own = bytes.byteLength === bytes.buffer.byteLength
      ? bytes
      : bytes.slice();
    pending.onItem({ index: Number(head![2]), bytes: own });
    return true;
  }

  #onMessage(text: string): void {
    const head = ITEM_HEAD.exec(text.slice(0, 200));
    if (head) {
      const pending = this.#pending.get(head[1]);
      if (pending?.onItem) {
        pending.onItem({ index: Number(head[2]), text });
        return;
      }
    }
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
    if (!pending) {
      // An answer for nothing that waits: given up on (timeout, abort), or a duplicate.
      if ("success" in message) {
        this.#stray++;
        this.#release(id);
      }
      return;
    }
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

  #release(id: string): void {
    const timer = this.#reserved.get(id);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.#reserved.delete(id);
  }

  #wrongPort: WrongPortError | undefined;

  /**
   * The server greeted this connection as a worker (`connect` envelope) or refused a request in
   * worker-port terms: this URL is a worker port. Fail every request now with a message that
   * says so, instead of waiting out their deadlines.
   */
  #onWorkerPort(envelope: Record<string, unknown>): void {
    const error = wrongPortError(envelope, this.url);
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
    return batchStream(
      (onItem) => this.#send(command, data, options, onItem),
      (on) => this.#readHold.set(on),
      () => this.#socket?.ping(),
    );
  }

  #send(
    command: string,
    data: unknown,
    options: RequestOptions,
    onItem?: (item: ArrivedItem) => void,
  ): Promise<RequesterAnswer> {
    const socket = this.#socket;
    if (this.#wrongPort) return Promise.reject(this.#wrongPort);
    const waiting = this.#options.reconnect && !this.#closing;
    if (!waiting && (!socket || socket.readyState !== 1)) {
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
    if (this.#reserved.has(requestId)) {
      return Promise.reject(
        new RangeError(
          `Request id '${requestId}' is still reserved: an aborted request with this id may yet be answered`,
        ),
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
    const giveUpAt = performance.now() + waitMs;
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
      const entry = this.#pending.get(requestId);
      if (!entry) return;
      this.#pending.delete(requestId);
      clearTimeout(timer);
      // Only a request the server has may still be answered (or cancelled).
      if (entry.sent) {
        this.#reserved.set(
          requestId,
          setTimeout(
            () => this.#reserved.delete(requestId),
            Math.max(0, giveUpAt - performance.now()),
          ),
        );
        if (this.#options.cancelOnAbort && this.#socket?.readyState === 1) {
          this.#socket.send(
            JSON.stringify({ request_id: requestId, cancel: true }),
          );
        }
      }
      reject(options.signal!.reason);
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    const done = () => {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
    };
    const text = JSON.stringify(frame);
    const open = socket?.readyState === 1;
    // A resubmitted stream sends its items again: pass each index on once.
    const seen = new Set<number>();
    this.#pending.set(requestId, {
      frame: text,
      command,
      sent: open,
      resolve: (answer) => {
        done();
        resolve(answer);
      },
      reject: (error) => {
        done();
        reject(error);
      },
      onProgress: options.onProgress,
      onItem: onItem && ((item) => {
        if (seen.has(item.index)) return;
        seen.add(item.index);
        onItem(item);
      }),
    });
    if (open) socket!.send(text);
    else if (waiting) void this.#reconnect();
    return promise;
  }

  /** Closes the connection; requests still in flight reject with a ConnectionClosedError. */
  async close(): Promise<void> {
    this.#readHold.stop();
    this.#closing = true;
    this.#stop.abort();
    await this.#reconnecting;
    for (const [id, pending] of [...this.#pending]) {
      if (!pending.sent) {
        this.#pending.delete(id);
        pending.reject(
          new ConnectionClosedError("Requester closed before the answer came"),
        );
      }
    }
    const socket = this.#socket;
    if (socket && socket.readyState <= 1) {
      socket.close(1000, "Requester closing");
      const t = setTimeout(() => socket.terminate(), 2000);
      await this.#closed;
      clearTimeout(t);
    }
  }
}
