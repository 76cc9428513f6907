/**
 * The loss ledger, on the origin's side: what became of each request this server sent to a
 * worker of another server.
 *
 * NATS keeps the order of the messages one connection sends to another, and nothing more: a
 * message can be lost when a connection breaks. So the ledger counts, per request, the progress
 * reports it has read (each is numbered; the answer says how many came before it), and every
 * `probeMs` it asks the worker's server, for the requests sent at least that long ago, which it
 * still holds and how many reports it has sent for each. That question travels after the
 * requests, and its reply after every answer and report published before it, so:
 *
 * - a request the worker's server does not hold, and whose answer did not come, was lost (on
 *   the way there, or its answer on the way back); if that server finished it lately, its reply
 *   carries the answer, which then counts as if it had arrived;
 * - a numbered report that skips one, an answer after fewer reports than it says, or a reply
 *   saying more reports were sent than were read, means a streamed item was lost: the ledger
 *   asks the worker's server for the missing reports (it keeps them until a while after the
 *   request ends) and takes them in order, so the items are not run again.
 *
 * A lost request moves at once (retriable, with only its unfinished items) or fails with
 * `WORKER_LOST`, as when its worker leaves. When nobody listens at the worker's server, NATS
 * answers "no responders": that server takes no new work until it is heard again. One that does
 * not answer at all (frozen, cut off) is written off by the membership after `deadAfterMs` of
 * silence.
 *
 * @module
 */

import type { Msg } from "npm:@nats-io/transport-node@3.4.0";
import { logger } from "../log.ts";
import { type LinkContext, noResponders, readJson } from "./context.ts";
import type { RemotePeer, SentRequest } from "./remote_peer.ts";
import {
  type HeldReply,
  originHeaders,
  type RelayAnswer,
  type RelayProgress,
  type ReplayReply,
} from "./wire.ts";

const log = logger("cluster");

/** What the ledger needs from the rest of the link. */
export interface LedgerHooks {
  /** Takes an answer that came inside a loss-check or replay reply. */
  complete(peer: RemotePeer, msgId: string, answer: RelayAnswer): void;
  /** Takes a progress report that came inside a replay reply. */
  progress(peer: RemotePeer, msgId: string, report: RelayProgress): void;
  /** Publishes what waits in the outbox for the end of this turn: a check must come after it. */
  flush(): void;
  /** Tells the worker's server to stop working on a request. */
  cancel(peer: RemotePeer, msgId: string, reason: string): void;
  /** Nobody listens at the worker's server: no new work for it until it is heard. */
  suspect(server: string, reason: string): void;
  /** The name of a server, for logs. */
  nameOf(server: string): string;
}

/** See the module doc. */
export class Ledger {
  #ctx: LinkContext;
  #hooks: LedgerHooks;
  #probeMs: number;
  /** Every request in the ledger: its worker. */
  #pending = new Map<string, RemotePeer>();
  /** Servers whose loss check is under way. */
  #probing = new Set<string>();

  constructor(ctx: LinkContext, hooks: LedgerHooks, probeMs: number) {
    this.#ctx = ctx;
    this.#hooks = hooks;
    this.#probeMs = probeMs;
  }

  /** Requests in the ledger. */
  get size(): number {
    return this.#pending.size;
  }

