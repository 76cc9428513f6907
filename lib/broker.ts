/**
 * The broker: handlers for the worker port and the requester port, wired to a dispatcher. It
 * binds no port itself (the entry program or a test does), so most behaviour is testable on
 * port 0.
 *
 * @module
 */

import type { ActionHandler } from "./action.ts";
import { authorized } from "./auth.ts";
import { Cancellation, type CancelSignal } from "./_cancel.ts";
import { BATCH_COMMAND, readBatchItems, runBatch } from "./batch.ts";
import { Dispatcher, type Outcome, Peer } from "./dispatcher.ts";
import type { Strategy } from "./balancer.ts";
import {
  ErrorCode,
  NO_WORKERS_TEXT,
  ProtocolError,
  SwitchyardError,
  TIMEOUT_TEXT,
} from "./errors.ts";
import { shortId } from "./_id.ts";
import { logger } from "./log.ts";
import {
  decodeEnvelope,
  encodeEnvelope,
  type Envelope,
  failureAnswer,
  MessageType,
  parseRequesterFrame,
  readRequestData,
  readResponseData,
  type RequesterAnswer,
  type RequesterRequest,
} from "./protocol.ts";
import {
  type Clock,
  systemClock,
  type WorkerInfo,
  type WorkerRegistration,
} from "./registry.ts";
import { serverActions } from "./server_actions.ts";

const log = logger("broker");

/** The version the server reports in `connect` and `/health`. */
export const VERSION = "0.1.0";

/** A handler for a custom worker-port message type. */
export type MessageHandler = (
  envelope: Envelope,
  worker: WorkerInfo,
) => void | Promise<void>;

/** Options for {@linkcode Broker}. */
export interface BrokerOptions {
  /** @default "least_loaded" */
  strategy?: Strategy;
  /** Deadline of a request that names none, in ms. @default 30000 */
  timeoutMs?: number;
  /** The largest deadline a requester may ask for, in ms. @default 300000 */
  maxTimeoutMs?: number;
  /** How often workers should send heartbeats, in ms (told to them in `connect`). @default 10000 */
  heartbeatIntervalMs?: number;
  /** Heartbeat silence after which a worker stops getting work, in ms. @default 3 × heartbeatIntervalMs */
  heartbeatTimeoutMs?: number;
  /** Heartbeat silence after which a worker is dropped, in ms. @default 60000 */
  cleanupIntervalMs?: number;
  /** WebSocket idle timeout in seconds: pings after half, closes after all. @default 30 */
  idleTimeoutSeconds?: number;
  /** Requests waiting for a free worker before `Server busy`. @default 1000 */
  maxQueue?: number;
  /** Workers one request may try when workers vanish under it. @default 3 */
  maxAttempts?: number;
  /** The longest a request may wait for a free worker before `Server busy`, in ms. @default its deadline */
  queueTimeoutMs?: number;
  /** Requests in flight on one requester connection. @default 1000 */
  maxInFlightPerConnection?: number;
  /** Largest requester frame, in bytes. @default 1048576 */
  maxRequesterFrameBytes?: number;
  /** Largest worker frame, in bytes (market answers are large). @default 67108864 */
  maxWorkerFrameBytes?: number;
  /** Items in one `get_markets` batch. @default 10000 */
  maxBatchItems?: number;
  /** Bytes queued to a requester that does not read before it is dropped. @default 16777216 */
  maxBufferedBytes?: number;
  /** Connections per port. @default 10000 */
  maxConnections?: number;
  /** `max_concurrency` of a worker that never registered. @default 16 */
  defaultConcurrency?: number;
  /** Token workers must present. @default none */
  workerToken?: string;
  /** Token requesters must present. @default none */
  requesterToken?: string;
  /** Actions never re-run on another worker after their worker vanished. @default [] */
  nonRetriableActions?: string[];
  /** More server actions (or replacements), requested by workers and the console. */
  actions?: Record<string, ActionHandler>;
  /** Handlers for custom worker-port message types. */
  messageHandlers?: Record<string, MessageHandler>;
  /** How often to judge worker health, in ms; 0 leaves it to explicit `sweep()` calls. @default 1000 */
  sweepIntervalMs?: number;
  /** @default the wall clock */
  clock?: Clock;
  /** Random source for the balancer. @default Math.random */
  random?: () => number;
}

