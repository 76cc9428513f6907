/**
 * What the parts of the cluster link (membership, relay, ledger) share: who this server is, the
 * cluster's subjects, the broker's core, and the NATS connection while there is one.
 *
 * @module
 */

import {
  type NatsConnection,
  RequestError,
} from "npm:@nats-io/transport-node@3.4.0";
import type { BrokerCore } from "../broker/options.ts";
import type { Subjects } from "./wire.ts";

/** See the module doc. */
export interface LinkContext {
  /** This server's id in the cluster, random per process. */
  readonly id: string;
  /** This server's name in listings. */
  readonly serverName: string;
  /** The cluster's subjects. */
  readonly subjects: Subjects;
  /** The broker's dispatcher, clock and state. */
  readonly core: BrokerCore;
  /** The NATS connection, unless it is not open yet or closed for good. */
  nc(): NatsConnection | undefined;
}

/** Whether a NATS request failed because nobody subscribes to its subject. */
export function noResponders(error: unknown): boolean {
  return error instanceof RequestError && error.isNoResponders();
}