  /** A request went to NATS for `peer`. */
  sent(peer: RemotePeer, msgId: string): void {
    peer.sent.set(msgId, { at: this.#ctx.core.clock.now(), progress: 0 });
    this.#pending.set(msgId, peer);
  }

  /** The worker a pending request went to. */
  peerOf(msgId: string): RemotePeer | undefined {
    return this.#pending.get(msgId);
  }

  /**
   * Progress report number `seq` came: true to take it, false when it is not the next one (an
   * earlier one was lost: the request moves) or the request is no longer waited for.
   */
  progress(peer: RemotePeer, msgId: string, seq: number): boolean {
    const sent = peer.sent.get(msgId);
    // Not waited for, read already, or about to come in a replay.
    if (!sent || seq <= sent.progress || sent.replaying) return false;
    if (seq !== sent.progress + 1) {
      this.#replay(peer, msgId, sent);
      return false;
    }
    sent.progress = seq;
    return true;
  }

  /**
   * The answer came after `reports` progress reports: true to take it now; false when the
   * request is no longer waited for, or some report never arrived (the ledger fetches the
   * missing ones and then takes the answer itself).
   */
  answer(
    peer: RemotePeer,
    msgId: string,
    reports: number,
    answer: RelayAnswer,
  ): boolean {
    const sent = peer.sent.get(msgId);
    if (!sent) return false;
    if (sent.replaying || reports > sent.progress) {
      sent.answer = [reports, answer];
      this.#replay(peer, msgId, sent);
      return false;
    }
    this.forget(peer, msgId);
    return true;
  }

  /** Asks the worker's server for the reports after the last one read, and takes them. */
  #replay(peer: RemotePeer, msgId: string, sent: SentRequest): void {
    const nc = this.#ctx.nc();
    if (sent.replaying) return;
    // Asked again at the next check: NATS may be down for a moment.
    sent.gap = true;
    if (!nc || nc.isClosed()) return;
    sent.replaying = true;
    const from = sent.progress + 1;
    const h = originHeaders(this.#ctx.id);
    this.#hooks.flush();
    nc.request(
      this.#ctx.subjects.server(peer.server, "replay"),
      JSON.stringify({ m: msgId, f: from }),
      { timeout: Math.max(1000, 2 * this.#probeMs), headers: h },
    ).then((msg) => {
      sent.replaying = false;
      if (peer.sent.get(msgId) !== sent) return;
      sent.gap = false;
      const reply = msg.json<ReplayReply>();
      if (!reply.found) {
        return this.lost(peer, msgId, "progress reports were lost");
      }
      log.info(
        "Request {msgId} to worker {worker} on {server}: {n} progress reports fetched again",
        { msgId, worker: peer.id, server: peer.serverName, n: reply.p.length },
      );
      reply.p.forEach((report, i) => {
        if (from + i !== sent.progress + 1) return;
        sent.progress++;
        this.#hooks.progress(peer, msgId, report);
      });
      const answer = sent.answer ??
        (reply.a
          ? [reply.a[1], reply.a[0]] as [number, RelayAnswer]
          : undefined);
      if (!answer) return;
      sent.answer = undefined;
      if (answer[0] > sent.progress) {
        return this.lost(peer, msgId, "progress reports were lost");
      }
      this.forget(peer, msgId);
      this.#hooks.complete(peer, msgId, answer[1]);
    }, () => {
      // No answer, or nobody listening there for the moment: the next check asks again; a
      // server that stays away is written off, and its requests move with its workers.
      sent.replaying = false;
    });
  }

  /** A request leaves the ledger (answered, or its worker is gone). */
  forget(peer: RemotePeer, msgId: string): void {
    peer.sent.delete(msgId);
    this.#pending.delete(msgId);
  }

  /** Every request of `peer` leaves the ledger. */
  forgetPeer(peer: RemotePeer): void {
    for (const msgId of peer.sent.keys()) this.#pending.delete(msgId);
    peer.sent.clear();
  }

  /** NATS is back: what was buffered went out only now, so the clock restarts for all. */
  reconnected(): void {
    const now = this.#ctx.core.clock.now();
    for (const peer of this.#pending.values()) {
      for (const sent of peer.sent.values()) sent.at = now;
    }
  }

  /** A request is lost: the worker's server stops it, and the dispatcher moves it. */
  lost(peer: RemotePeer, msgId: string, reason: string): void {
    this.forget(peer, msgId);
    this.#hooks.cancel(peer, msgId, "lost between servers");
    this.#move(peer, msgId, reason);
  }

  #move(peer: RemotePeer, msgId: string, reason: string): void {
    log.warn(
      "Request {msgId} to worker {worker} on {server}: {reason}; moving it",
      { msgId, worker: peer.id, server: peer.serverName, reason },
    );
    this.#ctx.core.dispatcher.jobLost(
      peer,
      msgId,
      `Request lost between servers ${this.#ctx.serverName} and ${peer.serverName}: ${reason}`,
    );
  }

  /** Asks each worker's server about the requests sent to it at least `probeMs` ago. */
  check(): void {
    const nc = this.#ctx.nc();
    if (!nc || nc.isClosed() || this.#pending.size === 0) return;
    const now = this.#ctx.core.clock.now();
    const due = new Map<string, string[]>();
    for (const [msgId, peer] of this.#pending) {
      const sent = peer.sent.get(msgId);
      if (!sent || !peer.jobs.has(msgId)) {
        // Settled here (deadline, cancel) without an answer from there.
        this.forget(peer, msgId);
        continue;
      }
      if (sent.gap) {
        this.#replay(peer, msgId, sent);
        continue;
      }
      if (now - sent.at < this.#probeMs || this.#probing.has(peer.server)) {
        continue;
      }
      const ids = due.get(peer.server);
      if (ids) ids.push(msgId);
      else due.set(peer.server, [msgId]);
    }
    if (due.size > 0) this.#hooks.flush();
    for (const [server, ids] of due) {
      this.#probing.add(server);
      const h = originHeaders(this.#ctx.id);
      nc.request(
        this.#ctx.subjects.server(server, "held"),
        JSON.stringify(ids),
        { timeout: Math.max(1000, 2 * this.#probeMs), headers: h },
      ).then(
        (msg) => this.#onHeld(ids, msg),
        (error) => {
          if (noResponders(error)) {
            this.#hooks.suspect(
              server,
              `no responders at server ${this.#hooks.nameOf(server)}`,
            );
          }
          // A timeout says nothing the membership's silence check will not say.
        },
      ).finally(() => this.#probing.delete(server));
    }
  }

  #onHeld(ids: string[], msg: Msg): void {
    const reply = readJson<HeldReply>(msg, "loss-check reply");
    if (reply === undefined) return;
    for (const msgId of ids) {
      const peer = this.#pending.get(msgId);
      const sent = peer?.sent.get(msgId);
      if (!peer || !sent) continue;
      const reports = reply.held?.[msgId];
      if (reports !== undefined) {
        if (reports > sent.progress) this.#replay(peer, msgId, sent);
        continue;
      }
      const done = reply.done?.[msgId];
      if (done) {
        // Its answer was lost on the way; the worker's server kept it.
        if (this.answer(peer, msgId, done[1], done[0])) {
          this.#hooks.complete(peer, msgId, done[0]);
        }
        continue;
      }
      // An answer held for a replay under way is not lost.
      if (sent.replaying || sent.gap || sent.answer) continue;
      this.lost(
        peer,
        msgId,
        "the worker's server does not hold it and its answer never came",
      );
    }
  }
}
