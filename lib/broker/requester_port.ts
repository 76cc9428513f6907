/**
 * The requester port: accepts requester connections (and HTTP callers, as connections of their
 * own), reads their frames and hands each admitted request to {@linkcode Requests}, dropping
 * requesters that stop reading.
 *
 * Its parts, one file each: `requester_frames.ts` (frame validation), `requests.ts` (running a
 * request and answering it), `requester_batch.ts` (a `get_markets` batch),
 * `requester_actions.ts` (server actions) and `requester_peer.ts` (a requester and how an answer
 * reaches it).
 *
 * @module
 */

import { upgradeWebSocket } from "../transport/_websocket.ts";
import { ErrorCode } from "../errors.ts";
import { shortId } from "../_id.ts";
import { logger } from "../log.ts";
import type { RequesterAnswer } from "../protocol.ts";
import { plainHttp, refuseUpgrade, remoteAddress } from "./http.ts";
import type { BrokerCore } from "./options.ts";
import type { RequestRunner, RunOptions } from "./http_api.ts";
import { WebSite } from "../web/site.ts";
import {
  admitRequest,
  readRequesterFrame,
  Refusal,
} from "./requester_frames.ts";
import { type RequesterPeer, TOO_SLOW, writeAnswer } from "./requester_peer.ts";
import { Requests } from "./requests.ts";

const log = logger("broker");

/** The requester port's handling; see the module doc. */
export class RequesterPort implements RequestRunner {
  #core: BrokerCore;
  #token?: string;
  #site: WebSite;
  #peers = new Set<RequesterPeer>();
  /** Dropped slow readers whose sockets have not closed yet. */
  #lingering = 0;
  #requests: Requests;

  constructor(core: BrokerCore, options: { token?: string }) {
    this.#core = core;
    this.#token = options.token;
    this.#site = new WebSite(core, {
      token: options.token,
      runner: this,
      intervalMs: core.options.dashboardIntervalMs,
    });
    this.#requests = new Requests(
      core,
      (peer, answer, paced) => this.#answer(peer, answer, paced),
    );
    this.handle = this.handle.bind(this);
  }

  /** Largest requester frame, in bytes. */
  get maxFrameBytes(): number {
    return this.#core.options.maxRequesterFrameBytes;
  }

  /**
   * Runs one frame for an HTTP caller exactly as a frame on a connection of its own: the same
   * checks, limits and answers. Resolves with the answer; `onFrame` sees the frames before it.
   */
  run(raw: string, options: RunOptions): Promise<Record<string, unknown>> {
    const done = Promise.withResolvers<Record<string, unknown>>();
    const peer: RequesterPeer = {
      id: shortId(8),
      socket: undefined as unknown as WebSocket,
      address: options.address,
      requests: new Map(),
      // One HTTP request is one call: all calls from an address share a lane of the queue.
      lane: `http ${options.address.replace(/:\d+$/, "")}`,
      sink: (frame) => {
        if ("success" in frame) done.resolve(frame);
        else options.onFrame?.(frame);
      },
      sinkReady: options.ready,
    };
    const signal = options.signal;
    if (signal?.aborted) return Promise.reject(signal.reason);
    const abort = () => this.#forget(peer, "HTTP client went away");
    signal?.addEventListener("abort", abort, { once: true });
    this.#onRequesterFrame(peer, raw);
    return done.promise.finally(() =>
      signal?.removeEventListener("abort", abort)
    );
  }

  /** Connected requesters. */
  get connected(): number {
    return this.#peers.size;
  }

  /** Requests being served. */
  get active(): number {
    return this.#requests.active;
  }

  /** Requests answered with success. */
  get answered(): number {
    return this.#requests.answered;
  }

  /** Requests answered with failure, and rejected frames. */
  get failed(): number {
    return this.#requests.failed;
  }

  /** The open requester sockets. */
  sockets(): WebSocket[] {
    return [...this.#peers].map((peer) => peer.socket);
  }

  /** Ends the dashboard's event streams, so the HTTP server can shut down. */
  closeSite(): void {
    this.#site.close();
  }

  /** Resolves once no request is being served, or after `graceMs`. */
  settled(graceMs: number): Promise<void> {
    return this.#requests.settled(graceMs);
  }

  /** The requester port's request handler. */
  handle(
    req: Request,
    info?: Deno.ServeHandlerInfo,
  ): Response | Promise<Response> {
    const site = this.#site.handle(req, info);
    if (site) return site;
    const plain = plainHttp(this.#core, req, "requester");
    if (plain) return plain;
    const refused = refuseUpgrade(
      this.#core,
      req,
      this.#token,
      "requester",
      this.#peers.size + this.#lingering,
      remoteAddress(info),
    );
    if (refused) return refused;
    const address = remoteAddress(info);
    const { socket, response } = upgradeWebSocket(req, {
      idleTimeout: this.#core.options.idleTimeoutSeconds,
    });
    const peer: RequesterPeer = {
      id: shortId(8),
      socket,
      address,
      requests: new Map(),
    };
    socket.onopen = () => {
      this.#peers.add(peer);
      this.#core.metrics.accepted("requester");
      log.debug("Requester {id} connected from {address}", {
        id: peer.id,
        address: peer.address,
      });
    };
    socket.onmessage = (event) => this.#onRequesterFrame(peer, event.data);
    socket.onclose = () => {
      if (peer.dropped) this.#lingering--;
      this.#forget(peer, "Requester disconnected");
      log.debug("Requester {id} disconnected", { id: peer.id });
    };
    socket.onerror = () => {};
    return response;
  }

  /** Sends `answer`; returns the characters sent (0 when nothing went, or not on a socket). */
  #answer(
    peer: RequesterPeer,
    answer: RequesterAnswer | Record<string, unknown>,
    paced = false,
  ): number {
    const sent = writeAnswer(peer, answer, this.#core.options, paced);
    if (sent !== TOO_SLOW) return sent;
    // Deno cannot force a server-side socket shut, and the close frame waits behind the unread
    // bytes until the peer reads: forget the peer now, so its requests stop and nothing more
    // is queued for it. Its socket still counts against maxConnections until it closes.
    peer.dropped = true;
    this.#lingering++;
    this.#forget(peer, "Requester dropped: answers are not being read");
    return 0;
  }

  #forget(peer: RequesterPeer, reason: string): void {
    this.#peers.delete(peer);
    log.debug("Cancelling {n} requests of requester {id}: {reason}", {
      n: peer.requests.size,
      id: peer.id,
      reason,
    });
    for (const cancellation of peer.requests.values()) cancellation.abort();
    peer.requests.clear();
  }

  #onRequesterFrame(peer: RequesterPeer, raw: unknown): void {
    const request = readRequesterFrame(
      raw,
      this.#core.options,
      this.#core.ports.worker,
    );
    if (request instanceof Refusal) return this.#refuse(peer, request);
    if (request.cancel) return this.#requests.cancel(peer, request.request_id);
    const refusal = admitRequest(
      peer,
      request,
      this.#core.options,
      this.#core.draining,
    );
    if (refusal) return this.#refuse(peer, refusal);
    this.#requests.start(peer, request);
  }

  #refuse(peer: RequesterPeer, refusal: Refusal): void {
    if (refusal.code === ErrorCode.WRONG_PORT) {
      log.warn("A worker at {address} connected to the requester port", {
        address: peer.address,
      });
    }
    this.#requests.reject(peer, refusal.requestId, refusal.code, refusal.error);
  }
}
