/**
 * The relay: requests from this server to other servers' workers, and other servers' requests
 * to this server's workers, over NATS request-reply.
 *
 * The origin publishes the worker-protocol envelope to the worker's server's `req` subject with
 * a reply subject of its own for that request, and its id, the worker's and the time its caller
 * has left in NATS headers. A server that is not on NATS has no subscription there, so NATS
 * answers "no responders" at once: the request moves to another worker (it never arrived, so it
 * cannot run twice) and that server takes no new work until it is heard again. The worker's
 * server runs the request through its own dispatcher for that one worker, holding it no longer
 * than the caller has left, and publishes numbered progress reports and then the answer to the
 * reply subject. The ledger (`ledger.ts`) checks that nothing was lost on the way.
 *
 * @module
 */

import {
  headers,
  type Msg,
  type MsgHdrs,
} from "npm:@nats-io/transport-node@3.4.0";
import { setImmediate } from "node:timers";
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
import type { LinkContext } from "./context.ts";
import type { Ledger } from "./ledger.ts";
import { RemotePeer } from "./remote_peer.ts";
import {
  H_KIND,
  H_LEFT,
  H_ORIGIN,
  H_SEQ,
  H_WORKER,
  type HeldReply,
  type RelayAnswer,
  type RelayProgress,
  type ReplayReply,
} from "./wire.ts";

const log = logger("cluster");
const encoder = new TextEncoder();

/**
 * How long a finished request's answer is kept for a loss check that may ask for it, in ms: the
 * origin asks within a few `probeMs` of a NATS blip (which lasts less than `deadAfterMs`).
 */
const KEEP_ANSWERS_MS = 15_000;
/** The most answers kept. */
const KEEP_ANSWERS = 100_000;
/** The most characters of kept answers. */
const KEEP_ANSWERS_CHARS = 16 * 1024 * 1024;

/** What the relay needs from the rest of the link. */
export interface RelayHooks {
  /** Nobody listens at the worker's server: no new work for it until it is heard. */
  suspect(server: string, reason: string): void;
  /** A worker is gone from its server: drop it here. */
  workerGone(peer: RemotePeer, reason: string): void;
}

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
export class Relay {
  #ctx: LinkContext;
  #ledger: Ledger;
  #hooks: RelayHooks;
  /** Other servers' requests this server holds, by `<origin>\0<msg_id>`. */
  #relayed = new Map<string, Relayed>();
  /** Answers of other servers' requests finished lately, oldest first, for loss checks. */
  #done = new Map<
    string,
    {
      at: number;
      answer: RelayAnswer;
      reports: RelayProgress[];
      chars: number;
    }
  >();
  #doneChars = 0;
  #repliesPrefix: string;
  /** Subjects, bodies and options to publish at the end of this turn. */
  #outbox: [string, string, { reply?: string; headers: MsgHdrs }][] = [];

  constructor(ctx: LinkContext, ledger: Ledger, hooks: RelayHooks) {
    this.#ctx = ctx;
    this.#ledger = ledger;
    this.#hooks = hooks;
    this.#repliesPrefix = ctx.subjects.reply(ctx.id, "");
  }

  // ---- this server's requests to other servers' workers ---------------------------------------

