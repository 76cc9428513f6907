/**
 * Membership: which servers are in the cluster, and which workers each has.
 *
 * Every server publishes a small heartbeat every `heartbeatMs`: its id and name, the version of
 * its worker registry, and the load of the workers whose load changed since the last one (an
 * idle cluster sends only the bare heartbeats). A change of its workers (one joins, leaves,
 * changes its registration or health) goes out once, as a numbered delta. A server that sees a
 * version it does not hold (it is new, or it missed a delta) asks that server for a snapshot by
 * NATS request-reply. So traffic grows with servers × (servers − 1) × heartbeats, plus changes,
 * not with every worker and every request on every beat.
 *
 * A server silent for `deadAfterMs` is written off: its workers leave this server's pool (the
 * requests this server sent them move) and the requests it sent here stop. A server that comes
 * back is taken in again from its next heartbeat.
 *
 * @module
 */

import type { Msg } from "npm:@nats-io/transport-node@3.4.0";
import type { Peer } from "../broker/dispatcher.ts";
import { logger } from "../log.ts";
import { type LinkContext, readJson } from "./context.ts";
import { RemotePeer } from "./remote_peer.ts";
import type {
  Heartbeat,
  RegistryDelta,
  Snapshot,
  WorkerLoad,
  WorkerState,
} from "./wire.ts";

const log = logger("cluster");

/** Another server, as this one knows it. */
export interface KnownServer {
  id: string;
  name: string;
  lastHeard: number;
  requesters: number;
  urls: { worker?: string; requester?: string };
  workers: Map<string, RemotePeer>;
  /** The version of its registry that `workers` reflects; -1 before the first snapshot. */
  wv: number;
  /** A snapshot request is under way. */
  syncing: boolean;
  /** NATS answered "no responders" for it: its workers take no new work until it is heard. */
  suspect: boolean;
}

/** What the membership needs from the rest of the link. */
export interface MembershipHooks {
  /** Sends a frame to a remote worker (the relay). */
  send(peer: RemotePeer, frame: string): void;
  /** Per local worker, how many requests each origin server has on it. */
  byWorker(): Map<string, Record<string, number>>;
  /** A server was written off: the requests it sent here stop. */
  writtenOff(server: string): void;
  /** A remote worker left: its requests leave the ledger. */
  peerGone(peer: RemotePeer): void;
  /** This server's requester count and URLs. */
  requesters(): number;
  urls(): { worker?: string; requester?: string };
}

/** See the module doc. */
export class Membership {
  readonly servers: Map<string, KnownServer> = new Map();
  #ctx: LinkContext;
  #hooks: MembershipHooks;
  #heartbeatMs: number;
  #deadAfterMs: number;
  /** This server's registry version, and each local worker's registration as last published. */
  #wv = 0;
  #published = new Map<string, string>();
  /** Each local worker's load as last published. */
  #loadSent = new Map<string, string>();
  #lastTick = 0;
  #beats = 0;
  /** Servers with this server's name, already warned about. */
  #clashes = new Set<string>();

  constructor(
    ctx: LinkContext,
    hooks: MembershipHooks,
    timing: { heartbeatMs: number; deadAfterMs: number },
  ) {
    this.#ctx = ctx;
    this.#hooks = hooks;
    this.#heartbeatMs = timing.heartbeatMs;
    this.#deadAfterMs = timing.deadAfterMs;
    this.#lastTick = ctx.core.clock.now();
  }

  /** This server's own workers. */
  localWorkers(): Peer[] {
    return this.#ctx.core.dispatcher.registry.all().filter((w) => !w.remote);
  }

  /** Once per `heartbeatMs`: writes off silent servers, then publishes changes and a heartbeat. */
  tick(connected: boolean): void {
    const now = this.#ctx.core.clock.now();
    // A tick that comes late means this process was stalled (SIGSTOP, CPU starved, a long GC):
    // the others' heartbeats may be waiting unread in the socket, so their silence is ours.
    const stalled = now - this.#lastTick - this.#heartbeatMs;
    this.#lastTick = now;
    if (stalled > this.#heartbeatMs) {
      for (const server of this.servers.values()) server.lastHeard += stalled;
    }
    for (const server of [...this.servers.values()]) {
      if (now - server.lastHeard > this.#deadAfterMs) {
        this.writeOff(
          server.id,
          `its server ${server.name} is silent for ${
            now - server.lastHeard
          } ms`,
        );
      }
    }
    if (connected) this.publish();
  }

