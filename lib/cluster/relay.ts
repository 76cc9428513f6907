/**
 * The relay, on the origin's side: this server's requests to other servers' workers, over NATS
 * request-reply.
 *
 * The origin publishes the worker-protocol envelope to the worker's server's `req` subject with
 * a reply subject of its own for that request, and its id, the worker's and the time its caller
 * has left in NATS headers. A server that is not on NATS has no subscription there, so NATS
 * answers "no responders" at once: the request moves to another worker (it never arrived, so it
 * cannot run twice) and that server takes no new work until it is heard again. The worker's
 * server (`relayed.ts`) runs the request and publishes numbered progress reports and then the
 * answer to the reply subject. The ledger (`ledger.ts`) checks that nothing was lost on the way.
 *
 * @module
 */

import type { Msg } from "npm:@nats-io/transport-node@3.4.0";
import { ErrorCode } from "../errors.ts";
import { logger } from "../log.ts";
import { MessageType } from "../protocol.ts";
import { type LinkContext, overPayload } from "./context.ts";
import type { Ledger } from "./ledger.ts";
import type { Outbox } from "./outbox.ts";
import type { RemotePeer } from "./remote_peer.ts";
import type { RelayAnswer, RelayProgress } from "./wire.ts";
import { originHeaders, readReplyHeaders, requestHeaders } from "./wire.ts";

const log = logger("cluster");

/** What the relay needs from the rest of the link. */
export interface RelayOptions {
  /** Records what the relay sends and what comes back, for the loss check. */
  ledger: Ledger;
  /** Publishes what the relay sends, at the end of this turn. */
  outbox: Outbox;
  /** Nobody listens at the worker's server: no new work for it until it is heard. */
  suspect(server: string, reason: string): void;
  /** A worker is gone from its server: drop it here. */
  workerGone(peer: RemotePeer, reason: string): void;
}

/** See the module doc. */
export class Relay {
  #ctx: LinkContext;
  #ledger: Ledger;
  #outbox: Outbox;
  #options: RelayOptions;
  #repliesPrefix: string;

  /** A relay for the link `ctx`, with the parts of the link `options` gives. */
  constructor(ctx: LinkContext, options: RelayOptions) {
    this.#ctx = ctx;
    this.#ledger = options.ledger;
    this.#outbox = options.outbox;
    this.#options = options;
    this.#repliesPrefix = ctx.subjects.reply(ctx.id, "");
  }

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
    if (overPayload(frame, max)) {
      throw new Error(
        `Request too large to cross servers (NATS max_payload ${max} bytes)`,
      );
    }
    const job = peer.jobs.get(msgId);
    const left = job
      ? Math.max(1, Math.round(job.deadline - this.#ctx.core.clock.now()))
      : 30_000;
    const h = requestHeaders({ origin: this.#ctx.id, worker: peer.id, left });
    this.#ledger.sent(peer, msgId);
    this.#outbox.publish(this.#ctx.subjects.server(peer.server, "req"), frame, {
      reply: this.#ctx.subjects.reply(this.#ctx.id, msgId),
      headers: h,
    });
  }

  /** Tells `peer`'s server to stop working on request `msgId`. */
  cancel(peer: RemotePeer, msgId: string, reason: string): void {
    const nc = this.#ctx.nc();
    if (!nc || nc.isClosed()) return;
    const h = originHeaders(this.#ctx.id);
    log.debug("Cancelling {msgId} on {server}: {reason}", {
      msgId,
      server: peer.serverName,
      reason,
    });
    this.#outbox.publish(
      this.#ctx.subjects.server(peer.server, "cancel"),
      msgId,
      {
        headers: h,
      },
    );
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
      this.#options.suspect(
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
    const { progress, seq } = readReplyHeaders(h);
    try {
      if (progress) {
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
      this.#options.workerGone(peer, a.e ?? "it left its server");
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
}
