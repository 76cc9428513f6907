/**
 * The relay, on the worker's server's side: other servers' requests to this server's workers.
 *
 * A request comes on this server's `req` subject (see `relay.ts` for the origin's side). It runs
 * through this server's own dispatcher for that one worker, held no longer than its caller has
 * left, so the worker sees an ordinary request with its deadline, cancel and progress. Numbered
 * progress reports and then the answer go to the request's reply subject. The reports are kept
 * until a while after the request ends, and the answer too (`reply_log.ts`), so that the
 * origin's loss check and replay (`ledger.ts`) can ask after what it missed.
 *
 * @module
 */

import type { Msg } from "npm:@nats-io/transport-node@3.4.0";
import { Cancellation } from "../_cancel.ts";
import { ErrorCode } from "../errors.ts";
import { logger } from "../log.ts";
import {
  decodeEnvelope,
  type Envelope,
  MessageType,
  readRequestData,
} from "../protocol.ts";
import type { Outcome } from "../broker/dispatcher.ts";
import { type LinkContext, overPayload, readJson } from "./context.ts";
import type { Outbox } from "./outbox.ts";
import { RemotePeer } from "./remote_peer.ts";
import { relayKey, ReplyLog } from "./reply_log.ts";
import type { RelayAnswer, RelayProgress } from "./wire.ts";
import { readOrigin, readRequestHeaders, replyHeaders } from "./wire.ts";

const log = logger("cluster");

/** A request another server sent one of this server's workers. */
interface Relayed {
  origin: string;
  worker: string;
  msgId: string;
  reply: string;
  cancel: Cancellation;
  /** Progress reports sent, kept for a replay, and their size in characters. */
  reports: RelayProgress[];
  chars: number;
}

/** See the module doc. */
export class RelayedRequests {
  #ctx: LinkContext;
  #outbox: Outbox;
  /** Other servers' requests this server holds, by {@linkcode relayKey}. */
  #relayed = new Map<string, Relayed>();
  /** What was published on their reply subjects, for loss checks. */
  #log: ReplyLog;

  /** Other servers' requests to the workers of the link `ctx`, answered through `outbox`. */
  constructor(ctx: LinkContext, outbox: Outbox) {
    this.#ctx = ctx;
    this.#outbox = outbox;
    this.#log = new ReplyLog(ctx.core.clock, (key) => this.#relayed.get(key));
  }

  /** A request from another server for one of this server's workers. */
  onRequest(msg: Msg): void {
    const { origin, worker: workerId, left } = readRequestHeaders(msg.headers);
    const reply = msg.reply;
    if (!origin || !reply) {
      return log.warn("Ignored a cluster request without its headers");
    }
    let envelope: Envelope;
    try {
      envelope = decodeEnvelope(msg.string());
    } catch (error) {
      return log.warn("Ignored a malformed cluster request: {error}", {
        error: (error as Error).message,
      });
    }
    const msgId = envelope.msg_id;
    if (envelope.type !== MessageType.REQUEST || !msgId) return;
    const key = relayKey(origin, msgId);
    // NATS delivers once; a request seen already is ignored rather than run twice.
    if (this.#relayed.has(key) || this.#log.finished(key)) return;
    const fail = (code: string, e: string) =>
      this.#answer(reply, key, { s: false, e, c: code }, [], 0);
    const worker = this.#ctx.core.dispatcher.registry.get(workerId);
    if (!worker || worker instanceof RemotePeer) {
      return fail(
        ErrorCode.WORKER_LOST,
        `Worker '${workerId}' is no longer attached to server ${this.#ctx.serverName}`,
      );
    }
    if (this.#ctx.core.draining) {
      return fail(
        ErrorCode.SHUTTING_DOWN,
        `Server ${this.#ctx.serverName} is shutting down`,
      );
    }
    let request;
    try {
      request = readRequestData(envelope.data);
    } catch (error) {
      return fail(ErrorCode.INVALID_FRAME, (error as Error).message);
    }
    const stream = (envelope.data as { stream?: unknown }).stream === true;
    const r: Relayed = {
      origin,
      worker: workerId,
      msgId,
      reply,
      cancel: new Cancellation(),
      reports: [],
      chars: 0,
    };
    this.#relayed.set(key, r);
    this.#ctx.core.dispatcher.dispatch(
      request.action,
      request.params,
      {
        // Held only as long as its caller waits.
        deadline: this.#ctx.core.clock.now() + (left > 0 ? left : 30_000),
        only: workerId,
        signal: r.cancel,
        onProgress: (p) => {
          if (r.cancel.aborted) return;
          const report: RelayProgress = { d: p.done, t: p.total, i: p.item };
          const body = JSON.stringify(report);
          // Kept until a while after the request ends, in case the origin misses one.
          r.reports.push(report);
          r.chars += body.length;
          this.#publish(r.reply, "p", r.reports.length, body);
        },
        resend: stream ? () => request.params : undefined,
      },
      (outcome) => this.#finish(key, r, outcome),
    );
  }