  /** Publishes what changed in this server's registry, then a heartbeat. */
  publish(): void {
    const nc = this.#ctx.nc();
    if (!nc || nc.isClosed()) return;
    const up: WorkerState[] = [];
    const seen = new Set<string>();
    for (const w of this.localWorkers()) {
      seen.add(w.id);
      const state = this.#state(w);
      const json = JSON.stringify(state);
      if (this.#published.get(w.id) !== json) {
        this.#published.set(w.id, json);
        up.push(state);
      }
    }
    const down = [...this.#published.keys()].filter((id) => !seen.has(id));
    for (const id of down) {
      this.#published.delete(id);
      this.#loadSent.delete(id);
    }
    try {
      if (up.length > 0 || down.length > 0) {
        this.#wv++;
        nc.publish(
          this.#ctx.subjects.registry,
          JSON.stringify(
            {
              v: 2,
              id: this.#ctx.id,
              wv: this.#wv,
              up,
              down,
            } satisfies RegistryDelta,
          ),
        );
      }
      // Every 20th heartbeat carries every worker's load: one lost on the way (a NATS blip)
      // leaves a remote worker's load wrong for at most that long.
      nc.publish(
        this.#ctx.subjects.heartbeat,
        JSON.stringify(this.#heartbeat(this.#beats++ % 20 === 0)),
      );
    } catch (error) {
      log.debug("Announcing failed: {error}", { error });
    }
  }

  #heartbeat(all: boolean): Heartbeat {
    const by = this.#hooks.byWorker();
    const load: WorkerLoad[] = [];
    for (const w of this.localWorkers()) {
      const info = w.info();
      const entry: WorkerLoad = [
        w.id,
        w.inFlight,
        by.get(w.id) ?? {},
        info.latency_ms,
        w.served,
        w.failures,
        info.last_seen,
      ];
      // last_seen alone changes with every frame: it does not make a report.
      const key = JSON.stringify(entry.slice(1, 6));
      if (all || this.#loadSent.get(w.id) !== key) {
        this.#loadSent.set(w.id, key);
        load.push(entry);
      }
    }
    const nonRetriable = [...this.#ctx.core.dispatcher.nonRetriable];
    return {
      v: 2,
      id: this.#ctx.id,
      name: this.#ctx.serverName,
      urls: this.#hooks.urls(),
      requesters: this.#hooks.requesters(),
      wv: this.#wv,
      load,
      ...(nonRetriable.length > 0 ? { non_retriable: nonRetriable } : {}),
    };
  }

  #state(w: Peer): WorkerState {
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
      healthy: w.healthy,
      // A draining server takes no new work, relayed work included.
      draining: w.draining || this.#ctx.core.draining,
      registered: w.registered,
      blocked: w.blockedSources,
      connected_since: info.connected_since,
      non_retriable: [...w.nonRetriable],
    };
  }

  /** Says out loud that this server is leaving, so the others move its work now. */
  leave(): void {
    const nc = this.#ctx.nc();
    if (!nc || nc.isClosed()) return;
    nc.publish(
      this.#ctx.subjects.heartbeat,
      JSON.stringify(
        {
          ...this.#heartbeat(false),
          load: [],
          leaving: true,
        } satisfies Heartbeat,
      ),
    );
  }

  /** Answers another server's snapshot request. */
  serveSnapshot(msg: Msg): void {
    const hb = this.#heartbeat(true);
    msg.respond(
      JSON.stringify(
        {
          v: 2,
          id: this.#ctx.id,
          name: this.#ctx.serverName,
          wv: this.#wv,
          workers: this.localWorkers().map((w) => this.#state(w)),
          load: hb.load,
        } satisfies Snapshot,
      ),
    );
  }

  // ---- other servers ---------------------------------------------------------------------------

  onHeartbeat(msg: Msg): void {
    const hb = readJson<Heartbeat>(msg, "cluster heartbeat");
    if (hb === undefined) return;
    if (hb.v !== 2 || typeof hb.id !== "string" || hb.id === this.#ctx.id) {
      return;
    }
    if (hb.leaving) {
      const leaving = this.servers.get(hb.id);
      if (leaving) {
        log.info("Server {name} ({id}) left the cluster", {
          name: leaving.name,
          id: leaving.id,
        });
        this.writeOff(hb.id, `its server ${leaving.name} left the cluster`);
      }
      return;
    }
    if (hb.name === this.#ctx.serverName && !this.#clashes.has(hb.id)) {
      this.#clashes.add(hb.id);
      log.error(
        "Server {id} also calls itself {name}: give each server its own --server-name",
        { id: hb.id, name: hb.name },
      );
    }
    const dispatcher = this.#ctx.core.dispatcher;
    let server = this.servers.get(hb.id);
    if (!server) {
      server = {
        id: hb.id,
        name: hb.name,
        lastHeard: 0,
        requesters: 0,
        urls: {},
        workers: new Map(),
        wv: -1,
        syncing: false,
        suspect: false,
      };
      this.servers.set(hb.id, server);
      log.info("Server {name} ({id}) is in the cluster", {
        name: hb.name,
        id: hb.id,
      });
    }
    server.lastHeard = this.#ctx.core.clock.now();
    if (server.suspect) {
      server.suspect = false;
      for (const peer of server.workers.values()) peer.resume();
      log.info("Server {name} is back on NATS", { name: server.name });
    }
    server.requesters = hb.requesters;
    server.urls = hb.urls ?? {};
    // An action a worker of that server must not run twice must not run twice from here either.
    for (const action of hb.non_retriable ?? []) {
      if (!dispatcher.nonRetriable.has(action)) {
        dispatcher.markNonRetriable(action);
      }
    }
    if (hb.wv !== server.wv) this.#sync(server);
    else this.#applyLoad(server, hb.load);
    // Remote capacity freed since the last heartbeat.
    if (dispatcher.queued > 0) dispatcher.pump();
  }

  onDelta(msg: Msg): void {
    const delta = readJson<RegistryDelta>(msg, "cluster registry change");
    if (delta === undefined) return;
    if (delta.v !== 2 || delta.id === this.#ctx.id) return;
    const server = this.servers.get(delta.id);
    // Unknown yet: its next heartbeat brings a snapshot.
    if (!server || server.syncing) return;
    if (delta.wv !== server.wv + 1) return this.#sync(server);
    server.wv = delta.wv;
    this.#apply(server, delta.up, delta.down);
  }

  #sync(server: KnownServer): void {
    const nc = this.#ctx.nc();
    if (!nc || nc.isClosed() || server.syncing) return;
    server.syncing = true;
    nc.request(this.#ctx.subjects.server(server.id, "workers"), "", {
      timeout: Math.max(1000, this.#deadAfterMs),
    }).then((msg) => {
      server.syncing = false;
      // Written off meanwhile: its next heartbeat starts again.
      if (this.servers.get(server.id) !== server) return;
      const snap = msg.json<Snapshot>();
      server.wv = snap.wv;
      server.name = snap.name;
      const ids = new Set(snap.workers.map((w) => w.id));
      this.#apply(
        server,
        snap.workers,
        [...server.workers.keys()].filter((id) => !ids.has(id)),
      );
      this.#applyLoad(server, snap.load);
    }, (error) => {
      server.syncing = false;
      log.debug("No snapshot from server {name}: {error}", {
        name: server.name,
        error: (error as Error).message,
      });
    });
  }

