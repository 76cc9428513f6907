/**
 * The dispatcher: places jobs on workers through the balancer, queues them when every worker
 * that offers the action is busy, and enforces deadlines; a job whose worker goes away moves to
 * another worker through `retries.ts`. It never touches sockets: a worker is a
 * {@linkcode Peer} with a `send`.
 *
 * @module
 */

import { Balancer, type Strategy } from "./balancer.ts";
import {
  ErrorCode,
  RequestTimeoutError,
  ServerBusyError,
  SwitchyardError,
  WorkerError,
} from "../errors.ts";
import { Deadlines } from "./_deadlines.ts";
import { messageId } from "../_id.ts";
import { encodeEnvelope, MessageType, type ResponseData } from "../protocol.ts";
import {
  type Clock,
  LocalRegistry,
  PROBE_OWNER,
  type WorkerRegistry,
} from "./registry.ts";
import { logger } from "../log.ts";
import {
  Job,
  type Outcome,
  type Peer,
  type Progress,
  type SubmitOptions,
  unitsOf,
} from "./jobs.ts";
import { type JobPlacer, JobQueue } from "./job_queue.ts";
import { NoWorkerGrace } from "./no_worker_grace.ts";
import { Retries } from "./retries.ts";
import { anyRoom, chooseWorker, offering } from "./worker_choice.ts";

export {
  Job,
  type Outcome,
  Peer,
  type Progress,
  RecentIds,
  type SubmitOptions,
} from "./jobs.ts";

const log = logger("dispatch");

/** Error codes a worker may report for a request that is not the worker's fault. */
const CALLER_FAULT_CODES = new Set([
  "INVALID_PARAMS",
  "INVALID_DATA",
  "UNKNOWN_ACTION",
  "UNKNOWN_CODE",
]);

/** Result codes that say "try another worker": the upstream behind this worker failed. */
export const RETRIABLE_RESULT_CODES: ReadonlySet<string> = new Set([
  "UPSTREAM_BLOCKED",
  "UPSTREAM_UNAVAILABLE",
]);

/** Options for {@linkcode Dispatcher}. */
export interface DispatcherOptions {
  /** How the balancer picks a worker. @default "least_loaded" */
  strategy?: Strategy;
  /** The most jobs waiting for a free worker; past it, submits fail with `Server busy`. @default 1000 */
  maxQueue?: number;
  /** How many workers one job may try when workers vanish under it. @default 3 */
  maxAttempts?: number;
  /** Actions never re-run on another worker (they are not safe to repeat). @default [] */
  nonRetriableActions?: Iterable<string>;
  /** The longest a job may wait in the queue before `Server busy`, in ms. @default its deadline */
  queueTimeoutMs?: number;
  /**
   * How long a job whose action no worker offers waits for one to register before `NO_WORKERS`
   * (at most half the time its deadline leaves), in ms: after a restart, requests arrive before
   * the workers are back. It waits while no worker is registered at all, or when a worker that
   * left offered the action; jobs for one named worker (`only`) never wait. @default 0
   */
  noWorkerGraceMs?: number;
  /** The clock deadlines are judged by. @default the wall clock */
  clock?: Clock;
  /** Random source for the balancer. @default Math.random */
  random?: () => number;
  /** Where workers are kept. @default a new in-process registry */
  registry?: WorkerRegistry<Peer>;
}

