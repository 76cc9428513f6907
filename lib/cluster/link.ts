/**
 * The cluster link: joins this server to the other servers of one cluster over NATS.
 *
 * It announces this server's workers, turns every other server's workers into
 * {@linkcode RemotePeer}s in this server's registry (so the one dispatcher and balancer place
 * requests over the whole cluster), carries requests to the worker's server and the answers back,
 * and runs the requests other servers send to this server's workers. The subjects and messages
 * are in `wire.ts`; `docs/cluster.md` tells the guarantees.
 *
 * @module
 */

import {
  credsAuthenticator,
  type Msg,
  type NatsConnection,
  type NodeConnectionOptions,
} from "npm:@nats-io/transport-node@3.4.0";
import { connectNats } from "./nats_connect.ts";
import { setImmediate } from "node:timers";
import { Cancellation } from "../_cancel.ts";
import { type Peer, RecentIds } from "../broker/dispatcher.ts";
import type { WorkerLoad } from "../broker/balancer.ts";
import { ErrorCode } from "../errors.ts";
import { shortId } from "../_id.ts";
import { logger } from "../log.ts";
import {
  decodeEnvelope,
  type Envelope,
  MessageType,
  readRequestData,
} from "../protocol.ts";
import type { BrokerCore } from "../broker/options.ts";
import { RemotePeer } from "./remote_peer.ts";
import type { ClusterServer, ClusterStatus } from "./status.ts";
import {
  type ClusterMessage,
  type RelayAnswer,
  type RelayProgress,
  type ServerState,
  subjectPrefix,
  validClusterName,
  type WorkerState,
} from "./wire.ts";

const log = logger("cluster");

/** How a server joins a cluster. */
export interface ClusterOptions {
  /** NATS URLs, such as `nats://h1:4222`. */
  servers: string[];
  /** Servers of one name form one broker. @default "switchyard" */
  name?: string;
  /** This server's name in listings. @default a random id */
  serverName?: string;
  /** The URLs this server's ports are reachable at, shown to operators. */
  urls?: { worker?: string; requester?: string };
  /** NATS token. */
  token?: string;
  /** NATS user (with `password`). */
  user?: string;
  /** NATS password (with `user`). */
  password?: string;
  /** Text of a NATS credentials file (JWT and NKey seed). */
  credentials?: string;
  /** PEM text of a CA to trust for `tls://` NATS servers. */
  tlsCa?: string;
  /** PEM client certificate and key, for NATS servers that verify clients. */
  tlsCert?: string;
  /** PEM private key of `tlsCert`. */
  tlsKey?: string;
  /** How often this server announces its workers, in ms. @default 250 */
  stateIntervalMs?: number;
  /** Silence after which a server counts as gone, in ms. @default 1500 */
  deadAfterMs?: number;
  /**
   * How long a request the worker's server has not acknowledged may be missing from its ledger
   * before it counts as lost, in ms; one it has acknowledged counts as lost at once. @default 5000
   */
  lostAfterMs?: number;
}

interface KnownServer {
  id: string;
  name: string;
  lastHeard: number;
  requesters: number;
  urls: { worker?: string; requester?: string };
  workers: Map<string, RemotePeer>;
}

interface Relayed {
  origin: string;
  worker: string;
  msgId: string;
  cancel: Cancellation;
}