/** Live counters for `/health`, `stats` and tests. */
export interface BrokerStats {
  status: "ok" | "draining";
  workers: number;
  healthy_workers: number;
  requesters: number;
  in_flight: number;
  queued: number;
  answered: number;
  failed: number;
  uptime_s: number;
}

interface RequesterPeer {
  id: string;
  socket: WebSocket;
  address: string;
  /** Requests in flight by `request_id`, each with what cancels it. */
  requests: Map<string, Cancellation>;
  /** Dropped for not reading: forgotten, though its socket may linger until the peer reads. */
  dropped?: boolean;
}

function remoteAddress(info: Deno.ServeHandlerInfo | undefined): string {
  const addr = info?.remoteAddr as Deno.NetAddr | undefined;
  return addr?.hostname ? `${addr.hostname}:${addr.port}` : "unknown";
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

// A request_id still readable from a frame too large to parse, so its error reaches the waiter.
const REQUEST_ID_PEEK = /"request_id"\s*:\s*"([^"\\]{1,200})"/;

/** The broker; see the module doc. */
export class Broker {
  readonly dispatcher: Dispatcher;
  readonly clock: Clock;
  #o: Required<
    Omit<
      BrokerOptions,
      | "workerToken"
      | "requesterToken"
      | "actions"
      | "messageHandlers"
      | "clock"
      | "random"
      | "strategy"
      | "nonRetriableActions"
      | "queueTimeoutMs"
    >
  >;
  #workerToken?: string;
  #requesterToken?: string;
  #actions: Record<string, ActionHandler>;
  #messageHandlers: Record<string, MessageHandler>;
  #sockets = new Map<string, WebSocket>();
  #requesters = new Set<RequesterPeer>();
  /** Dropped slow readers whose sockets have not closed yet. */
  #lingering = 0;
  #startedAt: number;
  #draining = false;
  #closed = false;
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #answered = 0;
  #failed = 0;
  #active = 0;
  #idle: PromiseWithResolvers<void> | undefined;

