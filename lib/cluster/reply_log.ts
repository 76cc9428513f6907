/**
 * The reply log, on the worker's server's side: what this server published on the reply
 * subjects of other servers' requests, kept for the origin's loss check and replay (see
 * `ledger.ts`).
 *
 * It answers the two questions the origin asks: which of these requests do you hold (with how
 * many progress reports sent), and send the reports of one again from number `f` on. A request
 * still running has its reports in its own record (`relayed.ts`), which the log reads through
 * `live`; a finished one leaves its answer and reports here for a while, so an answer lost on
 * the way back is taken from the loss check's reply and the request does not run again.
 *
 * @module
 */

import type { Clock } from "../broker/registry.ts";
import type {
  HeldReply,
  RelayAnswer,
  RelayProgress,
  ReplayReply,
} from "./wire.ts";

/**
 * How long a finished request's answer is kept for a loss check that may ask for it, in ms: the
 * origin asks within a few `probeMs` of a NATS blip (which lasts less than `deadAfterMs`).
 */
const KEEP_ANSWERS_MS = 15_000;
/** The most answers kept. */
const KEEP_ANSWERS = 100_000;
/** The most characters of kept answers. */
const KEEP_ANSWERS_CHARS = 16 * 1024 * 1024;

/** The key of a relayed request: its origin server's id and its `msg_id`. */
export function relayKey(origin: string, msgId: unknown): string {
  return `${origin}\u0000${msgId}`;
}

/** The progress reports a request has published so far. */
export interface PublishedReports {
  /** The reports, in order: report `n` is `reports[n - 1]`. */
  reports: RelayProgress[];
}

/** A finished request, as kept. */
interface Kept {
  at: number;
  answer: RelayAnswer;
  reports: RelayProgress[];
  chars: number;
}

/** See the module doc. */
export class ReplyLog {
  #clock: Clock;
  #live: (key: string) => PublishedReports | undefined;
  /** Finished requests by {@linkcode relayKey}, oldest first. */
  #kept = new Map<string, Kept>();
  #chars = 0;

  /**
   * A log whose answers' age `clock` tells; `live` gives the reports of a request still
   * running.
   */
  constructor(
    clock: Clock,
    live: (key: string) => PublishedReports | undefined,
  ) {
    this.#clock = clock;
    this.#live = live;
  }

  /** Whether the request of `key` finished lately (its answer is kept). */
  finished(key: string): boolean {
    return this.#kept.has(key);
  }

  /**
   * Keeps the answer of a finished request for a while, with the reports published before it;
   * `chars` is their size. The oldest go once there are too many, too large or too old.
   */
  keep(
    key: string,
    answer: RelayAnswer,
    reports: RelayProgress[],
    chars: number,
  ): void {
    const now = this.#clock.now();
    this.#kept.set(key, { at: now, answer, reports, chars });
    this.#chars += chars;
    for (const [k, d] of this.#kept) {
      if (
        this.#chars <= KEEP_ANSWERS_CHARS &&
        this.#kept.size <= KEEP_ANSWERS && now - d.at <= KEEP_ANSWERS_MS
      ) break;
      this.#kept.delete(k);
      this.#chars -= d.chars;
    }
  }

  /** The loss check of server `origin`: which of requests `ids` this server holds or finished. */
  held(origin: string, ids: unknown[]): HeldReply {
    const reply: HeldReply = { held: {} };
    for (const id of ids) {
      const key = relayKey(origin, id);
      const r = this.#live(key);
      if (r) {
        reply.held[String(id)] = r.reports.length;
        continue;
      }
      const done = this.#kept.get(key);
      if (done) {
        (reply.done ??= {})[String(id)] = [done.answer, done.reports.length];
      }
    }
    return reply;
  }

  /**
   * The replay server `origin` asks for: request `msgId`'s reports from number `from` on, and
   * its answer if it has finished.
   */
  replay(origin: string, msgId: unknown, from: unknown): ReplayReply {
    const key = relayKey(origin, msgId);
    const first = Math.max(1, Number(from) || 1);
    const r = this.#live(key);
    const done = r ? undefined : this.#kept.get(key);
    const reports = r?.reports ?? done?.reports;
    return reports
      ? {
        found: true,
        p: reports.slice(first - 1),
        ...(done ? { a: [done.answer, done.reports.length] } : {}),
      }
      : { found: false, p: [] };
  }
}