/** Sends an envelope to this server's workers (all, or one); returns how many got it. */
export type LocalDelivery = (
  type: string,
  data: unknown,
  clientId?: string,
) => number;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The cluster link; see the module doc. */
export class ClusterLink {
  /** This server's id in the cluster. */
  readonly id: string = shortId(10);
  /** The cluster name. */
  readonly name: string;
  /** This server's name in listings. */
  readonly serverName: string;
  #core: BrokerCore;
  #options: ClusterOptions;
  #prefix: string;
  #stateIntervalMs: number;
  #deadAfterMs: number;
  #lostAfterMs: number;
  #nc: NatsConnection | undefined;
  #nats: ClusterStatus["nats"] = "connecting";
  #servers = new Map<string, KnownServer>();
  #gone = new RecentIds(4096);
  #relayed = new Map<string, Relayed>();
  #timer: ReturnType<typeof setInterval> | undefined;
  #closed = false;
  #started: Promise<void> | undefined;
  #connecting: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  /** Why the last attempt to reach NATS failed, until one succeeds. */
  #error: string | undefined;
  #background: Promise<void>[] = [];
  /** Subjects and payloads to publish at the end of this turn, alternating. */
  #outbox: string[] = [];
  #lastTick = 0;
  /** The last sequence number of a request sent to each server. */
  #seqTo = new Map<string, number>();
  /** The highest sequence number read from each origin server. */
  #seenFrom = new Map<string, number>();

  #requesters: () => number;
  #deliver: LocalDelivery;

  /**
   * A link for the broker whose parts `core` gives; `requesters` counts its requesters and
   * `deliver` hands another server's console messages to this server's workers.
   */
  constructor(
    core: BrokerCore,
    options: ClusterOptions,
    requesters: () => number = () => 0,
    deliver: LocalDelivery = () => 0,
  ) {
    const name = options.name ?? "switchyard";
    if (!validClusterName(name)) {
      throw new RangeError(
        `Invalid cluster name '${name}': use 1 to 64 letters, digits, '-' or '_'`,
      );
    }
    if (options.servers.length === 0) {
      throw new RangeError("A cluster needs at least one NATS URL");
    }
    this.#core = core;
    this.#requesters = requesters;
    this.#deliver = deliver;
    this.#options = options;
    this.name = name;
    this.serverName = options.serverName ?? this.id;
    this.#prefix = subjectPrefix(name);
    this.#stateIntervalMs = options.stateIntervalMs ?? 250;
    this.#deadAfterMs = options.deadAfterMs ?? 1500;
    this.#lostAfterMs = options.lostAfterMs ?? 5000;
  }

  /** Connects (retrying until it works) and starts announcing; resolves once connected. */
  start(): Promise<void> {
    this.#started ??= this.#start();
    return this.#started;
  }

