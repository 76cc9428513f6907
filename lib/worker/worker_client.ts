/**
 * The worker: connects to the server's worker port, registers its actions, serves requests,
 * sends heartbeats, and reconnects forever with backoff when the connection drops.
 *
 * @module
 */

import type { ActionHandler } from "../action.ts";
import { Backoff, type BackoffOptions, sleep } from "../backoff.ts";
import {
  type ClientSocket,
  type ConnectOptions,
  openSocket,
  redactUrl,
} from "../transport/_connect.ts";
import {
  ErrorCode,
  UnauthorizedError,
  WorkerError,
  WrongPortError,
} from "../errors.ts";
import { messageId } from "../_id.ts";
import { logger } from "../log.ts";
import {
  BATCH_ENVELOPES,
  encodeEnvelope,
  type Envelope,
  EnvelopeBatcher,
  MessageType,
  parseJson,
  readEnvelope,
} from "../protocol.ts";
import { builtinWorkerActions, hostInfo } from "./system_info.ts";
import { ActionRunner } from "./action_runner.ts";
import { Liveness } from "./liveness.ts";
import { ServerAsks } from "./server_asks.ts";

const log = logger("worker");

/** The version a worker reports when it registers. */
export const WORKER_VERSION = "0.1.0";

/** A handler for a message type the worker does not know by itself. */
export type WorkerMessageHandler = (
  envelope: Envelope,
  worker: Worker,
) => void | Promise<void>;

/** Options for {@linkcode Worker}. */
export interface WorkerOptions extends ConnectOptions {
  /**
   * The worker port's URL, such as `ws://server:8765`; in a cluster, several separated by commas
   * (`ws://a:8765,ws://b:8765`): the worker tries them in turn, each once before backing off.
   */
  url: string;
  /**
   * A name for logs and `list`; also the worker's key for batch affinity. Give each worker its
   * own: the server renames a second `box` to `box-2`. @default `<hostname>-<pid>`
   */
  name?: string;
  /** Relative capacity for the balancer. @default 1 */
  weight?: number;
  /** Requests the server may send at once. @default 8 */
  concurrency?: number;
  /** Reconnect schedule. @default initial 500 ms, cap 30 s */
  backoff?: BackoffOptions;
  /** A connection that lasted this long resets the backoff, in ms. @default 10000 */
  stableAfterMs?: number;
  /** Heartbeat interval until the server names one, in ms. @default 10000 */
  heartbeatIntervalMs?: number;
  /**
   * The worker pings the server this often, in ms; when three pings in a row and `3 ×` this long
   * pass without a byte back (a frozen or cut-off server whose TCP stays open), it moves on to
   * its next URL. 0 turns the pings off. @default 1000
   */
  pingIntervalMs?: number;
  /** Extra fields for each heartbeat, such as `blocked_sources`. */
  heartbeatData?: () => Record<string, unknown>;
  /** How long `stop()` lets in-flight work finish, in ms. @default 10000 */
  graceMs?: number;
  /**
   * How long to wait for the server's `connect` greeting before registering anyway, in ms. A
   * port that never greets is most likely the requester port, which then says so.
   * @default 3000
   */
  greetingTimeoutMs?: number;
}

/** What `status()` reports. */
export interface WorkerStatus {
  /** Whether it is connected. */
  connected: boolean;
  /** Its id on the server; null before the first registration. */
  client_id: string | null;
  /** The URL it is connected to (or tries next), without credentials. */
  url: string;
  /** Its name. */
  name: string;
  /** Requests it is serving. */
  in_flight: number;
  /** Requests it answered with success. */
  served: number;
  /** Requests it answered with failure. */
  failed: number;
  /** Connections made so far. */
  connects: number;
  /** The actions it offers. */
  actions: string[];
}

function defaultName(): string {
  try {
    return `${Deno.hostname()}-${Deno.pid}`;
  } catch {
    return `worker-${Deno.pid}`;
  }
}

/** The URLs of a comma-separated list, blanks dropped. */
export function splitUrls(list: string): string[] {
  const urls = list.split(",").map((u) => u.trim()).filter(Boolean);
  if (urls.length === 0) throw new RangeError("No server URL given");
  return urls;
}

