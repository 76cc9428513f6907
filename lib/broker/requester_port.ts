/**
 * The requester port: accepts requester connections, checks their frames, runs each request
 * (one command, or a `get_markets` batch) through the dispatcher and writes the answers back,
 * dropping requesters that stop reading.
 *
 * @module
 */

import { upgradeWebSocket } from "../transport/_websocket.ts";
import { overBytes, utf8Bytes } from "../transport/_frame_size.ts";
import { Cancellation, type CancelSignal } from "../_cancel.ts";
import { BATCH_COMMAND, readBatchItems, runBatch } from "./batch.ts";
import type { Outcome, SubmitOptions } from "./dispatcher.ts";
import {
  ErrorCode,
  NO_WORKERS_TEXT,
  type ProtocolError,
  SwitchyardError,
  TIMEOUT_TEXT,
} from "../errors.ts";
import { offers } from "./balancer.ts";
import { shortId } from "../_id.ts";
import { logger } from "../log.ts";
import {
  failureAnswer,
  parseRequesterFrame,
  type RequesterAnswer,
  type RequesterRequest,
} from "../protocol.ts";
import { plainHttp, refuseUpgrade, remoteAddress } from "./http.ts";
import type { BrokerCore } from "./options.ts";
import type { RequestRunner, RunOptions } from "./http_api.ts";
import { WebSite } from "../web/site.ts";

const log = logger("broker");

interface RequesterPeer {
  id: string;
  socket: WebSocket;
  address: string;
  /** Set for an HTTP caller: takes its frames instead of a socket. */
  sink?: (frame: Record<string, unknown>) => void;
  /** For an HTTP caller: whether its response has room for more (streamed batches wait). */
  sinkReady?: () => boolean;
  /** Requests in flight by `request_id`, each with what cancels it. */
  requests: Map<string, Cancellation>;
  /** Dropped for not reading: forgotten, though its socket may linger until the peer reads. */
  dropped?: boolean;
  /** Its lane in the fair queue: the connection, or for HTTP callers their address. */
  lane?: string;
}

// A request_id still readable from a frame too large to parse, so its error reaches the waiter.
const REQUEST_ID_PEEK = /"request_id"\s*:\s*"([^"\\]{1,200})"/;

/** The requester port's handling; see the module doc. */
export class RequesterPort implements RequestRunner {
  #core: BrokerCore;
  #token?: string;
  #site: WebSite;
  #peers = new Set<RequesterPeer>();
  /** Dropped slow readers whose sockets have not closed yet. */
  #lingering = 0;
  #answered = 0;
  #failed = 0;
  #active = 0;
  #idle: PromiseWithResolvers<void> | undefined;
  /** Requests stopped by their requester's `cancel` frame, not by its leaving. */
  #cancelledByRequester = new WeakSet<Cancellation>();

