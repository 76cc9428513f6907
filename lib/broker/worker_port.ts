/**
 * The worker port: accepts worker connections, reads their frames (registration, heartbeats,
 * answers, progress, their own requests for server actions) and keeps one socket per worker.
 *
 * @module
 */

import { upgradeWebSocket } from "../transport/_websocket.ts";
import { overBytes, utf8Bytes } from "../transport/_frame_size.ts";
import { Peer } from "./dispatcher.ts";
import { ErrorCode, ProtocolError, SwitchyardError } from "../errors.ts";
import { shortId } from "../_id.ts";
import { logger } from "../log.ts";
import {
  BATCH_ENVELOPES,
  encodeEnvelope,
  type Envelope,
  EnvelopeBatcher,
  MessageType,
  parseJson,
  readEnvelope,
  readRequestData,
  readResponseData,
} from "../protocol.ts";
import type { WorkerRegistration } from "./registry.ts";
import { readUpstreamStatus } from "../upstream_status.ts";
import { plainHttp, refuseUpgrade, remoteAddress } from "./http.ts";
import { type BrokerCore, type MessageHandler, VERSION } from "./options.ts";

const log = logger("broker");

/** The worker port's handling; see the module doc. */
export class WorkerPort {
  #core: BrokerCore;
  #token?: string;
  #messageHandlers: Record<string, MessageHandler>;
  #sockets = new Map<string, WebSocket>();
  /** Workers that read several envelopes per frame, by client id (see `BATCH_ENVELOPES`). */
  #batchers = new Map<string, EnvelopeBatcher>();

  constructor(
    core: BrokerCore,
    options: {
      token?: string;
      messageHandlers?: Record<string, MessageHandler>;
    },
  ) {
    this.#core = core;
    this.#token = options.token;
    this.#messageHandlers = { ...options.messageHandlers };
    this.handle = this.handle.bind(this);
  }

  /** The open worker sockets, by client id. */
  get sockets(): ReadonlyMap<string, WebSocket> {
    return this.#sockets;
  }

  /** The worker port's request handler. */
  handle(
    req: Request,
    info?: Deno.ServeHandlerInfo,
  ): Response | Promise<Response> {
    const core = this.#core;
    const plain = plainHttp(core, req, "worker");
    if (plain) return plain;
    const refused = refuseUpgrade(
      core,
      req,
      this.#token,
      "worker",
      this.#sockets.size,
      remoteAddress(info),
    );
    if (refused) return refused;
    // Read before the upgrade: the request object is spent afterwards.
    const address = remoteAddress(info);
    const { socket, response } = upgradeWebSocket(req, {
      idleTimeout: core.options.idleTimeoutSeconds,
    });
    let id = shortId();
    // The registry holds the workers of other servers too, in a cluster.
    while (this.#sockets.has(id) || core.dispatcher.registry.get(id)) {
      id = shortId();
    }
    const worker = new Peer(id, address, (frame) => {
      const batcher = this.#batchers.get(id);
      if (batcher) {
        this.#checkReading(worker, socket);
        batcher.push(frame);
      } else this.#send(worker, socket, frame);
    }, {
      clock: core.clock,
      defaultConcurrency: core.options.defaultConcurrency,
    });
    socket.onopen = () => {
      this.#sockets.set(id, socket);
      core.metrics.accepted("worker");
      core.metrics.changed();
      core.dispatcher.registry.add(worker);
      socket.send(encodeEnvelope(MessageType.CONNECT, {
        client_id: id,
        status: "connected",
        server_version: VERSION,
        heartbeat_interval: core.options.heartbeatIntervalMs / 1000,
        max_frame_bytes: core.options.maxWorkerFrameBytes,
        [BATCH_ENVELOPES]: true,
        // Additive: lets a requester client that dialled this port by mistake say so.
        port: "worker",
        requester_port: core.ports.requester ?? null,
      }));
      log.info("Worker {id} connected from {address}", {
        id,
        address: worker.address,
      });
      core.dispatcher.pump();
    };
    socket.onmessage = (event) =>
      this.#onWorkerFrame(worker, socket, event.data);
    let gone = false;
    socket.onclose = (event) => {
      // Deno can report one close twice (the idle timeout giving up, then the socket ending).
      if (gone) return;
      gone = true;
      this.#sockets.delete(id);
      this.#batchers.delete(id);
      // A worker that said goodbye sent `disconnect` or closed with 1000, or the server is the
      // one closing. Anything else is a loss an operator wants to see: no close frame at all (a
      // crash, a kill, a cable; Deno reports 0 or 1005, RFC 6455 calls it 1006), or the idle
      // timeout closing a peer that stopped answering pings (1001).
      const graceful = worker.draining || event.code === 1000 || core.closed;
      const fields = {
        id,
        name: worker.name,
        code: event.code === 0 || event.code === 1005 ? 1006 : event.code,
      };
      if (graceful) {
        log.info("Worker {id} ({name}) disconnected: code {code}", fields);
      } else {
        log.warn(
          "Worker {id} ({name}) lost: the connection ended without a goodbye (code {code})",
          fields,
        );
      }
      core.dispatcher.workerLost(
        worker,
        `connection closed (code ${event.code})`,
      );
      core.metrics.changed();
    };
    socket.onerror = () => {};
    return response;
  }

