/**
 * A worker attached to another server of the cluster, as this server's dispatcher sees it: a
 * {@linkcode Peer} whose `send` goes over NATS to the worker's server.
 *
 * Its load is the sum of what is exact here (the requests this server sent it, counted live by
 * the dispatcher) and what the worker's server last announced for the other servers.
 *
 * @module
 */

import { Peer } from "../broker/dispatcher.ts";
import type { Clock, WorkerInfo } from "../broker/registry.ts";
import type { RelayAnswer, WorkerLoad, WorkerState } from "./wire.ts";

/** What this server knows of one request it sent the worker (see `ledger.ts`). */
export interface SentRequest {
  /** When it was handed to NATS (or NATS came back, if it was buffered). */
  at: number;
  /** Progress reports received for it. */
  progress: number;
  /** Missing reports are being fetched again. */
  replaying?: boolean;
  /** Some reports are missing (a replay is under way, or will be asked for again). */
  gap?: boolean;
  /** Its answer (after how many reports), held until the missing reports are in. */
  answer?: [number, RelayAnswer];
}

/** A worker of another server; see the module doc. */
export class RemotePeer extends Peer {
  override readonly remote = true;
  /** The id of the server the worker is attached to. */
  readonly server: string;
  /** That server's name, as listings show it. */
  serverName: string;
  /** Each request handed to NATS and not answered yet, by `msg_id`. */
  readonly sent: Map<string, SentRequest> = new Map();
  #state: WorkerState;
  #load: WorkerLoad | undefined;
  /** NATS said nobody listens at its server: no new work until that server is heard again. */
  #suspended = false;

  constructor(
    state: WorkerState,
    server: { id: string; name: string },
    send: (peer: RemotePeer, frame: string) => void,
    clock: Clock,
  ) {
    super(state.id, state.address, (frame) => send(this, frame), {
      clock,
      defaultConcurrency: state.max,
    });
    this.server = server.id;
    this.serverName = server.name;
    this.#state = state;
    this.update(state, server.name);
  }

  /** Applies the worker's server's latest registration of it. */
  update(state: WorkerState, serverName: string): void {
    this.#state = state;
    this.serverName = serverName;
    this.name = state.name;
    this.weight = state.weight;
    this.maxConcurrency = state.max;
    this.actions = state.actions === null ? null : new Set(state.actions);
    this.version = state.version;
    this.host = state.host;
    this.registered = state.registered;
    this.draining = state.draining || this.#suspended;
    this.unhealthy = !state.healthy;
    this.blockedSources = state.blocked;
    this.nonRetriable = new Set(state.non_retriable ?? []);
  }

  /** Its server did not answer on NATS: it takes no new work until `resume()`. */
  suspend(): void {
    this.#suspended = true;
    this.draining = true;
  }

  /** Its server was heard from again. */
  resume(): void {
    if (!this.#suspended) return;
    this.#suspended = false;
    this.draining = this.#state.draining;
  }

  /** Applies the worker's server's latest load report; `self` is this server's id. */
  setLoad(load: WorkerLoad, self: string): void {
    this.#load = load;
    const [, inFlight, by, latency] = load;
    // Latency as measured here includes the hop; the worker's server's figure stands in until
    // this server has its own.
    if (this.ewmaMs === undefined && latency !== null) this.ewmaMs = latency;
    this.inFlight = this.jobs.size + Math.max(0, inFlight - (by[self] ?? 0));
  }

  override info(): WorkerInfo {
    const s = this.#state;
    const l = this.#load;
    return {
      ...super.info(),
      served: l?.[4] ?? 0,
      failures: l?.[5] ?? 0,
      latency_ms: l?.[3] ?? null,
      connected_since: s.connected_since,
      last_seen: l?.[6] ?? s.connected_since,
      server: this.serverName,
    };
  }
}
