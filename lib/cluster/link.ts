/**
 * The cluster link: joins this server to the other servers of one cluster over core NATS.
 *
 * It holds the NATS connection and wires its parts together:
 *
 * - the membership (`membership.ts`): heartbeats, each server's worker registry, write-offs;
 * - the relay, over NATS request-reply: requests to other servers' workers (`relay.ts`) and
 *   theirs to this server's (`relayed.ts`, which keeps what it published for the
 *   loss check in `reply_log.ts`), both publishing at the end of each turn (`outbox.ts`);
 * - the ledger (`ledger.ts`): what became of each request sent to another server;
 * - console messages for other servers' workers (`console_messages.ts`).
 *
 * Every other server's worker is a {@linkcode RemotePeer} in this server's registry, so the one
 * dispatcher and balancer place requests over the whole cluster. Subjects and messages are in
 * `wire.ts`; `docs/cluster.md` tells the guarantees.
 *
 * @module
 */

import {
  credsAuthenticator,
  type Msg,
  type NatsConnection,
  type NodeConnectionOptions,
  type Subscription,
} from "npm:@nats-io/transport-node@3.4.0";
import { ConsoleMessages, type LocalDelivery } from "./console_messages.ts";
import { connectNats } from "./nats_connect.ts";
import type { WorkerLoad as BalancerLoad } from "../broker/balancer.ts";
import { shortId } from "../_id.ts";
import { logger } from "../log.ts";
import type { BrokerCore } from "../broker/options.ts";
import { type LinkContext, noResponders } from "./context.ts";
import { Ledger } from "./ledger.ts";
import { Membership } from "./membership.ts";
import { Outbox } from "./outbox.ts";
import { Relay } from "./relay.ts";
import { RelayedRequests } from "./relayed.ts";
import { RemotePeer } from "./remote_peer.ts";
import type { ClusterServer, ClusterStatus } from "./status.ts";
import { Subjects, validClusterName } from "./wire.ts";

const log = logger("cluster");

/** How a server joins a cluster. */
export interface ClusterOptions {
  /** NATS URLs, such as `nats://h1:4222`. */
  servers: string[];
  /** Servers of one name form one broker. @default "switchyard" */
  name?: string;
  /** This server's name in listings; no two servers of a cluster share one. @default a random id */
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
  /** How often this server sends its heartbeat (and registry changes), in ms. @default 250 */
  heartbeatMs?: number;
  /** Silence after which a server is written off, in ms. @default 1500 */
  deadAfterMs?: number;
  /**
   * How long a request to another server's worker goes before the loss check asks that server
   * whether it still holds it, in ms (and how often the check runs). @default 1000
   */
  probeMs?: number;
  /**
   * How often the NATS client pings its NATS node, in ms; after two unanswered pings it moves to
   * another node. @default 1000
   */
  natsPingMs?: number;
}

