/**
 * Running requests on the requester port: each admitted request goes to the dispatcher (or runs
 * as a batch or a server action), is counted, and is answered exactly once — or not at all
 * when its requester left.
 *
 * @module
 */

import { Cancellation, type CancelSignal } from "../_cancel.ts";
import { ErrorCode, TIMEOUT_TEXT } from "../errors.ts";
import { logger } from "../log.ts";
import {
  failureAnswer,
  type RequesterAnswer,
  type RequesterRequest,
} from "../protocol.ts";
import { BATCH_COMMAND } from "./batch.ts";
import type { Outcome, SubmitOptions } from "./dispatcher.ts";
import type { BrokerCore } from "./options.ts";
import {
  availableCommands,
  runServerAction,
  runsHere,
} from "./requester_actions.ts";
import { runRequesterBatch, type SendAnswer } from "./requester_batch.ts";
import { pacingAllowanceMs } from "./pacing.ts";
import { requestDeadline } from "./requester_frames.ts";
import type { RequesterPeer } from "./requester_peer.ts";

const log = logger("broker");

/** The requests the requester port serves: run, counted and answered. */
export class Requests {
  #core: BrokerCore;
  #send: SendAnswer;
  #answered = 0;
  #failed = 0;
  #active = 0;
  #idle: PromiseWithResolvers<void> | undefined;
  /** Requests stopped by their requester's `cancel` frame, not by its leaving. */
  #cancelledByRequester = new WeakSet<Cancellation>();

  /** Requests of `core`, whose answers go out through `send`. */
  constructor(core: BrokerCore, send: SendAnswer) {
    this.#core = core;
    this.#send = send;
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

  /** Resolves once no request is being served, or after `graceMs`. */
  async settled(graceMs: number): Promise<void> {
    if (this.#active === 0) return;
    this.#idle = Promise.withResolvers();
    const timer = setTimeout(() => this.#idle?.resolve(), graceMs);
    await this.#idle.promise;
    clearTimeout(timer);
  }

  /** Answers a refused frame or request: counted as failed, logged, sent. */
  reject(
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
    this.#send(peer, failureAnswer(requestId, error, code));
  }

  /** Starts an admitted request of `peer`; it is in `peer.requests` until answered. */
  start(peer: RequesterPeer, request: RequesterRequest): void {
    const cancellation = new Cancellation();
    peer.requests.set(request.request_id, cancellation);
    this.#active++;
    this.#serve(peer, request, cancellation);
  }

  /**
   * A requester's `cancel` frame: the request stops (its worker gets `cancel`) and its one answer
   * is `CANCELLED`. An id with nothing in flight gets no answer: the request has just been
   * answered, and a second answer would confuse a client that reuses the id.
   */
  cancel(peer: RequesterPeer, id: string): void {
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
    const core = this.#core;
    const started = core.clock.now();
    const task = request.command === BATCH_COMMAND
      ? runRequesterBatch(
        core,
        peer,
        request,
        started,
        cancellation,
        this.#send,
      )
      : runsHere(core, request.command)
      ? runServerAction(core, request, started, cancellation)
      : core.marketFront !== undefined && request.command === "get_market"
      ? this.#viaFront(peer, request, cancellation, started)
      : undefined;
    if (task) {
      task.then(
        (answer) => this.#finish(peer, request, cancellation, started, answer),
        (error) => this.#crashed(peer, request, cancellation, started, error),
      );
      return;
    }
    try {
      core.dispatcher.dispatch(
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

  /** `get_market` from the market front (a store) when it holds it, else from a worker, kept. */
  async #viaFront(
    peer: RequesterPeer,
    request: RequesterRequest,
    cancellation: Cancellation,
    started: number,
  ): Promise<RequesterAnswer> {
    const front = this.#core.marketFront!;
    const held = await front.lookup([request.data]);
    if (held !== undefined) {
      return {
        request_id: request.request_id,
        success: true,
        data: held[0],
        error: null,
        processed_by: "store",
        elapsed_ms: this.#core.clock.now() - started,
      };
    }
    const answer = await new Promise<RequesterAnswer>((resolve) =>
      this.#core.dispatcher.dispatch(
        request.command,
        request.data,
        this.#submitOptions(peer, request, cancellation, started),
        (outcome) => resolve(this.#outcomeAnswer(request, outcome, started)),
      )
    );
    if (answer.success) front.keep(request.data, answer.data);
    return answer;
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
      this.#send(peer, answer, request.stream);
    }
    if (this.#active === 0) this.#idle?.resolve();
  }

  #submitOptions(
    peer: RequesterPeer,
    request: RequesterRequest,
    signal: CancelSignal,
    started: number,
  ): SubmitOptions {
    const id = request.request_id;
    return {
      deadline: requestDeadline(
        request,
        started,
        this.#core.options,
        pacingAllowanceMs(
          this.#core.dispatcher.registry.all(),
          request.command,
          request.data,
          started,
        ),
      ),
      signal,
      // Fair queueing: each connection is a lane of the queue and of free worker slots.
      owner: peer.lane ?? peer.id,
      onProgress: request.progress
        ? (p) =>
          this.#send(peer, {
            request_id: id,
            progress: { done: p.done, total: p.total },
          })
        : undefined,
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
        ...(unserved
          ? { available_commands: availableCommands(this.#core) }
          : {}),
      },
    );
  }
}
