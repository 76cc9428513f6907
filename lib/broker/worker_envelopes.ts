/**
 * What the worker port does with each envelope a worker sends: registration, heartbeats,
 * answers and progress for the dispatcher, a goodbye, the worker's own requests for server
 * actions, and custom message types.
 *
 * @module
 */

import { ErrorCode, ProtocolError, SwitchyardError } from "../errors.ts";
import { logger } from "../log.ts";
import {
  BATCH_ENVELOPES,
  encodeEnvelope,
  type Envelope,
  MessageType,
  readRequestData,
  readResponseData,
} from "../protocol.ts";
import { readUpstreamStatus } from "../upstream_status.ts";
import type { Peer } from "./dispatcher.ts";
import type { BrokerCore, MessageHandler, ResolvedOptions } from "./options.ts";
import type { WorkerRegistration } from "./registry.ts";
import type { WorkerFrameContext } from "./worker_frames.ts";
import type { WorkerLink } from "./worker_link.ts";

const log = logger("broker");

/** The worker port's envelope handling; see the module doc. */
export class WorkerEnvelopes implements WorkerFrameContext {
  #core: BrokerCore;
  #messageHandlers: Record<string, MessageHandler>;

  /** Envelope handling for `core`, with handlers for custom message types. */
  constructor(
    core: BrokerCore,
    messageHandlers: Record<string, MessageHandler> | undefined,
  ) {
    this.#core = core;
    this.#messageHandlers = { ...messageHandlers };
  }

  /** The broker's options. */
  get options(): ResolvedOptions {
    return this.#core.options;
  }

  /** The requester port, once bound. */
  get requesterPort(): number | undefined {
    return this.#core.ports.requester;
  }

  /** Handles one envelope of `worker`; throws what is wrong with it. */
  onEnvelope(worker: Peer, link: WorkerLink, envelope: Envelope): void {
    const data = envelope.data as Record<string, unknown>;
    switch (envelope.type) {
      case MessageType.CONNECT:
        return this.#register(worker, link, data);
      case MessageType.HEARTBEAT:
        return this.#heartbeat(worker, link, data);
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
          link.error(
            ErrorCode.UNKNOWN_REQUEST,
            `Unknown request id '${response.request_id}': no request of yours waits for it`,
            envelope.msg_id,
          );
        }
        return;
      }
      case MessageType.REQUEST:
        return void this.#serveWorkerRequest(worker, link, envelope);
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

  #register(
    worker: Peer,
    link: WorkerLink,
    data: Record<string, unknown>,
  ): void {
    if (typeof data !== "object" || data === null || Array.isArray(data)) {
      throw new ProtocolError(
        ErrorCode.INVALID_FIELD,
        "Field 'data' of connect must be an object",
      );
    }
    // Its `non_retriable` stays with it (Peer.nonRetriable): it covers its own requests.
    worker.register(data as WorkerRegistration, 1024);
    if (data[BATCH_ENVELOPES] === true) link.batch();
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

  #heartbeat(
    worker: Peer,
    link: WorkerLink,
    data: Record<string, unknown>,
  ): void {
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
    link.trySend(
      encodeEnvelope(MessageType.HEARTBEAT, {
        status: "alive",
        server_time: this.#core.clock.now() / 1000,
      }),
    );
    if (wasUnhealthy) {
      log.info("Worker {id} is healthy again", { id: worker.id });
      this.#core.dispatcher.pump();
    }
  }

  /** A worker's own request, for a server action. */
  async #serveWorkerRequest(
    worker: Peer,
    link: WorkerLink,
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
    link.trySend(
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

/** The random id a worker sends in `host.instance`, if it sends one. */
function instanceOf(worker: Peer): string | undefined {
  const instance = (worker.host as { instance?: unknown } | null)?.instance;
  return typeof instance === "string" && instance !== "" ? instance : undefined;
}