const encoder = new TextEncoder();

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
  #subjects: Subjects;
  #heartbeatMs: number;
  #nc: NatsConnection | undefined;
  #nats: ClusterStatus["nats"] = "connecting";
  #membership: Membership;
  #relay: Relay;
  #relayed: RelayedRequests;
  #outbox: Outbox;
  #ledger: Ledger;
  #timer: ReturnType<typeof setInterval> | undefined;
  #closed = false;
  #started: Promise<void> | undefined;
  #connecting: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  /** Why the last attempt to reach NATS failed (or the join was refused), until one succeeds. */
  #error: string | undefined;
  #background: Promise<void>[] = [];
  #requesters: () => number;
  #messages: ConsoleMessages;

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
    this.#options = options;
    this.name = name;
    this.serverName = options.serverName ?? this.id;
    this.#subjects = new Subjects(name);
    this.#heartbeatMs = options.heartbeatMs ?? 250;
    const ctx: LinkContext = {
      id: this.id,
      serverName: this.serverName,
      subjects: this.#subjects,
      core,
      nc: () => this.#nc,
    };
    // The parts reach each other only through these hooks.
    this.#outbox = new Outbox(ctx.nc);
    this.#relayed = new RelayedRequests(ctx, this.#outbox);
    this.#ledger = new Ledger(ctx, {
      complete: (peer, msgId, answer) =>
        this.#relay.complete(peer, msgId, answer),
      cancel: (peer, msgId, reason) => this.#relay.cancel(peer, msgId, reason),
      flush: this.#outbox.flush,
      progress: (peer, msgId, report) =>
        this.#relay.progress(peer, msgId, report),
      suspect: (server, reason) => this.#membership.suspect(server, reason),
      nameOf: (server) => this.#membership.servers.get(server)?.name ?? server,
    }, options.probeMs ?? 1000);
    this.#relay = new Relay(ctx, {
      ledger: this.#ledger,
      outbox: this.#outbox,
      suspect: (server, reason) => this.#membership.suspect(server, reason),
      workerGone: (peer, reason) => this.#membership.workerGone(peer, reason),
    });
    this.#membership = new Membership(ctx, {
      send: (peer, frame) => this.#relay.send(peer, frame),
      byWorker: () => this.#relayed.byWorker(),
      writtenOff: (server) => {
        const n = this.#relayed.cancelFrom(server);
        if (n > 0) {
          log.info(
            "Stopped {n} requests the written-off server had sent here",
            {
              n,
            },
          );
        }
      },
      peerGone: (peer) => this.#ledger.forgetPeer(peer),
      requesters: () => this.#requesters(),
      urls: () => this.#options.urls ?? {},
    }, {
      heartbeatMs: this.#heartbeatMs,
      deadAfterMs: options.deadAfterMs ?? 1500,
    });
    this.#messages = new ConsoleMessages(ctx, {
      connected: () => this.#nats === "connected" && !this.#closed,
      remoteWorkers: () => {
        let n = 0;
        for (const server of this.#membership.servers.values()) {
          n += server.workers.size;
        }
        return n;
      },
      deliver,
    });
  }

  /**
   * Connects (retrying until it works), checks that no other server of the cluster has this
   * server's name, and starts announcing; resolves once joined. Rejects when the name is taken.
   */
  start(): Promise<void> {
    this.#started ??= this.#start();
    return this.#started;
  }

  async #start(): Promise<void> {
    const o = this.#options;
    const pingMs = o.natsPingMs ?? 1000;
    const options: NodeConnectionOptions = {
      servers: o.servers,
      name: `switchyard ${this.name} ${this.serverName}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      reconnectJitter: 100,
      // The first connection is retried here rather than inside the client, so that close()
      // can stop the retries and the reason (refused, unauthorized) can be shown.
      timeout: 2000,
      // A NATS node that vanishes without closing TCP is left within ~3 pings.
      pingInterval: pingMs,
      maxPingOut: 2,
      // This server ignores its own heartbeats and registry changes: echoes would only cost reads.
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
    // Retried often: when everything restarts, the servers should be back in the cluster as
    // soon as NATS is.
    const delay = 250;
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
      }
    }
    if (!nc) return;
    if (this.#closed) {
      await nc.close();
      return;
    }
    this.#error = undefined;
    try {
      await this.#claimName(nc);
    } catch (error) {
      this.#error = (error as Error).message;
      this.#closed = true;
      await nc.close().catch(() => {});
      throw error;
    }
    this.#nc = nc;
    this.#nats = "connected";
    log.info("Joined cluster {name} as {server} (NATS {nats})", {
      name: this.name,
      server: this.serverName,
      nats: nc.getServer(),
    });
    const s = this.#subjects;
    const on = (subject: string, handle: (msg: Msg) => void): Subscription =>
      nc.subscribe(subject, {
        callback: (error, msg) => {
          if (error) return;
          try {
            handle(msg);
          } catch (e) {
            log.warn("Ignored a bad message on {subject}: {error}", {
              subject: msg.subject,
              error: (e as Error).message,
            });
          }
        },
      });
    on(s.heartbeat, (m) => this.#membership.onHeartbeat(m));
    on(s.registry, (m) => this.#membership.onDelta(m));
    on(s.server(this.id, "workers"), (m) => this.#membership.serveSnapshot(m));
    on(s.server(this.id, "req"), (m) => this.#relayed.onRequest(m));
    on(s.server(this.id, "cancel"), (m) => this.#relayed.onCancel(m));
    on(s.server(this.id, "held"), (m) => this.#relayed.onHeld(m));
    on(s.server(this.id, "replay"), (m) => this.#relayed.onReplay(m));
    on(s.replies(this.id), (m) => this.#relay.onReply(m));
    on(s.message, (m) => this.#messages.onMessage(m));
    on(s.server(this.id, "msg"), (m) => this.#messages.onMessage(m));
    on(s.name(this.serverName), (m) => m.respond(this.id));
    // Subscriptions reach the NATS node before anyone can hear of this server.
    await nc.flush().catch(() => {});
    this.#background.push(this.#watch(nc));
    this.#timer = setInterval(() => this.#tick(), this.#heartbeatMs);
    this.#membership.publish();
  }

  /** Refuses to join when a server of this cluster already answers to this server's name. */
  async #claimName(nc: NatsConnection): Promise<void> {
    let holder: string;
    try {
      holder = (await nc.request(this.#subjects.name(this.serverName), "", {
        timeout: 1000,
      })).string();
    } catch (error) {
      // Nobody has the name (or nobody answers to it, which is the same for a new server).
      if (noResponders(error)) return;
      if ((error as Error).name === "TimeoutError") return;
      throw error;
    }
    throw new Error(
      `Server name '${this.serverName}' is already in use in cluster '${this.name}' ` +
        `(server ${holder}): give each server its own --server-name`,
    );
  }

  #tick(): void {
    this.#membership.tick(this.#nats === "connected" && !this.#closed);
    this.#ledger.check();
  }

  async #watch(nc: NatsConnection): Promise<void> {
    for await (const status of nc.status()) {
      switch (status.type) {
        case "disconnect":
          // The client buffers what is published meanwhile and tries the other NATS URLs; if the
          // other servers stay silent past deadAfterMs, they are written off and this server
          // goes on with its own workers.
          this.#nats = "disconnected";
          log.warn(
            "Lost NATS ({server}): reconnecting; local workers keep serving",
            { server: status.server },
          );
          break;
        case "reconnect":
          this.#nats = "connected";
          this.#ledger.reconnected();
          log.info("NATS is back ({server}): rejoined cluster {name}", {
            server: status.server,
            name: this.name,
          });
          this.#membership.publish();
          break;
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
      workers: this.#membership.localWorkers().length,
      requesters: this.#requesters(),
      urls: this.#options.urls ?? {},
      last_heard_ms: 0,
    }];
    for (const s of this.#membership.servers.values()) {
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
  isLocal(worker: BalancerLoad): boolean {
    return !(worker instanceof RemotePeer);
  }

  /** Leaves the cluster: other servers move this server's requests elsewhere. */
  async close(): Promise<void> {
    if (this.#closed && !this.#nc) {
      await this.#started?.catch(() => {});
      return;
    }
    this.#closed = true;
    clearInterval(this.#timer);
    this.#wake?.();
    await this.#connecting;
    await this.#started?.catch(() => {});
    this.#membership.writeOffAll("this server is shutting down");
    this.#outbox.flush();
    this.#relayed.close();
    const nc = this.#nc;
    if (nc) {
      try {
        // Said out loud, so the others move this server's requests now rather than after
        // deadAfterMs of silence.
        this.#membership.leave();
        await nc.flush();
      } catch {
        // Closing anyway.
      }
      this.#nc = undefined;
      await nc.close();
    }
    await Promise.all(this.#background);
  }

  /**
   * Sends an envelope to the other servers' workers: to every one when `clientId` is omitted,
   * else to that worker if it is attached to another server. Returns how many workers it was
   * sent towards (as this server knows them now); 0 without NATS.
   */
  sendMessage(type: string, data: unknown, clientId?: string): number {
    return this.#messages.send(type, data, clientId);
  }
}