  async #start(): Promise<void> {
    const o = this.#options;
    const options: NodeConnectionOptions = {
      servers: o.servers,
      name: `switchyard ${this.name} ${this.serverName}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      reconnectJitter: 100,
      // The first connection is retried here rather than inside the client, so that close()
      // can stop the retries and the reason (refused, unauthorized) can be shown.
      timeout: 2000,
      // A NATS node that vanishes without closing TCP is noticed within ~6 s.
      pingInterval: 2000,
      maxPingOut: 3,
      // Every subject this server publishes on, it either ignores (its own state and
      // broadcasts) or does not subscribe to (other servers' direct subjects): echoes would only
      // cost reads.
      noEcho: true,
    };
    if (o.token) options.token = o.token;
    if (o.user) {
      options.user = o.user;
      options.pass = o.password;
    }
    if (o.credentials) {
      options.authenticator = credsAuthenticator(encoder.encode(o.credentials));
    }
    if (o.tlsCa || o.tlsCert) {
      options.tls = { ca: o.tlsCa, cert: o.tlsCert, key: o.tlsKey };
    }
    log.info("Joining cluster {name} through NATS {servers}", {
      name: this.name,
      servers: o.servers.join(","),
    });
    let nc: NatsConnection | undefined;
    let delay = 250;
    while (!this.#closed) {
      const attempt = connectNats(options);
      this.#connecting = attempt.then(() => {}, () => {});
      try {
        nc = await attempt;
        break;
      } catch (error) {
        const message = (error as Error).message;
        if (message !== this.#error) {
          log.warn("Cannot reach NATS ({servers}): {message}; retrying", {
            servers: o.servers.join(","),
            message,
          });
        }
        this.#error = message;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, delay);
          this.#wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        delay = Math.min(delay * 2, 5000);
      }
    }
    if (!nc) return;
    if (this.#closed) {
      await nc.close();
      return;
    }
    this.#error = undefined;
    this.#nc = nc;
    this.#nats = "connected";
    log.info("Joined cluster {name} as {server} (NATS {nats})", {
      name: this.name,
      server: this.serverName,
      nats: nc.getServer(),
    });
    nc.subscribe(`${this.#prefix}.state`, {
      callback: (error, msg) => {
        if (!error) this.#onState(msg);
      },
    });
    nc.subscribe(`${this.#prefix}.msg`, {
      callback: (error, msg) => {
        if (!error) this.#onMessage(msg);
      },
    });
    nc.subscribe(`${this.#prefix}.srv.${this.id}.*`, {
      callback: (error, msg) => {
        if (!error) this.#onDirect(msg);
      },
    });
    this.#background.push(this.#watch(nc));
    this.#lastTick = this.#core.clock.now();
    this.#timer = setInterval(() => this.#tick(), this.#stateIntervalMs);
    this.#announce();
  }

  async #watch(nc: NatsConnection): Promise<void> {
    for await (const status of nc.status()) {
      switch (status.type) {
        case "disconnect":
          // The client buffers what is published meanwhile and tries the other NATS URLs; if
          // the other servers stay silent past deadAfterMs, #tick() drops their workers and this
          // server goes on with its own.
          this.#nats = "disconnected";
          log.warn(
            "Lost NATS ({server}): reconnecting; local workers keep serving",
            { server: status.server },
          );
          break;
        case "reconnect": {
          this.#nats = "connected";
          // Buffered requests went out only now: the ledger check counts from here.
          const now = this.#core.clock.now();
          for (const server of this.#servers.values()) {
            for (const peer of server.workers.values()) {
              for (const sent of peer.sent.values()) sent.at = now;
            }
          }
          log.info("NATS is back ({server}): rejoined cluster {name}", {
            server: status.server,
            name: this.name,
          });
          this.#announce();
          break;
        }
        case "error":
          log.warn("NATS error: {error}", { error: status.error.message });
          break;
      }
    }
  }

  /** The link's state, for `/health` and `stats`. */
  status(): ClusterStatus {
    const now = this.#core.clock.now();
    const servers: ClusterServer[] = [{
      id: this.id,
      name: this.serverName,
      self: true,
      workers: this.#localWorkers().length,
      requesters: this.#requesters(),
      urls: this.#options.urls ?? {},
      last_heard_ms: 0,
    }];
    for (const s of this.#servers.values()) {
      servers.push({
        id: s.id,
        name: s.name,
        self: false,
        workers: s.workers.size,
        requesters: s.requesters,
        urls: s.urls,
        last_heard_ms: Math.max(0, now - s.lastHeard),
      });
    }
    return {
      name: this.name,
      server: this.serverName,
      server_id: this.id,
      nats: this.#closed ? "closed" : this.#nats,
      nats_server: this.#nats === "connected"
        ? this.#nc?.getServer() ?? null
        : null,
      servers,
      workers: this.#core.dispatcher.registry.all().map((w) => ({
        client_id: w.id,
        name: w.name,
        server: w instanceof RemotePeer ? w.serverName : this.serverName,
        healthy: w.healthy && !w.draining,
        in_flight: w.inFlight,
      })),
      ...(this.#error ? { nats_error: this.#error } : {}),
    };
  }

  /** Whether `worker` is attached to this server. */
  isLocal(worker: WorkerLoad): boolean {
    return !(worker instanceof RemotePeer);
  }

  /** Leaves the cluster: other servers move this server's requests elsewhere. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    this.#wake?.();
    await this.#connecting;
    await this.#started?.catch(() => {});
    for (const server of [...this.#servers.values()]) {
      this.#dropServer(server, "this server is shutting down");
    }
    for (const r of this.#relayed.values()) r.cancel.abort();
    this.#relayed.clear();
    this.#flush();
    const nc = this.#nc;
    this.#nc = undefined;
    if (nc) {
      try {
        // Said out loud, so the others move this server's requests now rather than after
        // deadAfterMs of silence.
        nc.publish(
          `${this.#prefix}.state`,
          JSON.stringify(
            {
              v: 1,
              id: this.id,
              name: this.serverName,
              at: this.#core.clock.now(),
              urls: {},
              requesters: 0,
              workers: [],
              ledger: {},
              leaving: true,
            } satisfies ServerState,
          ),
        );
        await nc.flush();
      } catch {
        // Closing anyway.
      }
      await nc.close();
    }
    await Promise.all(this.#background);
  }

  // ---- announcing ----------------------------------------------------------------------------

  #localWorkers(): Peer[] {
    return this.#core.dispatcher.registry.all().filter((w) =>
      !(w instanceof RemotePeer)
    );
  }

  #tick(): void {
    const now = this.#core.clock.now();
    // A tick that comes late means this process was stalled (CPU starved, a long GC): the
    // others' announcements may be waiting unread in the socket, so their silence is ours.
    const stalled = now - this.#lastTick - this.#stateIntervalMs;
    this.#lastTick = now;
    if (stalled > this.#stateIntervalMs) {
      for (const server of this.#servers.values()) server.lastHeard += stalled;
    }
    for (const server of [...this.#servers.values()]) {
      if (now - server.lastHeard > this.#deadAfterMs) {
        log.warn(
          "Server {name} ({id}) is silent for {ms} ms: its workers leave the pool",
          { name: server.name, id: server.id, ms: now - server.lastHeard },
        );
        this.#dropServer(server, "its server left the cluster");
      }
    }
    this.#announce();
  }

  #announce(): void {
    const nc = this.#nc;
    if (!nc || this.#nats !== "connected" || this.#closed) return;
    const byWorker = new Map<string, Record<string, number>>();
    const ledger: Record<string, string[]> = {};
    for (const r of this.#relayed.values()) {
      const by = byWorker.get(r.worker) ?? {};
      by[r.origin] = (by[r.origin] ?? 0) + 1;
      byWorker.set(r.worker, by);
      (ledger[r.origin] ??= []).push(r.msgId);
    }
    const workers: WorkerState[] = this.#localWorkers().map((w) => {
      const info = w.info();
      return {
        id: w.id,
        name: w.name,
        address: w.address,
        weight: w.weight,
        max: w.maxConcurrency,
        actions: info.actions,
        version: w.version,
        host: w.host,
        in_flight: w.inFlight,
        healthy: w.healthy,
        // A draining server takes no new work, relayed work included.
        draining: w.draining || this.#core.draining,
        registered: w.registered,
        blocked: w.blockedSources,
        latency_ms: info.latency_ms,
        served: w.served,
        failures: w.failures,
        connected_since: info.connected_since,
        last_seen: info.last_seen,
        by: byWorker.get(w.id) ?? {},
        non_retriable: [...w.nonRetriable],
      };
    });
    const state: ServerState = {
      v: 1,
      id: this.id,
      name: this.serverName,
      at: this.#core.clock.now(),
      urls: this.#options.urls ?? {},
      requesters: this.#requesters(),
      workers,
      non_retriable: [...this.#core.dispatcher.nonRetriable],
      ledger,
      seen: Object.fromEntries(this.#seenFrom),
    };
    try {
      // Whatever this turn answered goes out before the ledger that no longer lists it.
      this.#flush();
      nc.publish(`${this.#prefix}.state`, JSON.stringify(state));
    } catch (error) {
      log.debug("Announcing failed: {error}", { error });
    }
  }

  // ---- other servers' announcements ----------------------------------------------------------

  #onState(msg: Msg): void {
    let state: ServerState;
    try {
      state = JSON.parse(decoder.decode(msg.data));
    } catch {
      return log.warn("Ignored a malformed cluster state message");
    }
    if (state.v !== 1 || typeof state.id !== "string") return;
    if (state.id === this.id) return;
    if (state.leaving) {
      const leaving = this.#servers.get(state.id);
      if (leaving) {
        log.info("Server {name} ({id}) left the cluster", {
          name: leaving.name,
          id: leaving.id,
        });
        this.#dropServer(
          leaving,
          `its server ${leaving.name} left the cluster`,
        );
      }
      return;
    }
    const dispatcher = this.#core.dispatcher;
    const now = this.#core.clock.now();
    let server = this.#servers.get(state.id);
    if (!server) {
      server = {
        id: state.id,
        name: state.name,
        lastHeard: now,
        requesters: 0,
        urls: {},
        workers: new Map(),
      };
      this.#servers.set(state.id, server);
      log.info("Server {name} ({id}) is in the cluster", {
        name: state.name,
        id: state.id,
      });
    }
    server.lastHeard = now;
    server.requesters = state.requesters;
    // An action a worker of that server must not run twice must not run twice from here either.
    for (const action of state.non_retriable ?? []) {
      if (!dispatcher.nonRetriable.has(action)) {
        dispatcher.markNonRetriable(action);
      }
    }
    server.urls = state.urls ?? {};
    let added = false;
    const seen = new Set<string>();
    for (const w of state.workers) {
      seen.add(w.id);
      const known = server.workers.get(w.id);
      if (known) {
        known.update(w, this.id, state.name);
        continue;
      }
      const key = `${state.id}/${w.id}`;
      if (this.#gone.has(key)) continue;
      if (dispatcher.registry.get(w.id)) {
        log.warn(
          "Worker id {id} of server {name} clashes with one here: not used from this server",
          { id: w.id, name: state.name },
        );
        continue;
      }
      const peer = new RemotePeer(
        w,
        { id: state.id, name: state.name },
        (p, frame) => this.#relay(p, frame),
        this.#core.clock,
      );
      peer.update(w, this.id, state.name);
      server.workers.set(w.id, peer);
      dispatcher.registry.add(peer);
      added = true;
    }
    for (const [id, peer] of [...server.workers]) {
      if (seen.has(id)) continue;
      server.workers.delete(id);
      this.#gone.add(`${state.id}/${id}`);
      dispatcher.workerLost(peer, `it left server ${state.name}`);
    }
    this.#checkLedger(
      server,
      state.ledger?.[this.id] ?? [],
      state.seen?.[this.id] ?? 0,
      now,
    );
    // New remote capacity, or remote capacity freed since the last announcement.
    if (added || dispatcher.queued > 0) dispatcher.pump();
  }

  /**
   * Finds requests lost between the servers. The worker's server announces, after everything it
   * published before (answers included: the outbox is flushed first), the requests of ours it
   * holds and the highest sequence number of ours it has read. A request still waiting here
   * that it has read but no longer holds lost its answer on the way; one it never read and
   * still does not hold after `lostAfterMs` was itself lost.
   */
  #checkLedger(
    server: KnownServer,
    held: string[],
    seen: number,
    now: number,
  ): void {
    const ledger = new Set(held);
    for (const peer of server.workers.values()) {
      for (const [msgId, sent] of peer.sent) {
        if (!peer.jobs.has(msgId)) {
          peer.sent.delete(msgId);
        } else if (
          !ledger.has(msgId) &&
          (sent.seq <= seen || now - sent.at > this.#lostAfterMs)
        ) {
          peer.sent.delete(msgId);
          log.warn(
            "Request {msgId} to worker {worker} on {server} was lost on the way: moving it",
            { msgId, worker: peer.id, server: server.name },
          );
          this.#core.dispatcher.jobLost(
            peer,
            msgId,
            `Request lost between servers ${this.serverName} and ${server.name}`,
          );
        }
      }
    }
  }

  #dropServer(server: KnownServer, reason: string): void {
    this.#servers.delete(server.id);
    this.#seqTo.delete(server.id);
    this.#seenFrom.delete(server.id);
    for (const peer of server.workers.values()) {
      this.#core.dispatcher.workerLost(peer, reason);
    }
    server.workers.clear();
    // Requests that server sent here have nobody to answer to any more.
    for (const [key, r] of [...this.#relayed]) {
      if (r.origin !== server.id) continue;
      this.#relayed.delete(key);
      r.cancel.abort();
    }
  }

  // ---- console messages (broadcasts, custom types) ---------------------------------------------

  /**
   * Sends an envelope to the other servers' workers: to every one when `clientId` is omitted,
   * else to that worker if it is attached to another server. Returns how many workers it was
   * sent towards (as this server knows them now); 0 without NATS.
   */
  sendMessage(type: string, data: unknown, clientId?: string): number {
    if (!this.#nc || this.#nats !== "connected" || this.#closed) return 0;
    const body: ClusterMessage = { o: this.id, t: type, d: data };
    if (clientId === undefined) {
      let n = 0;
      for (const server of this.#servers.values()) n += server.workers.size;
      this.#publish(`${this.#prefix}.msg`, JSON.stringify(body));
      return n;
    }
    const peer = this.#peerOf(clientId);
    if (!peer) return 0;
    body.w = clientId;
    this.#publish(
      `${this.#prefix}.srv.${peer.server}.msg`,
      JSON.stringify(body),
    );
    return 1;
  }

  #onMessage(msg: Msg): void {
    let body: ClusterMessage;
    try {
      body = JSON.parse(msg.string());
    } catch {
      return log.warn("Ignored a malformed cluster message");
    }
    if (body.o === this.id || typeof body.t !== "string") return;
    // Never to another server's worker that happens to be in this registry: only local ones.
    if (body.w !== undefined && this.#peerOf(body.w)) return;
    this.#deliver(body.t, body.d, body.w);
  }

  // ---- this server's requests to other servers' workers ---------------------------------------

  #relay(peer: RemotePeer, frame: string): void {
    const nc = this.#nc;
    if (!nc || nc.isClosed()) {
      // The dispatcher takes a throw as "this worker is unreachable" and places the job again.
      throw new Error("The cluster link is closed");
    }
    // The dispatcher files the job under its msg_id before sending, so its deadline is known.
    const msgId = /"msg_id":"([^"]+)"/.exec(frame)?.[1];
    const job = msgId ? peer.jobs.get(msgId) : undefined;
    const seq = (this.#seqTo.get(peer.server) ?? 0) + 1;
    this.#seqTo.set(peer.server, seq);
    let left = 0;
    if (job && msgId) {
      const now = this.#core.clock.now();
      left = Math.max(1, job.deadline - now);
      peer.sent.set(msgId, { at: now, seq });
    }
    // One line in front of the envelope, cheaper than NATS headers on both sides.
    const data = `${this.id} ${peer.id} ${left} ${seq}\n${frame}`;
    const max = nc.info?.max_payload ?? Infinity;
    if (data.length * 3 > max && encoder.encode(data).length > max) {
      throw new Error(
        `Request too large to cross servers (NATS max_payload ${max} bytes)`,
      );
    }
    this.#publish(`${this.#prefix}.srv.${peer.server}.req`, data);
  }

  /**
   * Publishes at the end of this turn of the event loop, together with whatever else this turn
   * publishes: the NATS client then writes them to its socket at once. A socket write costs
   * more than the rest of a relayed request under load, and waiting for the turn to end adds
   * no timer delay.
   */
  #publish(subject: string, data: string): void {
    this.#outbox.push(subject, data);
    if (this.#outbox.length === 2) setImmediate(this.#flush);
  }

  #flush = (): void => {
    const out = this.#outbox;
    this.#outbox = [];
    const nc = this.#nc;
    if (!nc) return;
    // A batch stays well inside NATS's max_payload even if every character took 3 bytes.
    const limit = Math.floor((nc.info?.max_payload ?? 1_048_576) / 3);
    for (let i = 0; i < out.length;) {
      const subject = out[i];
      let data = out[i + 1];
      i += 2;
      // Requests, answers and progress for one server that follow each other in this turn
      // leave as one NATS message: every message costs nats-server and both clients the same,
      // whatever it carries. Only neighbours merge, so that nothing overtakes (a streamed
      // item's progress must reach the origin before its batch's answer).
      const kind = batchable(subject);
      if (kind !== undefined) {
        const parts = [data];
        let size = data.length;
        while (
          i < out.length && out[i] === subject &&
          size + out[i + 1].length + 1 <= limit
        ) {
          parts.push(out[i + 1]);
          size += out[i + 1].length + 1;
          i += 2;
        }
        if (parts.length > 1) {
          data = kind === "req" ? parts.join("\n") : `[${parts.join(",")}]`;
        }
      }
      try {
        nc.publish(subject, data);
      } catch (error) {
        // A lost request or answer is caught by the ledger check on the other side.
        log.debug("Publishing to {subject} failed: {error}", {
          subject,
          error,
        });
      }
    }
  };

  #onDirect(msg: Msg): void {
    const kind = msg.subject.slice(msg.subject.lastIndexOf(".") + 1);
    try {
      if (kind === "req") this.#onRelayedBatch(msg.string());
      else if (kind === "res") {
        this.#each(kind, JSON.parse(msg.string()), (a) => this.#onAnswer(a));
      } else if (kind === "prog") {
        this.#each(kind, JSON.parse(msg.string()), (p) => this.#onProgress(p));
      } else if (kind === "msg") this.#onMessage(msg);
    } catch (error) {
      log.warn("Ignored a malformed cluster {kind} message: {error}", {
        kind,
        error: (error as Error).message,
      });
    }
  }

  /** Runs `handle` on each element of a batch (or on a lone value); one bad element costs only itself. */
  #each<T>(kind: string, value: T | T[], handle: (item: T) => void): void {
    for (const item of Array.isArray(value) ? value : [value]) {
      try {
        handle(item);
      } catch (error) {
        log.warn("Ignored a malformed cluster {kind} message: {error}", {
          kind,
          error: (error as Error).message,
        });
      }
    }
  }

  #peerOf(workerId: string): RemotePeer | undefined {
    const peer = this.#core.dispatcher.registry.get(workerId);
    return peer instanceof RemotePeer ? peer : undefined;
  }

  #onAnswer(a: RelayAnswer): void {
    const peer = this.#peerOf(a.w);
    if (!peer) return;
    peer.sent.delete(a.m);
    if (
      !a.s && (a.c === ErrorCode.WORKER_LOST || a.c === ErrorCode.NO_WORKERS ||
        a.c === ErrorCode.SHUTTING_DOWN)
    ) {
      // The worker is gone from its server (or that server is going): whatever else this server
      // sent it moves too, without waiting for the next announcement.
      const server = this.#servers.get(peer.server);
      server?.workers.delete(peer.id);
      this.#gone.add(`${peer.server}/${peer.id}`);
      this.#core.dispatcher.workerLost(peer, a.e ?? "it left its server");
      return;
    }
    this.#core.dispatcher.complete(peer, {
      request_id: a.m,
      success: a.s,
      result: a.r ?? null,
      error: a.e ?? null,
      error_code: a.c,
    });
  }

  #onProgress(p: RelayProgress): void {
    const peer = this.#peerOf(p.w);
    if (!peer) return;
    this.#core.dispatcher.progress(peer, p.m, {
      done: p.d,
      total: p.t,
      item: p.i,
    });
  }

  // ---- other servers' requests to this server's workers ---------------------------------------

  /**
   * One or more requests, each a header line and an envelope line: JSON text never holds a raw
   * line break, so the lines pair up.
   */
  #onRelayedBatch(text: string): void {
    const lines = text.split("\n");
    const requests: [string, string][] = [];
    for (let k = 0; k + 1 < lines.length; k += 2) {
      requests.push([lines[k], lines[k + 1]]);
    }
    this.#each(
      "req",
      requests,
      ([header, frame]) => this.#onRelayed(header, frame),
    );
    // A torn batch loses only its last, incomplete request.
    if (lines.length % 2 !== 0) {
      throw new Error("a request without its envelope");
    }
  }

  #onRelayed(header: string, frame: string): void {
    const [origin = "", workerId = "", t = "0", n = "0"] = header.split(" ");
    const left = Number(t);
    const seq = Number(n);
    if (seq > (this.#seenFrom.get(origin) ?? 0)) {
      this.#seenFrom.set(origin, seq);
    }
    const envelope: Envelope = decodeEnvelope(frame);
    const key = `${origin}\u0000${envelope.msg_id}`;
    if (envelope.type === MessageType.CANCEL) {
      const msgId = (envelope.data as { request_id?: unknown })?.request_id;
      const r = this.#relayed.get(`${origin}\u0000${msgId}`);
      r?.cancel.abort();
      return;
    }
    if (envelope.type !== MessageType.REQUEST || !envelope.msg_id) return;
    void this.#runRelayed(origin, workerId, left, envelope, key);
  }

  async #runRelayed(
    origin: string,
    workerId: string,
    left: number,
    envelope: Envelope,
    key: string,
  ): Promise<void> {
    const msgId = envelope.msg_id!;
    const reply = (subject: "res" | "prog", body: unknown) => {
      const nc = this.#nc;
      if (!nc) return;
      let data = JSON.stringify(body);
      const max = nc.info?.max_payload ?? Infinity;
      if (
        subject === "res" && data.length * 3 > max &&
        encoder.encode(data).length > max
      ) {
        data = JSON.stringify(
          {
            m: msgId,
            w: workerId,
            s: false,
            e: `Answer too large to cross servers: ${data.length} bytes (NATS max_payload ${max})`,
            c: ErrorCode.FRAME_TOO_LARGE,
          } satisfies RelayAnswer,
        );
      }
      this.#publish(`${this.#prefix}.srv.${origin}.${subject}`, data);
    };
    const worker = this.#core.dispatcher.registry.get(workerId);
    if (!worker || worker instanceof RemotePeer) {
      return reply(
        "res",
        {
          m: msgId,
          w: workerId,
          s: false,
          e: `Worker '${workerId}' is no longer attached to server ${this.serverName}`,
          c: ErrorCode.WORKER_LOST,
        } satisfies RelayAnswer,
      );
    }
    if (this.#core.draining) {
      return reply(
        "res",
        {
          m: msgId,
          w: workerId,
          s: false,
          e: `Server ${this.serverName} is shutting down`,
          c: ErrorCode.SHUTTING_DOWN,
        } satisfies RelayAnswer,
      );
    }
    let request;
    try {
      request = readRequestData(envelope.data);
    } catch (error) {
      return reply(
        "res",
        {
          m: msgId,
          w: workerId,
          s: false,
          e: (error as Error).message,
          c: ErrorCode.INVALID_FRAME,
        } satisfies RelayAnswer,
      );
    }
    const stream = (envelope.data as { stream?: unknown }).stream === true;
    const cancel = new Cancellation();
    this.#relayed.set(key, { origin, worker: workerId, msgId, cancel });
    const outcome = await this.#core.dispatcher.submit(
      request.action,
      request.params,
      {
        deadline: this.#core.clock.now() + (left > 0 ? left : 30_000),
        only: workerId,
        signal: cancel,
        onProgress: (p) =>
          reply(
            "prog",
            {
              m: msgId,
              w: workerId,
              d: p.done,
              t: p.total,
              i: p.item,
            } satisfies RelayProgress,
          ),
        resend: stream ? () => request.params : undefined,
      },
    );
    this.#relayed.delete(key);
    if (cancel.aborted) return;
    reply(
      "res",
      outcome.ok ? { m: msgId, w: workerId, s: true, r: outcome.result } : {
        m: msgId,
        w: workerId,
        s: false,
        e: outcome.error.message,
        c: outcome.error.code,
      } satisfies RelayAnswer,
    );
  }
}

/** Which relayed subjects batch, and how: `req` by lines, `res` and `prog` as JSON arrays. */
function batchable(subject: string): "req" | "res" | "prog" | undefined {
  const kind = subject.slice(subject.lastIndexOf(".") + 1);
  return kind === "req" || kind === "res" || kind === "prog" ? kind : undefined;
}