  #apply(server: KnownServer, up: WorkerState[], down: string[]): void {
    const dispatcher = this.#ctx.core.dispatcher;
    let added = false;
    for (const w of up) {
      const known = server.workers.get(w.id);
      if (known) {
        known.update(w, server.name);
        continue;
      }
      if (dispatcher.registry.get(w.id)) {
        log.warn(
          "Worker id {id} of server {name} clashes with one here: not used from this server",
          { id: w.id, name: server.name },
        );
        continue;
      }
      const peer = new RemotePeer(
        w,
        { id: server.id, name: server.name },
        (p, frame) => this.#hooks.send(p, frame),
        this.#ctx.core.clock,
      );
      server.workers.set(w.id, peer);
      dispatcher.registry.add(peer);
      added = true;
    }
    for (const id of down) {
      const peer = server.workers.get(id);
      if (peer) this.workerGone(peer, `it left server ${server.name}`);
    }
    // New remote capacity.
    if (added) dispatcher.pump();
  }

  #applyLoad(server: KnownServer, load: WorkerLoad[]): void {
    for (const entry of load ?? []) {
      server.workers.get(entry[0])?.setLoad(entry, this.#ctx.id);
    }
  }

  /**
   * NATS says nobody listens at server `id` (it died, or its NATS connection is down for a
   * moment): its workers take no new work until it is heard again, and silence writes it off.
   */
  suspect(id: string, reason: string): void {
    const server = this.servers.get(id);
    if (!server || server.suspect) return;
    server.suspect = true;
    log.warn("Server {name}: {reason}; no new work for it until it is heard", {
      name: server.name,
      reason,
    });
    for (const peer of server.workers.values()) peer.suspend();
  }

  /** A remote worker is gone: its requests here move or fail. */
  workerGone(peer: RemotePeer, reason: string): void {
    const server = this.servers.get(peer.server);
    if (server?.workers.get(peer.id) === peer) server.workers.delete(peer.id);
    this.#hooks.peerGone(peer);
    if (this.#ctx.core.dispatcher.registry.get(peer.id) === peer) {
      this.#ctx.core.dispatcher.workerLost(peer, reason);
    }
  }

  /**
   * Writes server `id` off: its workers leave the pool (this server's requests on them move or
   * fail) and the requests it sent here stop.
   */
  writeOff(id: string, reason: string): void {
    const server = this.servers.get(id);
    if (!server) return;
    log.warn("Server {name} ({id}) written off: {reason}", {
      name: server.name,
      id,
      reason,
    });
    this.servers.delete(id);
    for (const peer of [...server.workers.values()]) {
      this.workerGone(peer, reason);
    }
    server.workers.clear();
    this.#hooks.writtenOff(id);
  }

  /** Writes every server off (this server is leaving, or lost NATS for good). */
  writeOffAll(reason: string): void {
    for (const id of [...this.servers.keys()]) this.writeOff(id, reason);
  }
}