  /** Sends a worker-protocol frame the dispatcher wrote for `peer` (a request or a cancel). */
  send(peer: RemotePeer, frame: string): void {
    const nc = this.#ctx.nc();
    if (!nc || nc.isClosed()) {
      // The dispatcher takes a throw as "this worker is unreachable" and places the job again.
      throw new Error("The cluster link is closed");
    }
    if (frame.startsWith(`{"type":"${MessageType.CANCEL}"`)) {
      const msgId = /"request_id":"([^"]+)"/.exec(frame)?.[1];
      if (msgId) this.cancel(peer, msgId, "cancelled");
      return;
    }
    // The envelope's msg_id is its second field (encodeEnvelope).
    const msgId = /^\{"type":"[^"]*","msg_id":"([^"]+)"/.exec(frame)?.[1];
    if (!msgId) throw new Error("A relayed frame without a msg_id");
    const max = nc.info?.max_payload ?? Infinity;
    if (frame.length * 3 > max && encoder.encode(frame).length > max) {
      throw new Error(
        `Request too large to cross servers (NATS max_payload ${max} bytes)`,
      );
    }
    const job = peer.jobs.get(msgId);
    const left = job
      ? Math.max(1, Math.round(job.deadline - this.#ctx.core.clock.now()))
      : 30_000;
    const h = headers();
    h.set(H_ORIGIN, this.#ctx.id);
    h.set(H_WORKER, peer.id);
    h.set(H_LEFT, String(left));
    this.#ledger.sent(peer, msgId);
    this.#enqueue(this.#ctx.subjects.server(peer.server, "req"), frame, {
      reply: this.#ctx.subjects.reply(this.#ctx.id, msgId),
      headers: h,
    });
  }

  /**
   * Publishes at the end of this turn of the event loop, with whatever else this turn publishes.
   * Each stays a NATS message of its own, but the client then writes them to its socket at once:
   * it flushes after each microtask checkpoint, and answers from workers arrive one task each, so
   * publishing at once would cost one socket write per answer (the largest cost of a crossing).
   */
  #enqueue(
    subject: string,
    body: string,
    options: { reply?: string; headers: MsgHdrs },
  ): void {
    this.#outbox.push([subject, body, options]);
    if (this.#outbox.length === 1) setImmediate(this.flush);
  }

  /**
   * Publishes what waits in the outbox now. Called before anything that must come after it on
   * NATS: a loss check and its reply travel behind the requests and answers published before.
   */
  readonly flush = (): void => {
    const out = this.#outbox;
    if (out.length === 0) return;
    this.#outbox = [];
    const nc = this.#ctx.nc();
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

  /** Tells `peer`'s server to stop working on request `msgId`. */
  cancel(peer: RemotePeer, msgId: string, reason: string): void {
    const nc = this.#ctx.nc();
    if (!nc || nc.isClosed()) return;
    const h = headers();
    h.set(H_ORIGIN, this.#ctx.id);
    log.debug("Cancelling {msgId} on {server}: {reason}", {
      msgId,
      server: peer.serverName,
      reason,
    });
    this.#enqueue(this.#ctx.subjects.server(peer.server, "cancel"), msgId, {
      headers: h,
    });
  }

  /** A progress report, an answer, or NATS's "no responders", on one of this server's replies. */
  onReply(msg: Msg): void {
    const msgId = msg.subject.slice(this.#repliesPrefix.length);
    const peer = this.#ledger.peerOf(msgId);
    if (!peer) return;
    const h = msg.headers;
    if (msg.data.length === 0 && h?.code === 503) {
      // Nobody subscribes to that server's requests: it is dead, or off NATS for a moment. This
      // request never reached it, so it moves at once and cannot run twice.
      this.#hooks.suspect(
        peer.server,
        `no responders at server ${peer.serverName}`,
      );
      this.#ledger.forget(peer, msgId);
      this.#ctx.core.dispatcher.jobLost(
        peer,
        msgId,
        `Server ${peer.serverName} is not on NATS`,
      );
      return;
    }
    const seq = Number(h?.get(H_SEQ) ?? 0);
    try {
      if (h?.get(H_KIND) === "p") {
        if (!this.#ledger.progress(peer, msgId, seq)) return;
        this.progress(peer, msgId, msg.json<RelayProgress>());
      } else {
        const answer = msg.json<RelayAnswer>();
        if (this.#ledger.answer(peer, msgId, seq, answer)) {
          this.complete(peer, msgId, answer);
        }
      }
    } catch (error) {
      log.warn("Ignored a malformed cluster reply: {error}", {
        error: (error as Error).message,
      });
    }
  }

  /** Takes a progress report for request `msgId` from `peer`'s server. */
  progress(peer: RemotePeer, msgId: string, p: RelayProgress): void {
    this.#ctx.core.dispatcher.progress(peer, msgId, {
      done: p.d,
      total: p.t,
      item: p.i,
    });
  }

  /** Takes the answer to request `msgId` from `peer`'s server. */
  complete(peer: RemotePeer, msgId: string, a: RelayAnswer): void {
    if (
      !a.s && (a.c === ErrorCode.WORKER_LOST || a.c === ErrorCode.NO_WORKERS ||
        a.c === ErrorCode.SHUTTING_DOWN)
    ) {
      // The worker is gone from its server (or that server is going): whatever else this server
      // sent it moves too, without waiting for the registry to say so.
      this.#hooks.workerGone(peer, a.e ?? "it left its server");
      return;
    }
    this.#ctx.core.dispatcher.complete(peer, {
      request_id: msgId,
      success: a.s,
      result: a.r ?? null,
      error: a.e ?? null,
      error_code: a.c,
    });
  }

  // ---- other servers' requests to this server's workers ---------------------------------------

  /** A request from another server for one of this server's workers. */
  onRequest(msg: Msg): void {
    const h = msg.headers;
    const origin = h?.get(H_ORIGIN) ?? "";
    const workerId = h?.get(H_WORKER) ?? "";
    const left = Number(h?.get(H_LEFT) ?? 0);
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
    const key = `${origin}\u0000${msgId}`;
    // NATS delivers once; a request seen already is ignored rather than run twice.
    if (this.#relayed.has(key) || this.#done.has(key)) return;
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
    if (body.length * 3 > max && encoder.encode(body).length > max) {
      a = {
        s: false,
        e: `Answer too large to cross servers: ${body.length} bytes (NATS max_payload ${max})`,
        c: ErrorCode.FRAME_TOO_LARGE,
      };
      body = JSON.stringify(a);
    }
    this.#keep(key, a, reports, body.length + reportChars);
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
    const h: MsgHdrs = headers();
    h.set(H_KIND, kind);
    h.set(H_SEQ, String(seq));
    this.#enqueue(reply, body, { headers: h });
  }

  /** Keeps an answer for a while, for a loss check asking after it. */
  #keep(
    key: string,
    answer: RelayAnswer,
    reports: RelayProgress[],
    chars: number,
  ): void {
    const now = this.#ctx.core.clock.now();
    this.#done.set(key, { at: now, answer, reports, chars });
    this.#doneChars += chars;
    for (const [k, d] of this.#done) {
      if (
        this.#doneChars <= KEEP_ANSWERS_CHARS &&
        this.#done.size <= KEEP_ANSWERS && now - d.at <= KEEP_ANSWERS_MS
      ) break;
      this.#done.delete(k);
      this.#doneChars -= d.chars;
    }
  }

  /** The origin gave up on a request. */
  onCancel(msg: Msg): void {
    const origin = msg.headers?.get(H_ORIGIN) ?? "";
    const key = `${origin}\u0000${msg.string()}`;
    const r = this.#relayed.get(key);
    if (!r) return;
    this.#relayed.delete(key);
    r.cancel.abort();
  }

  /** The origin's loss check: which of these do you hold? */
  onHeld(msg: Msg): void {
    const origin = msg.headers?.get(H_ORIGIN) ?? "";
    let ids: unknown;
    try {
      ids = msg.json();
    } catch {
      return log.warn("Ignored a malformed loss check");
    }
    if (!Array.isArray(ids)) return;
    const reply: HeldReply = { held: {} };
    for (const id of ids) {
      const key = `${origin}\u0000${id}`;
      const r = this.#relayed.get(key);
      if (r) {
        reply.held[String(id)] = r.reports.length;
        continue;
      }
      const done = this.#done.get(key);
      if (done) {
        (reply.done ??= {})[String(id)] = [done.answer, done.reports.length];
      }
    }
    // Behind every answer and report published before it.
    this.flush();
    msg.respond(JSON.stringify(reply));
  }

  /** The origin missed progress reports: sends them again, from the one it asks for. */
  onReplay(msg: Msg): void {
    const origin = msg.headers?.get(H_ORIGIN) ?? "";
    let ask: { m?: unknown; f?: unknown };
    try {
      ask = msg.json();
    } catch {
      return log.warn("Ignored a malformed replay request");
    }
    const key = `${origin}\u0000${ask.m}`;
    const from = Math.max(1, Number(ask.f) || 1);
    const r = this.#relayed.get(key);
    const done = r ? undefined : this.#done.get(key);
    const reports = r?.reports ?? done?.reports;
    const reply: ReplayReply = reports
      ? {
        found: true,
        p: reports.slice(from - 1),
        ...(done ? { a: [done.answer, done.reports.length] } : {}),
      }
      : { found: false, p: [] };
    this.flush();
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