  #finish(key: string, r: Relayed, outcome: Outcome): void {
    if (this.#relayed.get(key) === r) this.#relayed.delete(key);
    if (r.cancel.aborted) return;
    this.#answer(
      r.reply,
      key,
      outcome.ok ? { s: true, r: outcome.result } : {
        s: false,
        e: outcome.error.message,
        c: outcome.error.code,
      },
      r.reports,
      r.chars,
    );
  }

  #answer(
    reply: string,
    key: string,
    a: RelayAnswer,
    reports: RelayProgress[],
    reportChars: number,
  ): void {
    let body = JSON.stringify(a);
    const max = this.#ctx.nc()?.info?.max_payload ?? Infinity;
    if (overPayload(body, max)) {
      a = {
        s: false,
        e: `Answer too large to cross servers: ${body.length} bytes (NATS max_payload ${max})`,
        c: ErrorCode.FRAME_TOO_LARGE,
      };
      body = JSON.stringify(a);
    }
    this.#log.keep(key, a, reports, body.length + reportChars);
    this.#publish(reply, "a", reports.length, body);
  }

  #publish(
    reply: string,
    kind: "p" | "a",
    seq: number,
    body: string,
  ): void {
    const nc = this.#ctx.nc();
    if (!nc || nc.isClosed()) return;
    this.#outbox.publish(reply, body, { headers: replyHeaders(kind, seq) });
  }

  /** The origin gave up on a request. */
  onCancel(msg: Msg): void {
    const origin = readOrigin(msg.headers);
    const key = relayKey(origin, msg.string());
    const r = this.#relayed.get(key);
    if (!r) return;
    this.#relayed.delete(key);
    r.cancel.abort();
  }

  /** The origin's loss check: which of these do you hold? */
  onHeld(msg: Msg): void {
    const origin = readOrigin(msg.headers);
    const ids = readJson<unknown>(msg, "loss check");
    if (!Array.isArray(ids)) return;
    const reply = this.#log.held(origin, ids);
    // Behind every answer and report published before it.
    this.#outbox.flush();
    msg.respond(JSON.stringify(reply));
  }

  /** The origin missed progress reports: sends them again, from the one it asks for. */
  onReplay(msg: Msg): void {
    const origin = readOrigin(msg.headers);
    const ask = readJson<{ m?: unknown; f?: unknown }>(msg, "replay request");
    if (ask === undefined) return;
    const reply = this.#log.replay(origin, ask.m, ask.f);
    this.#outbox.flush();
    msg.respond(JSON.stringify(reply));
  }

  /** Per worker, how many requests each origin server has on it here (for load reports). */
  byWorker(): Map<string, Record<string, number>> {
    const by = new Map<string, Record<string, number>>();
    for (const r of this.#relayed.values()) {
      const counts = by.get(r.worker) ?? {};
      counts[r.origin] = (counts[r.origin] ?? 0) + 1;
      by.set(r.worker, counts);
    }
    return by;
  }

  /**
   * Server `origin` was written off: the requests it sent here have nobody to answer to, so
   * they stop. Requests of other servers are not touched.
   */
  cancelFrom(origin: string): number {
    let n = 0;
    for (const [key, r] of [...this.#relayed]) {
      if (r.origin !== origin) continue;
      this.#relayed.delete(key);
      r.cancel.abort();
      n++;
    }
    return n;
  }

  /** Other servers' requests held here now. */
  get held(): number {
    return this.#relayed.size;
  }

  /** Stops every relayed request (this server is leaving). */
  close(): void {
    for (const r of this.#relayed.values()) r.cancel.abort();
    this.#relayed.clear();
  }
}
