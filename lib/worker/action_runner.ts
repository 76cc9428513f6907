/**
 * The worker's actions and the requests it is serving: each request's action runs with a
 * context (signal, progress), and its answer goes back once, unless the request was cancelled.
 *
 * @module
 */

import type { ActionContext, ActionHandler } from "../action.ts";
import { ErrorCode } from "../errors.ts";
import { type Envelope, MessageType, readRequestData } from "../protocol.ts";

/** Sends an envelope of `type` to the server. */
export type SendEnvelope = (type: string, data: unknown) => void;

/** A worker's actions and the requests it runs; see the module doc. */
export class ActionRunner {
  #actions = new Map<string, ActionHandler>();
  #nonRetriable = new Set<string>();
  #running = new Map<string, Running>();
  #served = 0;
  #failed = 0;
  #idle: PromiseWithResolvers<void> | undefined;
  #stop: AbortSignal;
  #send: SendEnvelope;

  /** Actions whose requests stop with `stop`, and whose answers leave through `send`. */
  constructor(stop: AbortSignal, send: SendEnvelope) {
    this.#stop = stop;
    this.#send = send;
  }

  /** Adds (or replaces) an action; a `retriable: false` one is never re-sent elsewhere. */
  set(name: string, handler: ActionHandler, retriable = true): void {
    this.#actions.set(name, handler);
    if (retriable) this.#nonRetriable.delete(name);
    else this.#nonRetriable.add(name);
  }

  /** The actions' names. */
  names(): string[] {
    return [...this.#actions.keys()];
  }

  /** The actions never to be re-sent to another worker. */
  nonRetriable(): string[] {
    return [...this.#nonRetriable];
  }

  /** Requests being served. */
  get inFlight(): number {
    return this.#running.size;
  }

  /** Requests answered with success. */
  get served(): number {
    return this.#served;
  }

  /** Requests answered with failure. */
  get failed(): number {
    return this.#failed;
  }

  /** Stops the request `msgId`, if it runs: its action's signal aborts, and it gets no answer. */
  cancel(msgId: string, reason: unknown): void {
    this.#running.get(msgId)?.abort(reason);
  }

  /** Stops every request being served. */
  cancelAll(reason: unknown): void {
    for (const running of this.#running.values()) running.abort(reason);
  }

  /** Resolves once no request is being served, or after `graceMs`. */
  async settled(graceMs: number): Promise<void> {
    if (this.#running.size === 0) return;
    this.#idle = Promise.withResolvers();
    const timer = setTimeout(() => this.#idle?.resolve(), graceMs);
    await this.#idle.promise;
    clearTimeout(timer);
  }

  /**
   * Runs a request's action and answers it. An action that answers at once (no promise) is
   * answered in the same turn; an async one when its promise settles.
   */
  serve(envelope: Envelope): void {
    const msgId = envelope.msg_id;
    const running = new Running();
    this.#running.set(msgId, running);
    let result: unknown;
    try {
      const { action, params } = readRequestData(envelope.data);
      const stream = (envelope.data as { stream?: unknown }).stream === true;
      const handler = this.#actions.get(action);
      if (!handler) {
        throw Object.assign(
          new Error(
            `Unknown action '${action}': this worker offers ${
              [...this.#actions.keys()].join(", ")
            }`,
          ),
          { code: ErrorCode.UNKNOWN_ACTION },
        );
      }
      const ctx = new Context(
        msgId,
        running,
        this.#stop,
        stream,
        this.#send,
      );
      result = handler(params, ctx);
    } catch (error) {
      return this.#reply(msgId, running, error, true);
    }
    if (
      typeof result === "object" && result !== null &&
      typeof (result as PromiseLike<unknown>).then === "function"
    ) {
      Promise.resolve(result).then(
        (value) => this.#reply(msgId, running, value, false),
        (error) => this.#reply(msgId, running, error, true),
      );
    } else this.#reply(msgId, running, result, false);
  }

  #reply(
    msgId: string,
    running: Running,
    outcome: unknown,
    failed: boolean,
  ): void {
    let reply: Record<string, unknown>;
    if (failed) {
      this.#failed++;
      reply = {
        request_id: msgId,
        success: false,
        result: null,
        error: outcome instanceof Error ? outcome.message : String(outcome),
        error_code: errorCode(outcome),
      };
    } else {
      let result = outcome;
      const sent = running.streamed;
      if (sent && Array.isArray(result)) {
        // Already delivered one by one: the final list carries nulls in their places.
        result = result.map((r, i) => sent.has(i) ? null : r);
      }
      this.#served++;
      reply = {
        request_id: msgId,
        success: true,
        result: result ?? null,
        error: null,
      };
    }
    this.#running.delete(msgId);
    if (this.#running.size === 0) this.#idle?.resolve();
    if (running.aborted) return;
    this.#send(MessageType.RESPONSE, reply);
  }
}

function errorCode(error: unknown): string {
  const code = (error as { code?: unknown })?.code;
  if (typeof code === "string" && /^[A-Z_]+$/.test(code)) return code;
  if (error instanceof TypeError || error instanceof RangeError) {
    return "INVALID_PARAMS";
  }
  return ErrorCode.WORKER_ERROR;
}

/**
 * What an action is handed: its signal and `progress` are made only when the action reads them
 * (most never do), so a request costs no closure or signal it does not use.
 */
class Context implements ActionContext {
  readonly requestId: string;
  #running: Running;
  #stop: AbortSignal;
  #stream: boolean;
  #send: SendEnvelope;
  #signal: AbortSignal | undefined;
  #progress: ActionContext["progress"];

  constructor(
    requestId: string,
    running: Running,
    stop: AbortSignal,
    stream: boolean,
    send: SendEnvelope,
  ) {
    this.requestId = requestId;
    this.#running = running;
    this.#stop = stop;
    this.#stream = stream;
    this.#send = send;
  }

  get signal(): AbortSignal {
    return this.#signal ??= AbortSignal.any([this.#running.signal, this.#stop]);
  }

  // A bound function: actions pass it on detached (`getMarkets(params, signal, ctx.progress)`).
  get progress(): NonNullable<ActionContext["progress"]> {
    return this.#progress ??= (done, total, item) => {
      if (this.#stream && item) {
        (this.#running.streamed ??= new Set()).add(item.index);
      }
      this.#send(
        MessageType.PROGRESS,
        this.#stream && item
          ? { request_id: this.requestId, done, total, item }
          : { request_id: this.requestId, done, total },
      );
    };
  }
}

/**
 * A request being served: its abort signal is made only when the action asks for it (an
 * `AbortController` per request is measurable at tens of thousands of requests a second).
 */
class Running {
  #controller: AbortController | undefined;
  /** Indexes of items already streamed (`progress` with an item). */
  streamed: Set<number> | undefined = undefined;
  #reason: unknown;
  aborted = false;

  get signal(): AbortSignal {
    this.#controller ??= new AbortController();
    if (this.aborted && !this.#controller.signal.aborted) {
      this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.#reason = reason;
    this.#controller?.abort(reason);
  }
}
