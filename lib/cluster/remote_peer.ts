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
import type { WorkerState } from "./wire.ts";

/** A worker of another server; see the module doc. */
export class RemotePeer extends Peer {
  override readonly remote = true;
  /** The id of the server the worker is attached to. */
  readonly server: string;
  /** That server's name, as listings show it. */
  serverName: string;
  /**
   * Each request handed to NATS, by `msg_id`: when, and its sequence number towards the worker's
   * server, which says whether that server has had it yet (see the ledger check in `link.ts`).
   */
  readonly sent: Map<string, { at: number; seq: number }> = new Map();
  #state: WorkerState;

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
    this.update(state, "", server.name);
  }

  /** Applies the worker's server's latest announcement. */
  update(state: WorkerState, self: string, serverName: string): void {
    this.#state = state;
    this.serverName = serverName;
    this.name = state.name;
    this.weight = state.weight;
    this.maxConcurrency = state.max;
    this.actions = state.actions === null ? null : new Set(state.actions);
    this.version = state.version;
    this.host = state.host;
    this.registered = state.registered;
    this.draining = state.draining;
    this.unhealthy = !state.healthy;
    this.blockedSources = state.blocked;
    this.nonRetriable = new Set(state.non_retriable ?? []);
    // Latency as measured here includes the hop; the worker's server's figure stands in until
    // this server has its own.
    if (this.ewmaMs === undefined && state.latency_ms !== null) {
      this.ewmaMs = state.latency_ms;
    }
    const others = Math.max(0, state.in_flight - (state.by[self] ?? 0));
    this.inFlight = this.jobs.size + others;
  }

  override info(): WorkerInfo {
    const s = this.#state;
    return {
      ...super.info(),
      served: s.served,
      failures: s.failures,
      latency_ms: s.latency_ms,
      connected_since: s.connected_since,
      last_seen: s.last_seen,
      server: this.serverName,
    };
  }
}
