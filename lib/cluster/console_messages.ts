/**
 * Console messages across the cluster: a `broadcast` or a custom message sent at one server's
 * console reaches the workers attached to the other servers too, on `…msg` (every worker) or on
 * `…srv.<id>.msg` (one worker, to the server it is attached to).
 *
 * @module
 */

import type { Msg } from "npm:@nats-io/transport-node@3.4.0";
import { type LinkContext, readJson } from "./context.ts";
import { RemotePeer } from "./remote_peer.ts";
import type { ClusterMessage } from "./wire.ts";

/** Sends an envelope to this server's workers (all, or one); returns how many got it. */
export type LocalDelivery = (
  type: string,
  data: unknown,
  clientId?: string,
) => number;

/** What console messages need from the rest of the link. */
export interface ConsoleMessageHooks {
  /** Whether the link is on NATS and not closed. */
  connected(): boolean;
  /** How many workers the other servers have, as this server knows them now. */
  remoteWorkers(): number;
  /** Hands another server's message to this server's workers. */
  deliver: LocalDelivery;
}

/** See the module doc. */
export class ConsoleMessages {
  #ctx: LinkContext;
  #hooks: ConsoleMessageHooks;

  /** Console messages between the link `ctx` and the other servers. */
  constructor(ctx: LinkContext, hooks: ConsoleMessageHooks) {
    this.#ctx = ctx;
    this.#hooks = hooks;
  }

  /**
   * Sends an envelope to the other servers' workers: to every one when `clientId` is omitted,
   * else to that worker if it is attached to another server. Returns how many workers it was
   * sent towards (as this server knows them now); 0 without NATS.
   */
  send(type: string, data: unknown, clientId?: string): number {
    const nc = this.#ctx.nc();
    if (!nc || !this.#hooks.connected()) return 0;
    const body: ClusterMessage = { o: this.#ctx.id, t: type, d: data };
    const subjects = this.#ctx.subjects;
    if (clientId === undefined) {
      const n = this.#hooks.remoteWorkers();
      nc.publish(subjects.message, JSON.stringify(body));
      return n;
    }
    const peer = this.#peerOf(clientId);
    if (!peer) return 0;
    body.w = clientId;
    nc.publish(subjects.server(peer.server, "msg"), JSON.stringify(body));
    return 1;
  }

  /** A console message from another server, for every worker here or for one. */
  onMessage(msg: Msg): void {
    const body = readJson<ClusterMessage>(msg, "cluster message");
    if (body === undefined) return;
    if (body.o === this.#ctx.id || typeof body.t !== "string") return;
    // Never to another server's worker that happens to be in this registry: only local ones.
    if (body.w !== undefined && this.#peerOf(body.w)) return;
    this.#hooks.deliver(body.t, body.d, body.w);
  }

  #peerOf(workerId: string): RemotePeer | undefined {
    const peer = this.#ctx.core.dispatcher.registry.get(workerId);
    return peer instanceof RemotePeer ? peer : undefined;
  }
}
