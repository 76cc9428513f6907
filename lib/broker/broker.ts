/**
 * The broker: handlers for the worker port and the requester port, wired to a dispatcher. It
 * binds no port itself (the entry program or a test does), so most behaviour is testable on
 * port 0.
 *
 * Its parts, one file each: `broker/worker_port.ts` (worker connections and their frames),
 * `broker/requester_port.ts` (requester connections, requests and answers), `broker/sweep.ts`
 * (timed health judgement), `broker/http.ts` (plain HTTP and upgrade checks) and
 * `broker/options.ts` (options, stats and the core the parts share).
 *
 * @module
 */

import { AuthLimiter } from "./auth.ts";
import type { ActionHandler } from "../action.ts";
import { Dispatcher, type Outcome } from "./dispatcher.ts";
import { ErrorCode, SwitchyardError } from "../errors.ts";
import { MessageType } from "../protocol.ts";
import { type Clock, systemClock, type WorkerInfo } from "./registry.ts";
import { serverActions } from "./server_actions.ts";
import { logger } from "../log.ts";
import { Metrics } from "./metrics.ts";
import { BATCH_COMMAND } from "./batch.ts";
import { RequesterPort } from "./requester_port.ts";
import { WorkerPort } from "./worker_port.ts";
import { sweep } from "./sweep.ts";
import type { ClusterLink, ClusterOptions } from "../cluster/link.ts";
import {
  type BrokerCore,
  type BrokerOptions,
  type BrokerStats,
  type ResolvedOptions,
  resolveOptions,
} from "./options.ts";

export { VERSION } from "./options.ts";
import { VERSION } from "./options.ts";
export type { BrokerOptions, BrokerStats, MessageHandler } from "./options.ts";

/** The broker; see the module doc. */
export class Broker {
  /** Places requests on workers. */
  readonly dispatcher: Dispatcher;
  /** The clock deadlines and health are judged by. */
  readonly clock: Clock;
  /** Live counters: `GET /metrics` on both ports, and the dashboard. */
  readonly metrics: Metrics;
  #o: ResolvedOptions;
  #actions: Record<string, ActionHandler>;
  #core: BrokerCore;
  #workerPort: WorkerPort;
  #requesterPort: RequesterPort;
  #startedAt: number;
  #draining = false;
  #closed = false;
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #ports: { worker?: number; requester?: number } = {};
  #cluster: ClusterLink | undefined;
  #joining: Promise<ClusterLink> | undefined;