  constructor(core: BrokerCore, options: { token?: string }) {
    this.#core = core;
    this.#token = options.token;
    this.#site = new WebSite(core, {
      token: options.token,
      runner: this,
      intervalMs: core.options.dashboardIntervalMs,
    });
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
    return this.#active;
  }

  /** Requests answered with success. */
  get answered(): number {
    return this.#answered;
  }

  /** Requests answered with failure, and rejected frames. */
  get failed(): number {
    return this.#failed;
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
  async settled(graceMs: number): Promise<void> {
    if (this.#active === 0) return;
    this.#idle = Promise.withResolvers();
    const timer = setTimeout(() => this.#idle?.resolve(), graceMs);
    await this.#idle.promise;
    clearTimeout(timer);
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
    if (peer.sink) {
      peer.sink(answer as Record<string, unknown>);
      return 0;
    }
    const socket = peer.socket;
    if (socket.readyState !== WebSocket.OPEN) return 0;
    // Streamed items are paced by the batch (flow control above) instead: a requester that
    // reads slowly gets its items slowly, rather than dropped.
    if (socket.bufferedAmount > this.#core.options.maxBufferedBytes && !paced) {
      // A requester that stops reading would otherwise hold the server's memory hostage.
      log.warn(
        "Dropping requester {id}: {bytes} bytes unread (limit {limit})",
        {
          id: peer.id,
          bytes: socket.bufferedAmount,
          limit: this.#core.options.maxBufferedBytes,
        },
      );
      socket.close(1008, "Too slow: answers are not being read");
      // Deno cannot force a server-side socket shut, and the close frame waits behind the unread
      // bytes until the peer reads: forget the peer now, so its requests stop and nothing more
      // is queued for it. Its socket still counts against maxConnections until it closes.
      peer.dropped = true;
      this.#lingering++;
      this.#forget(peer, "Requester dropped: answers are not being read");
      return 0;
    }
    let text: string;
    try {
      text = JSON.stringify(answer);
    } catch (error) {
      // Past V8's longest string: the limit below should have caught it first.
      text = "";
      log.error("Cannot serialize the answer to {id}: {error}", {
        id: answer.request_id,
        error,
      });
    }
    const limit = this.#core.options.maxAnswerBytes;
    if (text === "" || text.length > limit) {
      text = JSON.stringify(failureAnswer(
        (answer.request_id as string | null | undefined) ?? null,
        tooLargeText(text.length || Infinity, limit),
        ErrorCode.ANSWER_TOO_LARGE,
      ));
    }
    socket.send(text);
    return text.length;
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

  #reject(
    peer: RequesterPeer,
    requestId: string | null,
    code: string,
    error: string,
  ): void {
    this.#failed++;
    const now = this.#core.clock.now();
    this.#core.metrics.request("", code, 0, now, error);
    log.debug("Rejected a frame from requester {id}: {error}", {
      id: peer.id,
      error,
    });
    this.#answer(peer, failureAnswer(requestId, error, code));
  }

  /**
   * A worker's envelope on the requester port: say where it belongs. The connection stays, as
   * for any bad frame; a Switchyard worker hangs up on its own when it reads this.
   */
  #wrongPort(peer: RequesterPeer): void {
    const port = this.#core.ports.worker;
    log.warn("A worker at {address} connected to the requester port", {
      address: peer.address,
    });
    this.#reject(
      peer,
      null,
      ErrorCode.WRONG_PORT,
      `This is the requester port: workers connect to the worker port${
        port === undefined ? " (8765 by default)" : ` ${port}`
      }`,
    );
  }

  /**
   * What a requester may ask for now: the server's own actions, and every action a connected
   * worker declared. Workers that declared no list (original ones) serve anything and add
   * nothing here.
   */
  #availableCommands(): string[] {
    // The server's own actions are always served, by a worker that offers them or else here
    // (see `#run`).
    const names = new Set(Object.keys(this.#core.actions));
    for (const worker of this.#core.dispatcher.registry.all()) {
      for (const action of worker.actions ?? []) names.add(action);
    }
    if (names.has("get_market")) names.add(BATCH_COMMAND);
    return [...names].sort();
  }

  /** A server action, run here because no connected worker offers it (see `#run`). */
  async #runServerAction(
    request: RequesterRequest,
    started: number,
    signal: CancelSignal,
  ): Promise<RequesterAnswer> {
    const id = request.request_id;
    const handler = this.#core.actions[request.command];
    const deadline = this.#deadline(request, started) - started;
    // The requester going away cancels it, as it would a worker's request.
    const cancelled = new AbortController();
    const onCancel = () => cancelled.abort(new Error("Requester disconnected"));
    signal.addEventListener("abort", onCancel, { once: true });
    try {
      const result = await handler(request.data, {
        signal: AbortSignal.any([
          AbortSignal.timeout(Math.max(1, deadline)),
          cancelled.signal,
        ]),
        requestId: id,
      });
      return {
        request_id: id,
        success: true,
        data: result,
        error: null,
        processed_by: "server",
        elapsed_ms: this.#core.clock.now() - started,
      };
    } catch (error) {
      return failureAnswer(
        id,
        error instanceof Error ? error.message : String(error),
        error instanceof SwitchyardError ? error.code : ErrorCode.INVALID_DATA,
        {
          processed_by: "server",
          elapsed_ms: this.#core.clock.now() - started,
        },
      );
    } finally {
      signal.removeEventListener("abort", onCancel);
    }
  }

  #onRequesterFrame(peer: RequesterPeer, raw: unknown): void {
    if (typeof raw !== "string") {
      return this.#reject(
        peer,
        null,
        ErrorCode.BINARY_FRAME,
        "Binary frames are not supported: send a JSON text frame",
      );
    }
    if (overBytes(raw, this.#core.options.maxRequesterFrameBytes)) {
      const id = REQUEST_ID_PEEK.exec(raw.slice(0, 1000))?.[1] ?? null;
      return this.#reject(
        peer,
        id,
        ErrorCode.FRAME_TOO_LARGE,
        `Frame too large: ${
          utf8Bytes(raw)
        } bytes (limit ${this.#core.options.maxRequesterFrameBytes})`,
      );
    }
    let request: RequesterRequest;
    try {
      request = parseRequesterFrame(raw, {
        maxTimeoutSeconds: this.#core.options.maxTimeoutMs / 1000,
      });
    } catch (error) {
      if (isWorkerEnvelope(raw)) return this.#wrongPort(peer);
      const e = error as ProtocolError;
      return this.#reject(peer, e.requestId ?? null, e.code, e.message);
    }
    const id = request.request_id;
    if (request.cancel) return this.#cancel(peer, id);
    if (this.#core.draining) {
      return this.#reject(
        peer,
        id,
        ErrorCode.SHUTTING_DOWN,
        "Server is shutting down: request not accepted",
      );
    }
    if (peer.requests.has(id)) {
      return this.#reject(
        peer,
        id,
        ErrorCode.DUPLICATE_REQUEST_ID,
        `Duplicate request_id '${id}': a request with this id is already in flight on this connection`,
      );
    }
    if (peer.requests.size >= this.#core.options.maxInFlightPerConnection) {
      return this.#reject(
        peer,
        id,
        ErrorCode.TOO_MANY_IN_FLIGHT,
        `Server busy: ${peer.requests.size} requests in flight on this connection (limit ${this.#core.options.maxInFlightPerConnection})`,
      );
    }
    const cancellation = new Cancellation();
    peer.requests.set(id, cancellation);
    this.#active++;
    this.#serve(peer, request, cancellation);
  }

  /**
   * A requester's `cancel` frame: the request stops (its worker gets `cancel`) and its one answer
   * is `CANCELLED`. An id with nothing in flight gets no answer: the request has just been
   * answered, and a second answer would confuse a client that reuses the id.
   */
  #cancel(peer: RequesterPeer, id: string): void {
    const cancellation = peer.requests.get(id);
    if (!cancellation) {
      log.debug("Requester {peer} cancelled {id}: nothing in flight", {
        peer: peer.id,
        id,
      });
      return;
    }
    this.#cancelledByRequester.add(cancellation);
    cancellation.abort();
  }

  /**
   * Runs one request and answers it. A command for the workers goes straight to the dispatcher
   * with a callback, with no promise between the worker's answer and the requester's; a batch
   * or a server action runs as an async task.
   */
  #serve(
    peer: RequesterPeer,
    request: RequesterRequest,
    cancellation: Cancellation,
  ): void {
    const started = this.#core.clock.now();
    const task = request.command === BATCH_COMMAND
      ? this.#runBatch(peer, request, started, cancellation)
      : this.#runsHere(request.command)
      ? this.#runServerAction(request, started, cancellation)
      : undefined;
    if (task) {
      task.then(
        (answer) => this.#finish(peer, request, cancellation, started, answer),
        (error) => this.#crashed(peer, request, cancellation, started, error),
      );
      return;
    }
    try {
      this.#core.dispatcher.dispatch(
        request.command,
        request.data,
        this.#submitOptions(peer, request, cancellation, started),
        (outcome) =>
          this.#finish(
            peer,
            request,
            cancellation,
            started,
            this.#outcomeAnswer(request, outcome, started),
          ),
      );
    } catch (error) {
      // Answered already if the throw came after the outcome.
      if (peer.requests.get(request.request_id) === cancellation) {
        this.#crashed(peer, request, cancellation, started, error);
      }
    }
  }

  /** A bug of ours while serving a request: logged, and answered as an internal error. */
  #crashed(
    peer: RequesterPeer,
    request: RequesterRequest,
    cancellation: Cancellation,
    started: number,
    error: unknown,
  ): void {
    log.error("Request {id} failed unexpectedly: {error}", {
      id: request.request_id,
      error,
    });
    this.#finish(
      peer,
      request,
      cancellation,
      started,
      failureAnswer(
        request.request_id,
        `Internal error: ${error}`,
        ErrorCode.WORKER_ERROR,
      ),
    );
  }

  /** Counts a request's answer and sends it, unless nobody should get it any more. */
  #finish(
    peer: RequesterPeer,
    request: RequesterRequest,
    cancellation: Cancellation,
    started: number,
    answer: RequesterAnswer,
  ): void {
    const id = request.request_id;
    peer.requests.delete(id);
    this.#active--;
    const byRequester = this.#cancelledByRequester.delete(cancellation);
    if (byRequester) {
      answer = failureAnswer(
        id,
        "Cancelled by the requester",
        ErrorCode.CANCELLED,
        { processed_by: answer.processed_by ?? null },
      );
    }
    const now = this.#core.clock.now();
    if (answer.success) {
      this.#answered++;
      this.#core.metrics.request(
        request.command,
        undefined,
        now - started,
        now,
      );
    } else {
      this.#failed++;
      this.#core.metrics.request(
        request.command,
        answer.error_code ?? ErrorCode.WORKER_ERROR,
        now - started,
        now,
        answer.error ?? undefined,
      );
    }
    // A request cancelled because its requester left gets no answer; one the requester
    // cancelled itself gets exactly one.
    if (byRequester ? !peer.dropped : !cancellation.aborted) {
      this.#answer(peer, answer, request.stream);
    }
    if (this.#active === 0) this.#idle?.resolve();
  }

  /**
   * Whether the server runs `command` itself: a server action no connected worker offers
   * (`calculate` next to market workers, or any server action while no worker is connected at
   * all). Any other command with no worker still answers "No available workers";
   * `GET /health/ready` is the probe for workers.
   */
  #runsHere(command: string): boolean {
    return Object.hasOwn(this.#core.actions, command) &&
      !this.#core.dispatcher.registry.all().some((w) => offers(w, command));
  }

  #submitOptions(
    peer: RequesterPeer,
    request: RequesterRequest,
    signal: CancelSignal,
    started: number,
  ): SubmitOptions {
    const id = request.request_id;
    return {
      deadline: this.#deadline(request, started),
      signal,
      // Fair queueing: each connection is a lane of the queue and of free worker slots.
      owner: peer.lane ?? peer.id,
      onProgress: request.progress
        ? (p) =>
          this.#answer(peer, {
            request_id: id,
            progress: { done: p.done, total: p.total },
          })
        : undefined,
    };
  }

  #deadline(request: RequesterRequest, now: number): number {
    const ms = request.timeout !== undefined
      ? Math.min(request.timeout * 1000, this.#core.options.maxTimeoutMs)
      : this.#core.options.timeoutMs;
    return now + ms;
  }

  async #runBatch(
    peer: RequesterPeer,
    request: RequesterRequest,
    started: number,
    signal: CancelSignal,
  ): Promise<RequesterAnswer> {
    const id = request.request_id;
    let items: unknown[];
    try {
      items = readBatchItems(request.data, this.#core.options.maxBatchItems);
    } catch (error) {
      const e = error as ProtocolError;
      return failureAnswer(id, e.message, e.code);
    }
    let lastSent = 0;
    const tracker = this.#core.metrics.batchStarted(id, items.length);
    const outcome = await runBatch(
      this.#core.dispatcher,
      items,
      {
        deadline: this.#deadline(request, started),
        signal,
        owner: peer.lane ?? peer.id,
        onProgress: (done, total) => {
          tracker.progress(done);
          if (!request.progress) return;
          // At most ~20 frames a second, and always the final count.
          const now = this.#core.clock.now();
          if (done < total && now - lastSent < 50) return;
          lastSent = now;
          this.#answer(peer, { request_id: id, progress: { done, total } });
        },
        // Streamed: each item leaves as it is final, and the server keeps none of them.
        onItem: request.stream
          ? (index, result) =>
            this.#answer(
              peer,
              { request_id: id, item: { index, result } },
              true,
            )
          : undefined,
        maxResultChars: request.stream
          ? undefined
          : this.#core.options.maxAnswerBytes,
        // A streamed batch goes at the requester's pace: no new items start while more than
        // a sixteenth of the unread limit waits for it (little stands before a ping).
        flow: request.stream
          ? {
            // An HTTP caller (a sink, no socket) is paced by its own response stream.
            ready: () =>
              peer.sink
                ? peer.sinkReady?.() ?? true
                : peer.socket.readyState !== WebSocket.OPEN ||
                  peer.socket.bufferedAmount <
                    this.#core.options.maxBufferedBytes / 16,
          }
          : undefined,
      },
    ).catch((error) => {
      tracker.finish(0, items.length);
      throw error;
    });
    const summary = outcome.data.summary;
    tracker.finish(summary.success, summary.failed);
    if (outcome.noWorkers) {
      return failureAnswer(id, NO_WORKERS_TEXT, ErrorCode.NO_WORKERS, {
        available_commands: this.#availableCommands(),
      });
    }
    if (outcome.tooLarge) {
      return failureAnswer(
        id,
        tooLargeText(outcome.tooLarge.chars, outcome.tooLarge.limit),
        ErrorCode.ANSWER_TOO_LARGE,
        { elapsed_ms: this.#core.clock.now() - started },
      );
    }
    return {
      request_id: id,
      success: true,
      data: outcome.data,
      error: null,
      processed_by: `distributed_${outcome.workersUsed}_workers`,
      elapsed_ms: this.#core.clock.now() - started,
    };
  }

  /** The requester's answer for a dispatched command's outcome. */
  #outcomeAnswer(
    request: RequesterRequest,
    outcome: Outcome,
    started: number,
  ): RequesterAnswer {
    const id = request.request_id;
    const elapsed_ms = this.#core.clock.now() - started;
    if (outcome.ok) {
      return {
        request_id: id,
        success: true,
        data: outcome.result,
        error: null,
        processed_by: outcome.worker.id,
        elapsed_ms,
        attempts: outcome.attempts,
      };
    }
    const e = outcome.error;
    const unserved = e.code === ErrorCode.NO_WORKERS ||
      e.code === ErrorCode.UNKNOWN_COMMAND;
    return failureAnswer(
      id,
      e.code === ErrorCode.TIMEOUT ? TIMEOUT_TEXT : e.message,
      e.code,
      {
        processed_by: outcome.worker?.id ?? null,
        elapsed_ms,
        attempts: outcome.attempts,
        // Additive: what could have been asked, so "No available workers" is not a dead end.
        ...(unserved ? { available_commands: this.#availableCommands() } : {}),
      },
    );
  }
}

function tooLargeText(chars: number, limit: number): string {
  return `Answer too large: ${
    Number.isFinite(chars) ? `more than ${chars}` : "too many"
  } characters (limit ${limit}); send the batch with "stream": true to receive each item in a frame of its own`;
}

/** Whether `raw` is a worker's envelope (`type`, `msg_id`, no `command`), sent to this port. */
function isWorkerEnvelope(raw: string): boolean {
  try {
    const frame = JSON.parse(raw);
    return typeof frame === "object" && frame !== null &&
      typeof frame.type === "string" && "msg_id" in frame &&
      !("command" in frame);
  } catch {
    return false;
  }
}