/** Places jobs on workers; see the module doc. */
export class Dispatcher {
  /** Where workers are kept. */
  readonly registry: WorkerRegistry<Peer>;
  /** The clock deadlines are judged by. */
  readonly clock: Clock;
  /** Picks a worker for each job. */
  readonly balancer: Balancer;
  /** Jobs that may wait for a free worker. */
  readonly maxQueue: number;
  /** Workers one job may try. */
  readonly maxAttempts: number;
  /** The longest a job may wait for a free worker, in ms. */
  readonly queueTimeoutMs: number;
  /** How long a job no worker offers waits for one, in ms. */
  readonly noWorkerGraceMs: number;
  #queue = new JobQueue();
  /** How the queue reaches the workers. */
  #placer: JobPlacer = {
    anyRoom: () => anyRoom(this.registry),
    choose: (job) => chooseWorker(this.registry, this.balancer, job),
    send: (job, worker) => this.#send(job, worker),
    unservable: (job) => offering(this.registry, job).length === 0,
    noWorker: (job) => this.#grace.waitOrFail(job, false),
    fail: (job, error) => this.#fail(job, error),
  };
  #grace: NoWorkerGrace;
  #nonRetriable: Set<string>;
  #deadlines = new Deadlines<Job>((job) => this.#expire(job));
  #retries: Retries;

  /** A dispatcher with `options`. */
  constructor(options: DispatcherOptions = {}) {
    this.registry = options.registry ?? new LocalRegistry<Peer>();
    this.clock = options.clock ?? { now: () => Date.now() };
    this.balancer = new Balancer(options.strategy, { random: options.random });
    this.maxQueue = options.maxQueue ?? 1000;
    this.maxAttempts = options.maxAttempts ?? 3;
    this.queueTimeoutMs = options.queueTimeoutMs ?? Infinity;
    this.noWorkerGraceMs = options.noWorkerGraceMs ?? 0;
    this.#grace = new NoWorkerGrace(
      this.noWorkerGraceMs,
      this.registry,
      this.clock,
      this.#queue,
      (job, error) => this.#fail(job, error),
    );
    this.#nonRetriable = new Set(options.nonRetriableActions ?? []);
    this.#retries = new Retries({
      registry: this.registry,
      clock: this.clock,
      maxAttempts: this.maxAttempts,
      queue: this.#queue,
      grace: this.#grace,
      placement: {
        placeAgain: (job) => this.#place(job, true),
        fail: (job, error) => this.#fail(job, error),
        pump: () => this.pump(),
      },
    });
  }

  /** Jobs waiting for a worker. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Jobs running on workers. */
  get running(): number {
    let n = 0;
    for (const w of this.registry.all()) n += w.jobs.size;
    return n;
  }

  /** Runs `command` with `params` on a worker; resolves once, never rejects. */
  submit(
    command: string,
    params: unknown,
    options: SubmitOptions,
  ): Promise<Outcome> {
    const { promise, resolve } = Promise.withResolvers<Outcome>();
    this.dispatch(command, params, options, resolve);
    return promise;
  }

  /**
   * {@linkcode submit} with a callback: `done` is called once with the outcome (possibly before
   * this returns, when the job cannot be placed). No promise stands between a worker's answer
   * and the caller: the broker's own requests take this path.
   */
  dispatch(
    command: string,
    params: unknown,
    options: SubmitOptions,
    done: (outcome: Outcome) => void,
  ): void {
    const signal = options.signal;
    const job = new Job(
      command,
      params,
      options,
      done,
      this.clock.now(),
      (options.retriable ?? true) && !this.#nonRetriable.has(command),
    );
    if (signal?.aborted) {
      job.settle({
        ok: false,
        error: new SwitchyardError(ErrorCode.CANCELLED, "Request cancelled"),
        attempts: 0,
      });
      return;
    }
    if (signal) {
      job.onAbort = () =>
        this.#cancel(job, ErrorCode.CANCELLED, "Request cancelled");
      signal.addEventListener("abort", job.onAbort, { once: true });
    }
    job.expiry = this.#deadlines.add(job, options.deadline - job.startedAt);
    this.#place(job, false);
  }

  /** Takes a worker's `response`; returns false when no job of this worker waits for it. */
  complete(worker: Peer, response: ResponseData): boolean {
    const job = worker.jobs.get(response.request_id);
    if (!job) {
      if (worker.abandoned.has(response.request_id)) {
        log.info("Dropped a late answer from worker {worker} for {msgId}", {
          worker: worker.id,
          msgId: response.request_id,
        });
        return true;
      }
      return false;
    }
    worker.release(job);
    // It answers: whatever a timeout or silence took from it, it earns back.
    const benched = worker.answered();
    if (benched !== undefined) {
      log.info(
        "Worker {id} is back: it answered {command} in time (benched because {reason})",
        { id: worker.id, command: job.command, reason: benched },
      );
    }
    const elapsed = this.clock.now() - job.startedAt;
    if (!response.success) {
      const code = response.error_code ?? ErrorCode.WORKER_ERROR;
      if (!CALLER_FAULT_CODES.has(code)) worker.recordFailure(unitsOf(job));
      else worker.recordSuccess(elapsed, unitsOf(job));
      job.settle({
        ok: false,
        error: new WorkerError(
          response.error ?? "Worker reported failure",
          code as ErrorCode,
        ),
        worker,
        attempts: job.attempts,
      });
    } else if (
      isRetriableFailure(response.result) && this.#retries.mayRetry(job)
    ) {
      this.#retries.upstreamFailed(worker, job, response.result);
    } else {
      worker.recordSuccess(elapsed, unitsOf(job));
      job.settle({
        ok: true,
        result: response.result,
        worker,
        attempts: job.attempts,
      });
    }
    this.pump();
    return true;
  }

  /** Forwards a worker's progress report to the job's listener. */
  progress(worker: Peer, msgId: string, progress: Progress): void {
    worker.jobs.get(msgId)?.onProgress?.({ ...progress, worker: worker.id });
  }

  /** A worker left: its jobs move to other workers or fail with a clear error. */
  workerLost(worker: Peer, reason: string): void {
    this.registry.remove(worker.id);
    this.#grace.left(worker);
    this.#retries.workerLost(worker, reason);
  }

  /**
   * One job's answer will never come although its worker stays (it was lost on the way): the job
   * moves to another worker or fails, as when its worker leaves. False when no such job waits.
   */
  jobLost(worker: Peer, msgId: string, reason: string): boolean {
    return this.#retries.jobLost(worker, msgId, reason);
  }

  /** Places queued jobs on workers that have room; call whenever capacity may have appeared. */
  pump(): void {
    this.#grace.wake();
    this.#queue.pump(this.#placer);
  }

  /**
   * A worker holds work and has been silent past the stall timeout (frozen, or cut off without
   * a close): its retriable requests that it has held at least `olderThanMs` move to other
   * workers, as if it had left; a late answer from it is dropped. Returns how many moved.
   */
  resendStalled(worker: Peer, olderThanMs: number, reason: string): number {
    return this.#retries.resendStalled(worker, olderThanMs, reason);
  }

  /**
   * Resolves true once some worker for which `test` holds is registered (checked now and
   * whenever the queue is pumped, as every registration does), or false after `ms`.
   */
  whenOffered(test: (w: Peer) => boolean, ms: number): Promise<boolean> {
    return this.#grace.whenOffered(test, ms);
  }

  /** Marks an action as not safe to run twice, on every worker (the server's own list). */
  markNonRetriable(action: string): void {
    this.#nonRetriable.add(action);
  }

  /** The actions never run twice (configured, or marked by workers). */
  get nonRetriable(): ReadonlySet<string> {
    return this.#nonRetriable;
  }

  /** Fails jobs that waited in the queue longer than `queueTimeoutMs`; call periodically. */
  expireQueued(): void {
    if (this.queueTimeoutMs === Infinity || this.#queue.length === 0) return;
    const now = this.clock.now();
    for (const job of this.#queue.jobs()) {
      if (
        job.queuedAt !== undefined && now - job.queuedAt > this.queueTimeoutMs
      ) {
        this.#fail(
          job,
          new ServerBusyError(
            `Server busy: no worker was free within ${
              this.queueTimeoutMs / 1000
            } s`,
          ),
        );
      }
    }
  }

  /** Fails every waiting and running job, e.g. when the server shuts down. */
  failAll(error: SwitchyardError): void {
    this.#grace.stop();
    for (const job of this.#queue.clear()) {
      job.settle({ ok: false, error, attempts: job.attempts });
    }
    for (const worker of this.registry.all()) {
      for (const job of [...worker.jobs.values()]) {
        worker.release(job);
        job.settle({ ok: false, error, worker, attempts: job.attempts });
      }
    }
  }

  /** Stops every timer; pending jobs are left as they are (call failAll first). */
  close(): void {
    this.#deadlines.close();
    this.#grace.stop();
  }

  /**
   * How long work for `command` that no worker offers now may wait for one, given its absolute
   * `deadline`: the grace period, at most half the time left; 0 when it should fail at once.
   */
  graceFor(command: string, deadline: number): number {
    return this.#grace.graceFor(command, deadline);
  }

  #place(job: Job, front: boolean): void {
    const worker = chooseWorker(this.registry, this.balancer, job);
    if (worker) return this.#send(job, worker);
    if (offering(this.registry, job).length === 0) {
      return this.#grace.waitOrFail(job, false);
    }
    if (
      !front && this.#queue.length >= this.maxQueue &&
      !this.#queue.makeRoomFor(
        job.owner,
        this.#placer,
        () =>
          new ServerBusyError(
            `Server busy: the queue is full (limit ${this.maxQueue}) and this connection holds the largest share of it`,
          ),
      )
    ) {
      return this.#fail(
        job,
        new ServerBusyError(
          `Server busy: ${this.#queue.length} requests already wait for a worker (limit ${this.maxQueue})`,
        ),
      );
    }
    job.queuedAt ??= this.clock.now();
    // A job coming back from a lost worker has waited already: it goes first.
    this.#queue.add(job, front);
  }

  #send(job: Job, worker: Peer): void {
    const msgId = messageId();
    job.msgId = msgId;
    job.worker = worker;
    job.noWorkerSince = undefined;
    // A job sent straight from submit() started then; one that waited or moves on starts now.
    if (job.attempts++ > 0 || job.queuedAt !== undefined) {
      job.startedAt = this.clock.now();
    }
    worker.jobs.set(msgId, job);
    worker.inFlight++;
    try {
      worker.send(
        encodeEnvelope(
          MessageType.REQUEST,
          // `stream` is additive: workers that do not know it ignore it.
          job.resend
            ? { action: job.command, params: job.params, stream: true }
            : { action: job.command, params: job.params },
          msgId,
        ),
      );
    } catch (error) {
      // The socket died under us; the close handler will call workerLost() for the rest.
      log.warn("Sending to worker {worker} failed: {error}", {
        worker: worker.id,
        error,
      });
      worker.release(job);
      (job.excluded ??= new Set()).add(worker.id);
      this.#place(job, true);
    }
  }

  #fail(job: Job, error: SwitchyardError): void {
    this.#queue.remove(job);
    job.settle({ ok: false, error, attempts: job.attempts });
  }

  #cancel(job: Job, code: ErrorCode, message: string): void {
    if (job.done) return;
    const worker = job.worker;
    if (worker && job.msgId) {
      worker.release(job);
      worker.abandon(job.msgId, message);
    }
    this.#fail(job, new SwitchyardError(code, message));
    this.pump();
  }

  #expire(job: Job): void {
    if (job.done) return;
    const worker = job.worker;
    if (worker && job.msgId) {
      const probe = job.owner === PROBE_OWNER;
      worker.missedDeadline(job, probe, this.clock.now());
      worker.release(job);
      worker.abandon(job.msgId, "Deadline passed");
      if (!probe) {
        log.warn("Request {msgId} ({command}) timed out on worker {worker}", {
          msgId: job.msgId,
          command: job.command,
          worker: worker.id,
        });
      }
    }
    if (worker) {
      // The answer names the worker that sat on it (`processed_by`), for whoever hunts a hang.
      job.settle({
        ok: false,
        error: new RequestTimeoutError(),
        worker,
        attempts: job.attempts,
      });
    } else this.#fail(job, new RequestTimeoutError());
    this.pump();
  }
}

/**
 * Whether a successful answer says its upstream failed (`retriable`, or a code in
 * {@linkcode RETRIABLE_RESULT_CODES}), so that another worker may try.
 */
export function isRetriableFailure(result: unknown): boolean {
  if (typeof result !== "object" || result === null) return false;
  const r = result as Record<string, unknown>;
  return r.success === false &&
    (r.retriable === true || RETRIABLE_RESULT_CODES.has(String(r.error_code)));
}
