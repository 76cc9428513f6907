/**
 * What the parts of the cluster link (membership, both sides of the relay, the ledger, console
 * messages) share: who this server is, the cluster's subjects, the broker's core, and the NATS
 * connection while there is one; and how they read a message's JSON and measure a body against
 * NATS `max_payload`.
 *
 * @module
 */

import {
  type Msg,
  type NatsConnection,
  RequestError,
} from "npm:@nats-io/transport-node@3.4.0";
import type { BrokerCore } from "../broker/options.ts";
import { logger } from "../log.ts";
import type { Subjects } from "./wire.ts";

const log = logger("cluster");
const encoder = new TextEncoder();

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

/**
 * The JSON body of `msg`, or `undefined` when it is not JSON: a bad message from another server
 * is logged as `what` and ignored, and the link goes on.
 */
export function readJson<T>(msg: Msg, what: string): T | undefined {
  try {
    return msg.json<T>();
  } catch {
    log.warn(`Ignored a malformed ${what}`);
    return undefined;
  }
}

/** Whether `text` takes more than `max` bytes in UTF-8 (encoded only when it might). */
export function overPayload(text: string, max: number): boolean {
  return text.length * 3 > max && encoder.encode(text).length > max;
}

/** Whether a NATS request failed because nobody subscribes to its subject. */
export function noResponders(error: unknown): boolean {
  return error instanceof RequestError && error.isNoResponders();
}