  /** A broker with `options`; it binds no port (see `startServer`). */
  constructor(options: BrokerOptions = {}) {
    this.clock = options.clock ?? systemClock;
    this.#o = resolveOptions(options);
    this.dispatcher = new Dispatcher({
      strategy: options.strategy,
      maxQueue: this.#o.maxQueue,
      maxAttempts: this.#o.maxAttempts,
      queueTimeoutMs: options.queueTimeoutMs,
      noWorkerGraceMs: this.#o.noWorkerGraceMs,
      nonRetriableActions: options.nonRetriableActions,
      clock: this.clock,
      random: options.random,
    });
    this.#actions = {
      ...serverActions(() => this.workers()),
      ...options.actions,
    };
    this.metrics = new Metrics({
      clock: this.clock,
      version: VERSION,
      // A command earns its own series when the server or some worker offers it by name.
      isKnownCommand: (command) =>
        command === BATCH_COMMAND || Object.hasOwn(this.#actions, command) ||
        this.dispatcher.registry.all().some((w) =>
          w.actions?.has(command) === true
        ),
    });
    // What the ports and the sweep see of the broker.
    // deno-lint-ignore no-this-alias
    const broker = this;
    const core: BrokerCore = {
      options: this.#o,
      clock: this.clock,
      dispatcher: this.dispatcher,
      actions: this.#actions,
      marketFront: options.marketFront,
      get draining() {
        return broker.#draining;
      },
      get closed() {
        return broker.#closed;
      },
      ports: this.#ports,
      stats: () => this.stats(),
      metrics: this.metrics,
      auth: new AuthLimiter({
        maxFailures: this.#o.maxAuthFailures,
        windowMs: this.#o.authWindowMs,
        logIntervalMs: this.#o.authLogIntervalMs,
        clock: this.clock,
      }),
    };
    this.#core = core;
    this.#workerPort = new WorkerPort(core, {
      token: options.workerToken || undefined,
      messageHandlers: options.messageHandlers,
    });
    this.#requesterPort = new RequesterPort(core, {
      token: options.requesterToken || undefined,
    });
    this.#startedAt = this.clock.now();
    if (this.#o.sweepIntervalMs > 0) {
      this.#sweeper = setInterval(
        () => this.sweep(),
        this.#o.sweepIntervalMs,
      );
    }
    this.handleWorker = this.#workerPort.handle;
    this.handleRequester = this.#requesterPort.handle;
    const registry = this.dispatcher.registry;
    const requesters = this.#requesterPort;
    this.metrics.attach({
      workers: () => registry.all(),
      queued: () => this.dispatcher.queued,
      inFlight: () => requesters.active,
      connections: (port) =>
        port === "worker" ? registry.size : requesters.connected,
    });
  }

  /** The worker port's request handler. */
  readonly handleWorker: (
    req: Request,
    info?: Deno.ServeHandlerInfo,
  ) => Response | Promise<Response>;

  /** The requester port's request handler. */
  readonly handleRequester: (
    req: Request,
    info?: Deno.ServeHandlerInfo,
  ) => Response | Promise<Response>;

  /**
   * Tells the broker which ports its handlers were bound to, so that a requester on the worker
   * port, or a worker on the requester port, is told the right one. `startServer` calls it.
   */
  listening(ports: { worker?: number; requester?: number }): void {
    Object.assign(this.#ports, ports);
  }

  /** The connected workers (in a cluster: of every server), as `get_client_info` shows them. */
  workers(): WorkerInfo[] {
    const cluster = this.#cluster;
    if (!cluster) return this.dispatcher.registry.all().map((w) => w.info());
    return this.dispatcher.registry.all().map((w) =>
      cluster.isLocal(w)
        ? { ...w.info(), server: cluster.serverName }
        : w.info()
    );
  }

  /**
   * Joins a cluster over NATS (see `docs/cluster.md`): this server's workers serve the other
   * servers' requests and theirs serve this server's. Resolves with the link once it is set up;
   * it connects, and reconnects, in the background.
   */
  async joinCluster(options: ClusterOptions): Promise<ClusterLink> {
    if (this.#joining) {
      throw new Error("This broker has joined a cluster already");
    }
    this.#joining = (async () => {
      // Loaded only here, so that a server without a cluster never loads the NATS client.
      const { ClusterLink } = await import("../cluster/link.ts");
      const link = new ClusterLink(
        this.#core,
        options,
        () => this.#requesterPort.connected,
        (type, data, clientId) =>
          this.#workerPort.sendMessage(type, data, clientId),
      );
      this.#cluster = link;
      link.start().catch((error) =>
        logger("cluster").error("Cannot join the cluster: {error}", { error })
      );
      return link;
    })();
    return await this.#joining;
  }

  /** The cluster link, once {@linkcode Broker.joinCluster} has set it up. */
  get cluster(): ClusterLink | undefined {
    return this.#cluster;
  }

  /** Live counters for `/health`, `stats` and tests. */
  stats(): BrokerStats {
    const requesters = this.#requesterPort;
    return {
      status: this.#draining ? "draining" : "ok",
      workers: this.dispatcher.registry.size,
      healthy_workers:
        this.dispatcher.registry.all().filter((w) => w.healthy).length,
      benched_workers:
        this.dispatcher.registry.all().filter((w) => w.timedOutAt !== 0).length,
      requesters: requesters.connected,
      in_flight: requesters.active,
      queued: this.dispatcher.queued,
      answered: requesters.answered,
      failed: requesters.failed,
      uptime_s: Math.round((this.clock.now() - this.#startedAt) / 1000),
      ...(this.#cluster ? { cluster: this.#cluster.status() } : {}),
    };
  }

  // ---- operator actions ----------------------------------------------------------------------

  /** Runs a server action locally, as the console's `run` or a test would. */
  async runAction(action: string, params: unknown): Promise<unknown> {
    const handler = Object.hasOwn(this.#actions, action)
      ? this.#actions[action]
      : undefined;
    if (!handler) {
      throw new RangeError(
        `Unknown server action '${action}': the server offers ${
          Object.keys(this.#actions).join(", ")
        }`,
      );
    }
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

  /**
   * Sends a notification to every worker (in a cluster: of every server); returns how many got
   * it (workers of other servers: how many it was sent towards).
   */
  broadcast(message: string): number {
    return this.sendMessage(MessageType.NOTIFICATION, { message });
  }

  /**
   * Sends an envelope of any type (a custom one too) to one worker, or to all when `clientId`
   * is omitted (in a cluster: a worker of any server); returns how many got it (workers of
   * other servers: how many it was sent towards).
   */
  sendMessage(type: string, data: unknown, clientId?: string): number {
    const local = this.#workerPort.sendMessage(type, data, clientId);
    if (!this.#cluster || (clientId !== undefined && local > 0)) return local;
    return local + this.#cluster.sendMessage(type, data, clientId);
  }

  /** Judges worker health from heartbeat silence; runs on its own every `sweepIntervalMs`. */
  sweep(): void {
    sweep(
      this.#core,
      (id, code, reason) => this.#workerPort.disconnect(id, code, reason),
    );
  }

  /**
   * Stops taking requests (they get a clear error), lets in-flight work finish for up to
   * `graceMs`, then closes everything.
   */
  async drain(graceMs: number): Promise<void> {
    this.#draining = true;
    await this.#requesterPort.settled(graceMs);
    await this.close();
  }

  /** Fails what is pending, closes every socket and stops timers. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#draining = true;
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
    this.#core.auth.flush();
    this.#requesterPort.closeSite();
    this.dispatcher.failAll(
      new SwitchyardError(ErrorCode.SHUTTING_DOWN, "Server is shutting down"),
    );
    this.dispatcher.close();
    if (this.#joining) await (await this.#joining).close();
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
    for (const socket of this.#workerPort.sockets()) closeSocket(socket);
    for (const socket of this.#requesterPort.sockets()) closeSocket(socket);
    await Promise.all(closing);
  }
}