/** A worker process's connection to the server; see the module doc. */
export class Worker {
  /** Every URL the worker may connect to, in order of preference. */
  readonly urls: readonly string[];
  #at = 0;
  /** Its name in logs and listings. */
  readonly name: string;
  #options: WorkerOptions;
  #handlers = new Map<string, WorkerMessageHandler>();
  #socket: ClientSocket | undefined;
  /** Set while the server reads several envelopes per frame (it offered `BATCH_ENVELOPES`). */
  #batcher: EnvelopeBatcher | undefined;
  #clientId: string | null = null;
  /** The actions and the requests being served. */
  #runner: ActionRunner;
  #asks = new ServerAsks((type, data, msgId) => this.#send(type, data, msgId));
  #connects = 0;
  #stopping = false;
  #stop = new AbortController();
  #loop: Promise<void> | undefined;
  #connectedListeners = new Set<(clientId: string) => void>();
  /**
   * Random per Worker object, sent in `host`: a server that still lists this worker from an
   * earlier connection (its own or another cluster server's) knows it is the same one.
   */
  readonly #instance = messageId();

  /** A worker for `options.url`; `start()` connects it. */
  constructor(options: WorkerOptions) {
    this.#options = options;
    this.urls = splitUrls(options.url);
    this.name = options.name ?? defaultName();
    this.#runner = new ActionRunner(
      this.#stop.signal,
      (type, data) => void this.#send(type, data),
    );
    for (const [name, handler] of Object.entries(builtinWorkerActions())) {
      this.#runner.set(name, handler);
    }
  }

  /** The URL the worker is connected to, or tries next. */
  get url(): string {
    return this.urls[this.#at];
  }

  /**
   * Adds (or replaces) an action by name. Re-registers with the server when connected. An action
   * with `retriable: false` is never re-sent to another worker when this one vanishes mid-request
   * (use it for actions with side effects that must not happen twice).
   */
  registerAction(
    name: string,
    handler: ActionHandler,
    options: { retriable?: boolean } = {},
  ): this {
    this.#runner.set(name, handler, options.retriable !== false);
    if (this.#socket?.readyState === 1) this.#register();
    return this;
  }

  /** Handles a message type the worker would otherwise ignore. */
  onMessage(type: string, handler: WorkerMessageHandler): this {
    this.#handlers.set(type, handler);
    return this;
  }

  /** Calls `listener` with the new `client_id` after each (re)connect. */
  onConnected(listener: (clientId: string) => void): () => void {
    this.#connectedListeners.add(listener);
    return () => this.#connectedListeners.delete(listener);
  }

  /** What the worker is doing now. */
  status(): WorkerStatus {
    return {
      connected: this.#socket?.readyState === 1,
      client_id: this.#clientId,
      url: redactUrl(this.url),
      name: this.name,
      in_flight: this.#runner.inFlight,
      served: this.#runner.served,
      failed: this.#runner.failed,
      connects: this.#connects,
      actions: this.#runner.names(),
    };
  }

  /** Connects and keeps reconnecting until `stop()`; resolves once stopped. */
  start(): Promise<void> {
    this.#loop ??= this.#run();
    return this.#loop;
  }

  /** Resolves after the next successful registration (or now, when connected). */
  ready(): Promise<string> {
    if (this.#clientId && this.#socket?.readyState === 1) {
      return Promise.resolve(this.#clientId);
    }
    return new Promise((resolve) => {
      const off = this.onConnected((id) => {
        off();
        resolve(id);
      });
    });
  }

  /** This session reached a requester port instead of a worker port. */
  #wrongPort = false;

  async #run(): Promise<void> {
    const backoff = new Backoff({
      initialMs: 500,
      maxMs: 30_000,
      ...this.#options.backoff,
    });
    const stableAfter = this.#options.stableAfterMs ?? 10_000;
    // With several URLs, each is tried once, quickly, before the backoff delays the next round.
    let roundStart = 0;
    while (!this.#stopping) {
      const opened = Date.now();
      const connects = this.#connects;
      let refused = false;
      this.#wrongPort = false;
      try {
        await this.#session();
      } catch (error) {
        if (this.#stopping) break;
        // A wrong token will not fix itself soon: say so loudly, and wait the longest.
        refused = error instanceof UnauthorizedError ||
          error instanceof WrongPortError;
        if (refused) log.error("{error}", { error: (error as Error).message });
        else log.warn("{error}", { error: (error as Error).message });
      }
      if (this.#stopping) break;
      if (Date.now() - opened >= stableAfter) backoff.reset();
      if (this.#connects !== connects) roundStart = this.#at;
      this.#at = (this.#at + 1) % this.urls.length;
      const delay = this.#at !== roundStart
        ? Math.round(50 + Math.random() * 100)
        : refused || this.#wrongPort
        ? backoff.maxMs
        : backoff.next();
      log.info("Reconnecting to {url} in {delay} ms", {
        url: redactUrl(this.url),
        delay,
      });
      try {
        await sleep(delay, this.#stop.signal);
      } catch {
        break;
      }
    }
  }

  /** One connection's life: resolves when it closes. */
  async #session(): Promise<void> {
    // Frames that arrive before this session's handler is in place wait here.
    const early: string[] = [];
    let onText = (text: string) => void early.push(text);
    const socket = await openSocket(
      this.url,
      { ...this.#options, role: "worker" },
      (text) => onText(text),
      this.#stop.signal,
    );
    this.#socket = socket;
    this.#connects++;
    let interval = this.#options.heartbeatIntervalMs ?? 10_000;
    const closed = Promise.withResolvers<void>();
    const liveness = new Liveness(
      socket,
      this.#options.pingIntervalMs ?? 1000,
      () => this.#heartbeat(),
    );
    let greeted = false;
    const onValue = (value: unknown) => {
      let envelope: Envelope;
      try {
        envelope = readEnvelope(value);
      } catch (error) {
        const wrongPort = requesterPortError(value);
        if (wrongPort !== undefined) {
          // Dialled the requester port: nothing will work here until the URL changes.
          this.#wrongPort = true;
          log.error("{url}: {error}", {
            url: redactUrl(this.url),
            error: wrongPort,
          });
          socket.terminate();
          return;
        }
        log.warn("Bad frame from the server: {message}", {
          message: (error as Error).message,
        });
        return;
      }
      if (envelope.type === MessageType.CONNECT) {
        const d = envelope.data as {
          client_id?: unknown;
          heartbeat_interval?: unknown;
          max_frame_bytes?: unknown;
          [BATCH_ENVELOPES]?: unknown;
        };
        if (
          typeof d.heartbeat_interval === "number" && d.heartbeat_interval > 0
        ) {
          interval = d.heartbeat_interval * 1000;
        }
        // The registration leaves in a frame of its own: the server reads arrays from this
        // worker only once it has read the registration that says this worker sends them.
        this.#batcher = undefined;
        greeted = true;
        this.#clientId = typeof d.client_id === "string" ? d.client_id : null;
        this.#register();
        // What the worker reports of itself (its upstream's rate, budgets and cool-downs) goes
        // out at once rather than a heartbeat interval later: the server places batch items by
        // it, and the first batch often comes right after the worker joins.
        if (this.#options.heartbeatData) this.#heartbeat();
        this.#batcher = d[BATCH_ENVELOPES] === true
          ? new EnvelopeBatcher(
            (frame) => socket.send(frame),
            // Far below any limit the server states, in characters or in bytes.
            typeof d.max_frame_bytes === "number" && d.max_frame_bytes > 0
              ? Math.min(64 * 1024, Math.floor(d.max_frame_bytes / 4))
              : 64 * 1024,
          )
          : undefined;
        liveness.beatEvery(interval);
        log.info("Connected to {url} as {id} ({name})", {
          url: redactUrl(this.url),
          id: this.#clientId,
          name: this.name,
        });
        for (const listener of this.#connectedListeners) {
          listener(this.#clientId ?? "");
        }
        return;
      }
      this.#onEnvelope(envelope);
    };
    onText = (text) => {
      liveness.heard();
      let value: unknown;
      try {
        value = parseJson(text);
      } catch (error) {
        log.warn("Bad frame from the server: {message}", {
          message: (error as Error).message,
        });
        return;
      }
      // Several envelopes in one frame: only from a server this worker told it reads them.
      if (Array.isArray(value)) value.forEach(onValue);
      else onValue(value);
    };
    const greeting = setTimeout(() => {
      if (!greeted && socket.readyState === 1) {
        log.warn("No greeting from {url}: registering anyway", {
          url: redactUrl(this.url),
        });
        this.#register();
      }
    }, this.#options.greetingTimeoutMs ?? 3000);
    for (const text of early.splice(0)) onText(text);
    socket.onping = socket.onpong = () => liveness.heard();
    socket.addEventListener("close", ({ code, reason }) => {
      liveness.stop();
      clearTimeout(greeting);
      this.#socket = undefined;
      this.#batcher = undefined;
      // Requests the server asked for are re-sent elsewhere by the server; stop working on them.
      this.#runner.cancelAll(
        new WorkerError("Connection to the server closed", ErrorCode.CANCELLED),
      );
      this.#asks.closed();
      if (!this.#stopping) {
        log.warn("Connection closed (code {code}{reason})", {
          code,
          reason: reason ? `: ${reason}` : "",
        });
      }
      closed.resolve();
    });
    await closed.promise;
  }

  #heartbeat(): void {
    this.#send(MessageType.HEARTBEAT, {
      status: "alive",
      in_flight: this.#runner.inFlight,
      served: this.#runner.served,
      ...this.#options.heartbeatData?.(),
    });
  }

  #register(): void {
    this.#send(MessageType.CONNECT, {
      name: this.name,
      weight: this.#options.weight ?? 1,
      max_concurrency: this.#options.concurrency ?? 8,
      actions: this.#runner.names(),
      non_retriable: this.#runner.nonRetriable(),
      version: WORKER_VERSION,
      // This worker reads frames of several envelopes; the server may send them from now on.
      [BATCH_ENVELOPES]: true,
      host: hostInfo(this.#instance),
    });
  }

  #send(type: string, data: unknown, msgId?: string): boolean {
    const socket = this.#socket;
    if (!socket || socket.readyState !== 1) return false;
    const text = encodeEnvelope(type, data, msgId);
    if (this.#batcher) {
      this.#batcher.push(text);
      return true;
    }
    // Frames sent in one turn leave in one write (lib/transport/_websocket.ts).
    socket.send(text);
    return true;
  }

  #onEnvelope(envelope: Envelope): void {
    switch (envelope.type) {
      case MessageType.REQUEST:
        return this.#runner.serve(envelope);
      case MessageType.RESPONSE:
        return this.#asks.answer(envelope);
      case MessageType.CANCEL: {
        const id = (envelope.data as { request_id?: unknown })?.request_id;
        if (typeof id === "string") {
          this.#runner.cancel(
            id,
            new WorkerError("Cancelled by the server", ErrorCode.CANCELLED),
          );
        }
        return;
      }
      case MessageType.HEARTBEAT:
        return;
      case MessageType.NOTIFICATION:
        log.info("Notification from the server: {message}", {
          message: (envelope.data as { message?: unknown })?.message,
        });
        break;
      case MessageType.ERROR:
        log.warn("The server reported an error: {data}", {
          data: envelope.data,
        });
        break;
    }
    const handler = this.#handlers.get(envelope.type);
    if (handler) {
      Promise.resolve(handler(envelope, this)).catch((error) =>
        log.error("Handler for {type} failed: {error}", {
          type: envelope.type,
          error,
        })
      );
    } else if (
      envelope.type !== MessageType.NOTIFICATION &&
      envelope.type !== MessageType.ERROR
    ) {
      log.debug("Ignored a {type} frame", { type: envelope.type });
    }
  }

  /** Asks the server to run one of its actions (console `request`). */
  request(
    action: string,
    params: unknown = {},
    timeoutMs = 30_000,
  ): Promise<unknown> {
    return this.#asks.request(action, params, timeoutMs);
  }

  /**
   * Leaves gracefully: tells the server (`disconnect`), lets in-flight work finish for up to
   * `graceMs`, then closes and stops reconnecting.
   */
  async stop(graceMs: number = this.#options.graceMs ?? 10_000): Promise<void> {
    if (this.#stopping) return await this.#loop;
    this.#stopping = true;
    this.#send(MessageType.DISCONNECT, { reason: "shutting down" });
    await this.#runner.settled(graceMs);
    this.#stop.abort(new WorkerError("Worker stopped", ErrorCode.CANCELLED));
    this.#batcher?.flush();
    const socket = this.#socket;
    if (socket && socket.readyState <= 1) {
      const closed = new Promise<void>((resolve) =>
        socket.addEventListener("close", () => resolve())
      );
      socket.close(1000, "Worker stopping");
      const t = setTimeout(() => socket.terminate(), 2000);
      await closed;
      clearTimeout(t);
    }
    await this.#loop;
  }
}

/**
 * The error text of a requester-port answer (`{"success": false, "error": …}`, no `type`): what
 * the server says to a worker that connected to the requester port. Undefined for anything else.
 */
function requesterPortError(value: unknown): string | undefined {
  if (typeof value !== "object" || value === null || "type" in value) {
    return undefined;
  }
  const frame = value as {
    success?: unknown;
    error?: unknown;
    error_code?: unknown;
  };
  if (frame.success !== false || typeof frame.error !== "string") {
    return undefined;
  }
  return frame.error_code === ErrorCode.WRONG_PORT
    ? frame.error
    : `this looks like a requester port, which answered: ${frame.error}`;
}