  constructor(options: BrokerOptions = {}) {
    this.clock = options.clock ?? systemClock;
    const heartbeatIntervalMs = options.heartbeatIntervalMs ?? 10_000;
    this.#o = {
      timeoutMs: options.timeoutMs ?? 30_000,
      maxTimeoutMs: options.maxTimeoutMs ?? 300_000,
      heartbeatIntervalMs,
      heartbeatTimeoutMs: options.heartbeatTimeoutMs ?? 3 * heartbeatIntervalMs,
      cleanupIntervalMs: options.cleanupIntervalMs ?? 60_000,
      idleTimeoutSeconds: options.idleTimeoutSeconds ?? 30,
      maxQueue: options.maxQueue ?? 1000,
      maxAttempts: options.maxAttempts ?? 3,
      maxInFlightPerConnection: options.maxInFlightPerConnection ?? 1000,
      maxRequesterFrameBytes: options.maxRequesterFrameBytes ?? 1024 * 1024,
      maxWorkerFrameBytes: options.maxWorkerFrameBytes ?? 64 * 1024 * 1024,
      maxBatchItems: options.maxBatchItems ?? 10_000,
      maxBufferedBytes: options.maxBufferedBytes ?? 16 * 1024 * 1024,
      maxConnections: options.maxConnections ?? 10_000,
      defaultConcurrency: options.defaultConcurrency ?? 16,
      sweepIntervalMs: options.sweepIntervalMs ?? 1000,
    };
    this.#workerToken = options.workerToken || undefined;
    this.#requesterToken = options.requesterToken || undefined;
    this.dispatcher = new Dispatcher({
      strategy: options.strategy,
      maxQueue: this.#o.maxQueue,
      maxAttempts: this.#o.maxAttempts,
      queueTimeoutMs: options.queueTimeoutMs,
      nonRetriableActions: options.nonRetriableActions,
      clock: this.clock,
      random: options.random,
    });
    this.#actions = {
      ...serverActions(() => this.workers()),
      ...options.actions,
    };
    this.#messageHandlers = { ...options.messageHandlers };
    this.#startedAt = this.clock.now();
    if (this.#o.sweepIntervalMs > 0) {
      this.#sweeper = setInterval(() => this.sweep(), this.#o.sweepIntervalMs);
    }
    this.handleWorker = this.handleWorker.bind(this);
    this.handleRequester = this.handleRequester.bind(this);
  }

  /** The connected workers, as `get_client_info` shows them. */
  workers(): WorkerInfo[] {
    return this.dispatcher.registry.all().map((w) => w.info());
  }

  stats(): BrokerStats {
    return {
      status: this.#draining ? "draining" : "ok",
      workers: this.dispatcher.registry.size,
      healthy_workers:
        this.dispatcher.registry.all().filter((w) => w.healthy).length,
      requesters: this.#requesters.size,
      in_flight: this.#active,
      queued: this.dispatcher.queued,
      answered: this.#answered,
      failed: this.#failed,
      uptime_s: Math.round((this.clock.now() - this.#startedAt) / 1000),
    };
  }

  // ---- HTTP ----------------------------------------------------------------------------------

  #http(req: Request, port: "worker" | "requester"): Response | undefined {
    if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
      return undefined;
    }
    const path = new URL(req.url).pathname;
    if (req.method === "GET" && path === "/health") {
      return json({ ...this.stats(), port, version: VERSION });
    }
    return new Response(
      `This is the Switchyard ${port} port: connect with a WebSocket client ` +
        `(ws://host:port/), or GET /health for status.\n`,
      {
        status: 426,
        headers: { "content-type": "text/plain", upgrade: "websocket" },
      },
    );
  }

  #refuse(
    req: Request,
    token: string | undefined,
    port: string,
  ): Response | undefined {
    if (this.#closed) {
      return new Response("Server is shutting down\n", { status: 503 });
    }
    if (!authorized(req, token)) {
      log.warn("Refused a {port} connection: missing or invalid token", {
        port,
      });
      return new Response("Unauthorized: missing or invalid token\n", {
        status: 401,
        headers: { "www-authenticate": "Bearer" },
      });
    }
    const count = port === "worker"
      ? this.dispatcher.registry.size
      : this.#requesters.size + this.#lingering;
    if (count >= this.#o.maxConnections) {
      return new Response(
        `Too many ${port} connections (limit ${this.#o.maxConnections})\n`,
        {
          status: 503,
        },
      );
    }
    return undefined;
  }

  // ---- worker port ---------------------------------------------------------------------------

  /** The worker port's request handler. */
  handleWorker(req: Request, info?: Deno.ServeHandlerInfo): Response {
    const plain = this.#http(req, "worker");
    if (plain) return plain;
    const refused = this.#refuse(req, this.#workerToken, "worker");
    if (refused) return refused;
    // Read before the upgrade: the request object is spent afterwards.
    const address = remoteAddress(info);
    const { socket, response } = Deno.upgradeWebSocket(req, {
      idleTimeout: this.#o.idleTimeoutSeconds,
    });
    let id = shortId();
    while (this.#sockets.has(id)) id = shortId();
    const worker = new Peer(id, address, (frame) => socket.send(frame), {
      clock: this.clock,
      defaultConcurrency: this.#o.defaultConcurrency,
    });
    socket.onopen = () => {
      this.#sockets.set(id, socket);
      this.dispatcher.registry.add(worker);
      socket.send(encodeEnvelope(MessageType.CONNECT, {
        client_id: id,
        status: "connected",
        server_version: VERSION,
        heartbeat_interval: this.#o.heartbeatIntervalMs / 1000,
        max_frame_bytes: this.#o.maxWorkerFrameBytes,
      }));
      log.info("Worker {id} connected from {address}", {
        id,
        address: worker.address,
      });
      this.dispatcher.pump();
    };
    socket.onmessage = (event) =>
      this.#onWorkerFrame(worker, socket, event.data);
    socket.onclose = (event) => {
      this.#sockets.delete(id);
      log.info("Worker {id} ({name}) disconnected: code {code}", {
        id,
        name: worker.name,
        code: event.code,
      });
      this.dispatcher.workerLost(
        worker,
        `connection closed (code ${event.code})`,
      );
    };
    socket.onerror = () => {};
    return response;
  }

  #workerError(
    socket: WebSocket,
    code: string,
    error: string,
    msgId?: string,
  ): void {
    if (socket.readyState !== WebSocket.OPEN) return;
    socket.send(
      encodeEnvelope(MessageType.ERROR, { error, code, msg_id: msgId ?? null }),
    );
  }

  #onWorkerFrame(worker: Peer, socket: WebSocket, raw: unknown): void {
    worker.lastSeen = this.clock.now();
    if (typeof raw !== "string") {
      log.warn("Worker {id} sent a binary frame", { id: worker.id });
      return this.#workerError(
        socket,
        ErrorCode.BINARY_FRAME,
        "Binary frames are not supported: send JSON text",
      );
    }
    if (raw.length > this.#o.maxWorkerFrameBytes) {
      log.warn("Worker {id} sent a frame of {size} characters", {
        id: worker.id,
        size: raw.length,
      });
      return this.#workerError(
        socket,
        ErrorCode.FRAME_TOO_LARGE,
        `Frame too large: ${raw.length} characters (limit ${this.#o.maxWorkerFrameBytes})`,
      );
    }
    let envelope: Envelope;
    try {
      envelope = decodeEnvelope(raw);
    } catch (error) {
      const e = error as ProtocolError;
      log.warn("Bad frame from worker {id}: {message}", {
        id: worker.id,
        message: e.message,
      });
      return this.#workerError(socket, e.code, e.message);
    }
    try {
      this.#onWorkerEnvelope(worker, socket, envelope);
    } catch (error) {
      const e = error instanceof SwitchyardError
        ? error
        : new SwitchyardError(ErrorCode.INVALID_FRAME, String(error));
      log.warn("Bad {type} frame from worker {id}: {message}", {
        type: envelope.type,
        id: worker.id,
        message: e.message,
      });
      this.#workerError(socket, e.code, e.message, envelope.msg_id);
    }
  }

  #onWorkerEnvelope(worker: Peer, socket: WebSocket, envelope: Envelope): void {
    const data = envelope.data as Record<string, unknown>;
    switch (envelope.type) {
      case MessageType.CONNECT: {
        if (typeof data !== "object" || data === null || Array.isArray(data)) {
          throw new ProtocolError(
            ErrorCode.INVALID_FIELD,
            "Field 'data' of connect must be an object",
          );
        }
        worker.register(data as WorkerRegistration, 1024);
        if (Array.isArray(data.non_retriable)) {
          for (const action of data.non_retriable) {
            if (typeof action === "string") {
              this.dispatcher.markNonRetriable(action);
            }
          }
        }
        log.info(
          "Worker {id} registered as {name} (weight {weight}, concurrency {max})",
          {
            id: worker.id,
            name: worker.name,
            weight: worker.weight,
            max: worker.maxConcurrency,
          },
        );
        this.dispatcher.pump();
        return;
      }
      case MessageType.HEARTBEAT: {
        worker.heartbeats = true;
        const wasUnhealthy = worker.unhealthy;
        worker.unhealthy = false;
        if (data && Array.isArray(data.blocked_sources)) {
          worker.blockedSources = data.blocked_sources.filter((s) =>
            typeof s === "string"
          )
            .slice(0, 20);
          // The worker's own breakers speak for it: once they are all closed, so is our detour.
          if (worker.blockedSources.length === 0) worker.blockedUntil = 0;
        }
        socket.send(encodeEnvelope(MessageType.HEARTBEAT, {
          status: "alive",
          server_time: this.clock.now() / 1000,
        }));
        if (wasUnhealthy) {
          log.info("Worker {id} is healthy again", { id: worker.id });
          this.dispatcher.pump();
        }
        return;
      }
      case MessageType.RESPONSE: {
        const response = readResponseData(envelope.data);
        if (!this.dispatcher.complete(worker, response)) {
          log.warn(
            "Worker {id} answered {msgId}, a request it does not hold: rejected",
            {
              id: worker.id,
              msgId: response.request_id,
            },
          );
          this.#workerError(
            socket,
            ErrorCode.UNKNOWN_REQUEST,
            `Unknown request id '${response.request_id}': no request of yours waits for it`,
            envelope.msg_id,
          );
        }
        return;
      }
      case MessageType.REQUEST:
        return void this.#serveWorkerRequest(worker, socket, envelope);
      case MessageType.PROGRESS: {
        if (
          data && typeof data.request_id === "string" &&
          typeof data.done === "number"
        ) {
          const item = data.item as { index?: unknown } | undefined;
          this.dispatcher.progress(worker, data.request_id, {
            done: data.done,
            total: typeof data.total === "number" ? data.total : undefined,
            item: typeof item === "object" && item !== null &&
                Number.isInteger(item.index)
              ? item as { index: number; result: unknown }
              : undefined,
          });
        }
        return;
      }
      case MessageType.DISCONNECT:
        worker.draining = true;
        log.info("Worker {id} is draining ({n} in flight)", {
          id: worker.id,
          n: worker.inFlight,
        });
        return;
      case MessageType.ERROR:
        log.warn("Worker {id} reported an error: {data}", {
          id: worker.id,
          data: envelope.data,
        });
        return;
      default: {
        const handler = this.#messageHandlers[envelope.type];
        if (handler) {
          Promise.resolve(handler(envelope, worker.info())).catch((error) =>
            log.error("Handler for {type} failed: {error}", {
              type: envelope.type,
              error,
            })
          );
        } else {
          log.debug("Ignored a {type} frame from worker {id}", {
            type: envelope.type,
            id: worker.id,
          });
        }
      }
    }
  }

  async #serveWorkerRequest(
    worker: Peer,
    socket: WebSocket,
    envelope: Envelope,
  ): Promise<void> {
    let reply: Record<string, unknown>;
    try {
      const { action, params } = readRequestData(envelope.data);
      const handler = Object.hasOwn(this.#actions, action)
        ? this.#actions[action]
        : undefined;
      if (!handler) {
        reply = {
          success: false,
          result: null,
          error: `Unknown action '${action}': the server offers ${
            Object.keys(this.#actions).join(", ")
          }`,
          error_code: ErrorCode.UNKNOWN_ACTION,
        };
      } else {
        const result = await handler(params, {
          signal: AbortSignal.timeout(this.#o.timeoutMs),
          requestId: envelope.msg_id,
        });
        reply = { success: true, result, error: null };
      }
    } catch (error) {
      reply = {
        success: false,
        result: null,
        error: error instanceof Error ? error.message : String(error),
        error_code: error instanceof SwitchyardError
          ? error.code
          : ErrorCode.INVALID_DATA,
      };
    }
    if (socket.readyState !== WebSocket.OPEN) return;
    socket.send(
      encodeEnvelope(MessageType.RESPONSE, {
        request_id: envelope.msg_id,
        ...reply,
      }),
    );
    log.debug("Served {action} for worker {id}", {
      action: envelope.data,
      id: worker.id,
    });
  }

  // ---- requester port ------------------------------------------------------------------------

  /** The requester port's request handler. */
  handleRequester(req: Request, info?: Deno.ServeHandlerInfo): Response {
    const plain = this.#http(req, "requester");
    if (plain) return plain;
    const refused = this.#refuse(req, this.#requesterToken, "requester");
    if (refused) return refused;
    const address = remoteAddress(info);
    const { socket, response } = Deno.upgradeWebSocket(req, {
      idleTimeout: this.#o.idleTimeoutSeconds,
    });
    const peer: RequesterPeer = {
      id: shortId(8),
      socket,
      address,
      requests: new Map(),
    };
    socket.onopen = () => {
      this.#requesters.add(peer);
      log.debug("Requester {id} connected from {address}", {
        id: peer.id,
        address: peer.address,
      });
    };
    socket.onmessage = (event) => this.#onRequesterFrame(peer, event.data);
    socket.onclose = () => {
      if (peer.dropped) this.#lingering--;
      this.#forget(peer, "Requester disconnected");
      log.debug("Requester {id} disconnected", { id: peer.id });
    };
    socket.onerror = () => {};
    return response;
  }

  #answer(
    peer: RequesterPeer,
    answer: RequesterAnswer | Record<string, unknown>,
  ): void {
    const socket = peer.socket;
    if (socket.readyState !== WebSocket.OPEN) return;
    if (socket.bufferedAmount > this.#o.maxBufferedBytes) {
      // A requester that stops reading would otherwise hold the server's memory hostage.
      log.warn(
        "Dropping requester {id}: {bytes} bytes unread (limit {limit})",
        {
          id: peer.id,
          bytes: socket.bufferedAmount,
          limit: this.#o.maxBufferedBytes,
        },
      );
      socket.close(1008, "Too slow: answers are not being read");
      // Deno cannot force a server-side socket shut, and the close frame waits behind the unread
      // bytes until the peer reads: forget the peer now, so its requests stop and nothing more
      // is queued for it. Its socket still counts against maxConnections until it closes.
      peer.dropped = true;
      this.#lingering++;
      this.#forget(peer, "Requester dropped: answers are not being read");
      return;
    }
    socket.send(JSON.stringify(answer));
  }

  #forget(peer: RequesterPeer, reason: string): void {
    this.#requesters.delete(peer);
    log.debug("Cancelling {n} requests of requester {id}: {reason}", {
      n: peer.requests.size,
      id: peer.id,
      reason,
    });
    for (const cancellation of peer.requests.values()) cancellation.abort();
    peer.requests.clear();
  }

  #reject(
    peer: RequesterPeer,
    requestId: string | null,
    code: string,
    error: string,
  ): void {
    this.#failed++;
    log.debug("Rejected a frame from requester {id}: {error}", {
      id: peer.id,
      error,
    });
    this.#answer(peer, failureAnswer(requestId, error, code));
  }

  #onRequesterFrame(peer: RequesterPeer, raw: unknown): void {
    if (typeof raw !== "string") {
      return this.#reject(
        peer,
        null,
        ErrorCode.BINARY_FRAME,
        "Binary frames are not supported: send a JSON text frame",
      );
    }
    if (raw.length > this.#o.maxRequesterFrameBytes) {
      const id = REQUEST_ID_PEEK.exec(raw.slice(0, 1000))?.[1] ?? null;
      return this.#reject(
        peer,
        id,
        ErrorCode.FRAME_TOO_LARGE,
        `Frame too large: ${raw.length} characters (limit ${this.#o.maxRequesterFrameBytes})`,
      );
    }
    let request: RequesterRequest;
    try {
      request = parseRequesterFrame(raw, {
        maxTimeoutSeconds: this.#o.maxTimeoutMs / 1000,
      });
    } catch (error) {
      const e = error as ProtocolError;
      return this.#reject(peer, e.requestId ?? null, e.code, e.message);
    }
    const id = request.request_id;
    if (this.#draining || this.#closed) {
      return this.#reject(
        peer,
        id,
        ErrorCode.SHUTTING_DOWN,
        "Server is shutting down: request not accepted",
      );
    }
    if (peer.requests.has(id)) {
      return this.#reject(
        peer,
        id,
        ErrorCode.DUPLICATE_REQUEST_ID,
        `Duplicate request_id '${id}': a request with this id is already in flight on this connection`,
      );
    }
    if (peer.requests.size >= this.#o.maxInFlightPerConnection) {
      return this.#reject(
        peer,
        id,
        ErrorCode.TOO_MANY_IN_FLIGHT,
        `Server busy: ${peer.requests.size} requests in flight on this connection (limit ${this.#o.maxInFlightPerConnection})`,
      );
    }
    const cancellation = new Cancellation();
    peer.requests.set(id, cancellation);
    this.#active++;
    void this.#serve(peer, request, cancellation);
  }

  async #serve(
    peer: RequesterPeer,
    request: RequesterRequest,
    cancellation: Cancellation,
  ): Promise<void> {
    const id = request.request_id;
    let answer: RequesterAnswer;
    try {
      answer = await this.#run(peer, request, cancellation);
    } catch (error) {
      log.error("Request {id} failed unexpectedly: {error}", { id, error });
      answer = failureAnswer(
        id,
        `Internal error: ${error}`,
        ErrorCode.WORKER_ERROR,
      );
    }
    peer.requests.delete(id);
    this.#active--;
    if (answer.success) this.#answered++;
    else this.#failed++;
    if (!cancellation.aborted) this.#answer(peer, answer);
    if (this.#active === 0) this.#idle?.resolve();
  }

  #deadline(request: RequesterRequest, now: number): number {
    const ms = request.timeout !== undefined
      ? Math.min(request.timeout * 1000, this.#o.maxTimeoutMs)
      : this.#o.timeoutMs;
    return now + ms;
  }

  async #run(
    peer: RequesterPeer,
    request: RequesterRequest,
    signal: CancelSignal,
  ): Promise<RequesterAnswer> {
    const started = this.clock.now();
    const id = request.request_id;
    if (request.command === BATCH_COMMAND) {
      let items: unknown[];
      try {
        items = readBatchItems(request.data, this.#o.maxBatchItems);
      } catch (error) {
        const e = error as ProtocolError;
        return failureAnswer(id, e.message, e.code);
      }
      let lastSent = 0;
      const { data, workersUsed } = await runBatch(this.dispatcher, items, {
        deadline: this.#deadline(request, started),
        signal,
        onProgress: request.progress
          ? (done, total) => {
            // At most ~20 frames a second, and always the final count.
            const now = this.clock.now();
            if (done < total && now - lastSent < 50) return;
            lastSent = now;
            this.#answer(peer, { request_id: id, progress: { done, total } });
          }
          : undefined,
      });
      const noWorkers = workersUsed === 0 && items.length > 0 &&
        data.results.every((r) =>
          (r as { error_code?: string }).error_code === ErrorCode.NO_WORKERS
        );
      if (noWorkers) {
        return failureAnswer(id, NO_WORKERS_TEXT, ErrorCode.NO_WORKERS);
      }
      return {
        request_id: id,
        success: true,
        data,
        error: null,
        processed_by: `distributed_${workersUsed}_workers`,
        elapsed_ms: this.clock.now() - started,
      };
    }
    const outcome: Outcome = await this.dispatcher.submit(
      request.command,
      request.data,
      {
        deadline: this.#deadline(request, started),
        signal,
        onProgress: request.progress
          ? (p) =>
            this.#answer(peer, {
              request_id: id,
              progress: { done: p.done, total: p.total },
            })
          : undefined,
      },
    );
    const elapsed_ms = this.clock.now() - started;
    if (outcome.ok) {
      return {
        request_id: id,
        success: true,
        data: outcome.result,
        error: null,
        processed_by: outcome.worker.id,
        elapsed_ms,
        attempts: outcome.attempts,
      };
    }
    const e = outcome.error;
    return failureAnswer(
      id,
      e.code === ErrorCode.TIMEOUT ? TIMEOUT_TEXT : e.message,
      e.code,
      {
        processed_by: outcome.worker?.id ?? null,
        elapsed_ms,
        attempts: outcome.attempts,
      },
    );
  }

  // ---- operator actions ----------------------------------------------------------------------

  /** Runs a server action locally, as the console's `send server …` or a test would. */
  async runAction(action: string, params: unknown): Promise<unknown> {
    const handler = Object.hasOwn(this.#actions, action)
      ? this.#actions[action]
      : undefined;
    if (!handler) throw new RangeError(`Unknown server action '${action}'`);
    return await handler(params, {
      signal: AbortSignal.timeout(this.#o.timeoutMs),
      requestId: "",
    });
  }

  /** Sends `action` to one worker (console `send`); resolves with its outcome. */
  send(
    clientId: string,
    action: string,
    params: unknown = {},
  ): Promise<Outcome> {
    return this.dispatcher.submit(action, params, {
      deadline: this.clock.now() + this.#o.timeoutMs,
      only: clientId,
    });
  }

  /** Sends a notification to every worker; returns how many got it. */
  broadcast(message: string): number {
    return this.sendMessage(MessageType.NOTIFICATION, { message });
  }

  /**
   * Sends an envelope of any type (a custom one too) to one worker, or to all when `clientId`
   * is omitted; returns how many got it.
   */
  sendMessage(type: string, data: unknown, clientId?: string): number {
    const frame = encodeEnvelope(type, data);
    let n = 0;
    for (const [id, socket] of this.#sockets) {
      if (clientId !== undefined && id !== clientId) continue;
      if (socket.readyState === WebSocket.OPEN) {
        socket.send(frame);
        n++;
      }
    }
    return n;
  }

  /** Judges worker health from heartbeat silence; runs on its own every `sweepIntervalMs`. */
  sweep(): void {
    this.dispatcher.expireQueued();
    const now = this.clock.now();
    for (const worker of this.dispatcher.registry.all()) {
      if (!worker.heartbeats) continue;
      const silent = now - worker.lastSeen;
      if (silent > this.#o.cleanupIntervalMs) {
        log.warn("Dropping worker {id}: no heartbeat for {s} s", {
          id: worker.id,
          s: Math.round(silent / 1000),
        });
        this.#sockets.get(worker.id)?.close(4000, "Heartbeat timeout");
        this.#sockets.delete(worker.id);
        this.dispatcher.workerLost(worker, "heartbeat timeout");
      } else if (silent > this.#o.heartbeatTimeoutMs && !worker.unhealthy) {
        log.warn(
          "Worker {id} missed its heartbeats: no new work until it is heard from",
          {
            id: worker.id,
          },
        );
        worker.unhealthy = true;
      }
    }
  }

  /**
   * Stops taking requests (they get a clear error), lets in-flight work finish for up to
   * `graceMs`, then closes everything.
   */
  async drain(graceMs: number): Promise<void> {
    this.#draining = true;
    if (this.#active > 0) {
      this.#idle = Promise.withResolvers();
      const timer = setTimeout(() => this.#idle?.resolve(), graceMs);
      await this.#idle.promise;
      clearTimeout(timer);
    }
    await this.close();
  }

  /** Fails what is pending, closes every socket and stops timers. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#draining = true;
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
    this.dispatcher.failAll(
      new SwitchyardError(ErrorCode.SHUTTING_DOWN, "Server is shutting down"),
    );
    this.dispatcher.close();
    // The answers failAll() settled are written from promise callbacks: let them go out before
    // the close frames, so requesters read "Server is shutting down" rather than a dropped line.
    await new Promise((resolve) => setTimeout(resolve, 0));
    const closing: Promise<void>[] = [];
    const closeSocket = (socket: WebSocket) => {
      if (socket.readyState === WebSocket.CLOSED) return;
      closing.push(
        new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, 1000);
          socket.addEventListener("close", () => {
            clearTimeout(timer);
            resolve();
          }, { once: true });
        }),
      );
      try {
        socket.close(1001, "Server shutting down");
      } catch {
        // Already closing.
      }
    };
    for (const socket of this.#sockets.values()) closeSocket(socket);
    for (const peer of this.#requesters) closeSocket(peer.socket);
    await Promise.all(closing);
  }
}