  /**
   * Sends to a worker unless it stopped reading: past `maxBufferedBytes` unread, the worker is
   * dropped as a requester would be, so that it cannot make the server hold its frames.
   */
  #send(worker: Peer, socket: WebSocket, frame: string): void {
    this.#checkReading(worker, socket);
    socket.send(frame);
  }

  /** Throws (and drops the worker) when its socket is closed or its unread bytes are too many. */
  #checkReading(worker: Peer, socket: WebSocket): void {
    if (socket.readyState !== WebSocket.OPEN) {
      throw new Error("Worker socket is not open");
    }
    const limit = this.#core.options.maxBufferedBytes;
    if (socket.bufferedAmount > limit) {
      log.warn("Dropping worker {id}: {bytes} bytes unread (limit {limit})", {
        id: worker.id,
        bytes: socket.bufferedAmount,
        limit,
      });
      socket.close(1008, "Too slow: frames are not being read");
      // The close frame waits behind the unread bytes: forget the worker now.
      this.#sockets.delete(worker.id);
      queueMicrotask(() =>
        this.#core.dispatcher.workerLost(worker, "frames are not being read")
      );
      throw new Error(`Worker ${worker.id} does not read its frames`);
    }
  }

  /** Closes a worker's socket and forgets it (the sweep drops silent workers this way). */
  disconnect(id: string, code: number, reason: string): void {
    this.#batchers.get(id)?.flush();
    this.#batchers.delete(id);
    this.#sockets.get(id)?.close(code, reason);
    this.#sockets.delete(id);
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

  #workerError(
    worker: Peer,
    socket: WebSocket,
    code: string,
    error: string,
    msgId?: string,
  ): void {
    this.#trySend(
      worker,
      socket,
      encodeEnvelope(MessageType.ERROR, { error, code, msg_id: msgId ?? null }),
    );
  }

  /** {@linkcode #send} for replies: a worker that is gone or dropped just misses them. */
  #trySend(worker: Peer, socket: WebSocket, frame: string): void {
    try {
      this.#send(worker, socket, frame);
    } catch {
      // Closed or dropped for not reading; said in the log once already.
    }
  }

  #onWorkerFrame(worker: Peer, socket: WebSocket, raw: unknown): void {
    const core = this.#core;
    worker.lastSeen = core.clock.now();
    if (worker.silent) {
      worker.silent = false;
      core.dispatcher.pump();
    }
    if (typeof raw !== "string") {
      log.warn("Worker {id} sent a binary frame", { id: worker.id });
      return this.#workerError(
        worker,
        socket,
        ErrorCode.BINARY_FRAME,
        "Binary frames are not supported: send JSON text",
      );
    }
    if (overBytes(raw, core.options.maxWorkerFrameBytes)) {
      const size = utf8Bytes(raw);
      log.warn("Worker {id} sent a frame of {size} bytes", {
        id: worker.id,
        size,
      });
      return this.#workerError(
        worker,
        socket,
        ErrorCode.FRAME_TOO_LARGE,
        `Frame too large: ${size} bytes (limit ${core.options.maxWorkerFrameBytes})`,
      );
    }
    let value: unknown;
    try {
      value = parseJson(raw);
    } catch (error) {
      return this.#badFrame(worker, socket, error as ProtocolError);
    }
    // Several envelopes in one frame, from a worker that registered with BATCH_ENVELOPES; from
    // any other worker an array is the bad frame it always was.
    if (Array.isArray(value) && this.#batchers.has(worker.id)) {
      for (const element of value) this.#onWorkerValue(worker, socket, element);
    } else this.#onWorkerValue(worker, socket, value);
  }

  #badFrame(worker: Peer, socket: WebSocket, error: ProtocolError): void {
    log.warn("Bad frame from worker {id}: {message}", {
      id: worker.id,
      message: error.message,
    });
    this.#workerError(worker, socket, error.code, error.message);
  }

  #onWorkerValue(worker: Peer, socket: WebSocket, value: unknown): void {
    let envelope: Envelope;
    try {
      envelope = readEnvelope(value);
    } catch (error) {
      if (isRequesterFrame(value)) return this.#wrongPort(worker, socket);
      return this.#badFrame(worker, socket, error as ProtocolError);
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
      this.#workerError(worker, socket, e.code, e.message, envelope.msg_id);
    }
  }

  /**
   * A requester frame on the worker port: say where it belongs. The connection stays, as for
   * any bad frame; a Switchyard requester client fails its requests on its own.
   */
  #wrongPort(worker: Peer, socket: WebSocket): void {
    const port = this.#core.ports.requester;
    const error =
      `This is the worker port: requesters connect to the requester port${
        port === undefined ? " (8766 by default)" : ` ${port}`
      }`;
    log.warn("A requester at {address} connected to the worker port", {
      address: worker.address,
    });
    this.#workerError(worker, socket, ErrorCode.WRONG_PORT, error);
  }

  /**
   * A name another worker already has gets a suffix (`name-2`, `name-3`…), so that `list`, logs
   * and metrics tell them apart; the worker is told nothing and keeps working. The same worker
   * back on a new connection (its `host.instance` matches) keeps its name: its old entry here is
   * dropped, and another server's is about to be written off.
   */
  #uniqueName(worker: Peer): void {
    const instance = instanceOf(worker);
    const taken = new Set<string>();
    for (const w of this.#core.dispatcher.registry.all()) {
      if (w === worker) continue;
      if (instance !== undefined && instanceOf(w) === instance) {
        if (!w.remote) {
          this.#core.dispatcher.workerLost(w, "it connected again");
        }
        continue;
      }
      taken.add(w.name);
    }
    if (!taken.has(worker.name)) return;
    const asked = worker.name;
    let n = 2;
    while (taken.has(`${asked}-${n}`)) n++;
    worker.name = `${asked}-${n}`;
    log.warn(
      "Worker {id} asked for the name {asked}, which another worker has: it is {name} here " +
        "(give each worker its own --name)",
      { id: worker.id, asked, name: worker.name },
    );
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
        // Its `non_retriable` stays with it (Peer.nonRetriable): it covers its own requests.
        worker.register(data as WorkerRegistration, 1024);
        if (data[BATCH_ENVELOPES] === true && !this.#batchers.has(worker.id)) {
          this.#batchers.set(
            worker.id,
            new EnvelopeBatcher((frame) => socket.send(frame)),
          );
        }
        this.#uniqueName(worker);
        log.info(
          "Worker {id} registered as {name} (weight {weight}, concurrency {max})",
          {
            id: worker.id,
            name: worker.name,
            weight: worker.weight,
            max: worker.maxConcurrency,
          },
        );
        this.#core.dispatcher.pump();
        this.#core.metrics.changed();
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
        if (data && data.upstream !== undefined) {
          worker.upstream = readUpstreamStatus(data.upstream);
        }
        this.#trySend(
          worker,
          socket,
          encodeEnvelope(MessageType.HEARTBEAT, {
            status: "alive",
            server_time: this.#core.clock.now() / 1000,
          }),
        );
        if (wasUnhealthy) {
          log.info("Worker {id} is healthy again", { id: worker.id });
          this.#core.dispatcher.pump();
        }
        return;
      }
      case MessageType.RESPONSE: {
        const response = readResponseData(envelope.data);
        if (!this.#core.dispatcher.complete(worker, response)) {
          log.warn(
            "Worker {id} answered {msgId}, a request it does not hold: rejected",
            {
              id: worker.id,
              msgId: response.request_id,
            },
          );
          this.#workerError(
            worker,
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
          this.#core.dispatcher.progress(worker, data.request_id, {
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
      const handler = Object.hasOwn(this.#core.actions, action)
        ? this.#core.actions[action]
        : undefined;
      if (!handler) {
        reply = {
          success: false,
          result: null,
          error: `Unknown action '${action}': the server offers ${
            Object.keys(this.#core.actions).join(", ")
          }`,
          error_code: ErrorCode.UNKNOWN_ACTION,
        };
      } else {
        const result = await handler(params, {
          signal: AbortSignal.timeout(this.#core.options.timeoutMs),
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
    this.#trySend(
      worker,
      socket,
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
}

/** Whether `value` is a requester's frame (`command`, no `type`), sent to the worker port. */
function isRequesterFrame(value: unknown): boolean {
  return typeof value === "object" && value !== null &&
    typeof (value as { command?: unknown }).command === "string" &&
    !("type" in value);
}

/** The random id a worker sends in `host.instance`, if it sends one. */
function instanceOf(worker: Peer): string | undefined {
  const instance = (worker.host as { instance?: unknown } | null)?.instance;
  return typeof instance === "string" && instance !== "" ? instance : undefined;
}
