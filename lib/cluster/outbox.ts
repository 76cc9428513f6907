/**
 * The relay's outbox: what the relay publishes waits for the end of this turn of the event loop,
 * then goes out with whatever else this turn publishes.
 *
 * Each stays a NATS message of its own, but the client then writes them to its socket at once:
 * it flushes after each microtask checkpoint, and answers from workers arrive one task each, so
 * publishing at once would cost one socket write per answer (the largest cost of a crossing).
 *
 * @module
 */

import type {
  MsgHdrs,
  NatsConnection,
} from "npm:@nats-io/transport-node@3.4.0";
import { setImmediate } from "node:timers";
import { logger } from "../log.ts";

const log = logger("cluster");

/** How a message in the outbox is published. */
export interface OutboxOptions {
  /** The subject its answers go to (a request's reply subject). */
  reply?: string;
  /** Its NATS headers. */
  headers: MsgHdrs;
}

/** See the module doc. */
export class Outbox {
  #nc: () => NatsConnection | undefined;
  /** Subjects, bodies and options to publish at the end of this turn. */
  #queue: [string, string, OutboxOptions][] = [];

  /** An outbox publishing on the connection `nc` gives at the end of each turn. */
  constructor(nc: () => NatsConnection | undefined) {
    this.#nc = nc;
  }

  /** Publishes at the end of this turn of the event loop. */
  publish(subject: string, body: string, options: OutboxOptions): void {
    this.#queue.push([subject, body, options]);
    if (this.#queue.length === 1) setImmediate(this.flush);
  }

  /**
   * Publishes what waits in the outbox now. Called before anything that must come after it on
   * NATS: a loss check and its reply travel behind the requests and answers published before.
   */
  readonly flush = (): void => {
    const out = this.#queue;
    if (out.length === 0) return;
    this.#queue = [];
    const nc = this.#nc();
    if (!nc || nc.isClosed()) return;
    for (const [subject, body, options] of out) {
      try {
        nc.publish(subject, body, options);
      } catch (error) {
        // The loss check finds what did not go out.
        log.debug("Publishing to {subject} failed: {error}", {
          subject,
          error,
        });
      }
    }
  };
}
