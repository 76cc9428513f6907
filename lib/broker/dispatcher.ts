/**
 * The dispatcher: places jobs on workers through the balancer, queues them when every worker
 * that offers the action is busy, enforces deadlines, and moves a job to another worker when its
 * worker goes away. It never touches sockets: a worker is a {@linkcode Peer} with a `send`.
 *
 * @module
 */

import { Balancer, isCandidate, offers, type Strategy } from "./balancer.ts";
import {
  ErrorCode,
  NoWorkersError,
  RequestTimeoutError,
  ServerBusyError,
  SwitchyardError,
  WorkerError,
} from "../errors.ts";
import type { CancelSignal } from "../_cancel.ts";
import { type DeadlineHandle, Deadlines } from "./_deadlines.ts";
import { messageId } from "../_id.ts";
import { encodeEnvelope, MessageType, type ResponseData } from "../protocol.ts";
import {
  type Clock,
  LocalRegistry,
  PROBE_OWNER,
  WorkerRecord,
  type WorkerRegistry,
} from "./registry.ts";
import { logger } from "../log.ts";

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

/** Actions that call an upstream market-data host, so a blocked upstream matters to them. */
export const UPSTREAM_ACTIONS: ReadonlySet<string> = new Set([
  "get_market",
  "get_markets",
]);

/** A worker's progress report; `item` is a finished part of a streamed job. */
export interface Progress {
  done: number;
  total?: number;
  item?: { index: number; result: unknown };
  worker?: string;
}

/** How a job ended. */
export type Outcome =
  | { ok: true; result: unknown; worker: Peer; attempts: number }
  | { ok: false; error: SwitchyardError; worker?: Peer; attempts: number };

/** Per-job choices. */
export interface SubmitOptions {
  /** Absolute deadline in ms on the dispatcher's clock. */
  deadline: number;
  /** Whether the job may run again on another worker after its worker vanished. @default true */
  retriable?: boolean;
  /** Run on this worker only (console `send`). */
  only?: string;
  /** Try these workers first, in order, when they can take the job (batch affinity). */
  preferred?: readonly string[];
  /** Never run on these workers. */
  exclude?: Iterable<string>;
  /**
   * Who asked (a requester connection): the queue and free worker slots are shared fairly
   * between owners. Jobs without one share one lane.
   */
  owner?: string;
  /** Ends the job early: the requester went away. */
  signal?: CancelSignal;
  /** Called with a worker's progress reports for this job. */
  onProgress?: (progress: Progress) => void;
  /**
   * Asks workers to stream finished parts (`progress.item`), and gives the params to send when
   * the job moves to another worker: only what is still unfinished. `lost` names the worker
   * that lost it, and why.
   */
  resend?: (lost: { worker: string; reason: string }) => unknown;
}

/**
 * A unit of work in the dispatcher. Every field is set from the start, so that all jobs share
 * one shape, and settling costs no closure per job.
 */
/**
 * Requests a job stands for in a worker's `served` and `failures`: a batch chunk's items, one
 * each (a worker that fetched 300 symbols served 300, not the 12 chunks they came in).
 */
function unitsOf(job: Job): number {
  // "get_markets" is batch.ts's BATCH_COMMAND, which imports this module.
  return job.command === "get_markets" && Array.isArray(job.params)
    ? Math.max(1, job.params.length)
    : 1;
}

export class Job {
  readonly command: string;
  params: unknown;
  readonly deadline: number;
  readonly retriable: boolean;
  readonly only?: string;
  readonly preferred?: readonly string[];
  /** Workers not to try (made on first use: most jobs never exclude one). */
  excluded?: Set<string>;
  /** Whose job it is, for fair queueing; "" when nobody said. */
  readonly owner: string;
  readonly onProgress?: SubmitOptions["onProgress"];
  readonly resend?: SubmitOptions["resend"];
  attempts = 0;
  worker?: Peer = undefined;
  msgId?: string = undefined;
  startedAt: number;
  /** Cancels the deadline once the job is settled. */
  expiry?: DeadlineHandle = undefined;
  /** When the job last joined the queue. */
  queuedAt?: number = undefined;
  /** Since when no worker has offered its action (it waits out the grace period). */
  noWorkerSince?: number = undefined;
  lastError?: SwitchyardError = undefined;
  done = false;
  /** Its listener on the submitter's signal, removed when it settles. */
  onAbort?: () => void = undefined;
  #signal?: CancelSignal;
  #notify: (outcome: Outcome) => void;

  constructor(
    command: string,
    params: unknown,
    options: SubmitOptions,
    notify: (outcome: Outcome) => void,
    now: number,
    /** Whether the action may run again elsewhere (the caller's word and the server's list). */
    retriable: boolean,
  ) {
    this.command = command;
    this.params = params;
    this.deadline = options.deadline;
    this.retriable = retriable;
    this.only = options.only;
    this.preferred = options.preferred;
    this.excluded = options.exclude ? new Set(options.exclude) : undefined;
    this.owner = options.owner ?? "";
    this.onProgress = options.onProgress;
    this.resend = options.resend;
    this.startedAt = now;
    this.#signal = options.signal;
    this.#notify = notify;
  }

  /** Ends the job with `outcome`; only the first call counts. */
  settle(outcome: Outcome): void {
    if (this.done) return;
    this.done = true;
    this.expiry?.cancel();
    if (this.onAbort) this.#signal?.removeEventListener("abort", this.onAbort);
    this.#notify(outcome);
  }
}

/** A bounded set that forgets its oldest members: ids of requests that ended without an answer. */
export class RecentIds {
  #ids = new Set<string>();
  constructor(readonly limit: number) {}
  add(id: string): void {
    this.#ids.add(id);
    if (this.#ids.size > this.limit) {
      this.#ids.delete(this.#ids.values().next().value!);
    }
  }
  has(id: string): boolean {
    return this.#ids.has(id);
  }
}

/** A connected worker as the dispatcher sees it. */
export class Peer extends WorkerRecord {
  /** Jobs dispatched to this worker, by envelope `msg_id`. */
  readonly jobs: Map<string, Job> = new Map();
  /** Requests this worker no longer owns (deadline passed, moved away), for late-answer logs. */
  readonly abandoned: RecentIds = new RecentIds(1024);
  readonly send: (frame: string) => void;

  constructor(
    id: string,
    address: string,
    send: (frame: string) => void,
    options: { clock: Clock; defaultConcurrency: number },
  ) {
    super(id, address, options);
    this.send = send;
  }
}

/** Options for {@linkcode Dispatcher}. */
export interface DispatcherOptions {
  /** @default "least_loaded" */
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
  /** @default the wall clock */
  clock?: Clock;
  /** Random source for the balancer. @default Math.random */
  random?: () => number;
  /** @default a new in-process registry */
  registry?: WorkerRegistry<Peer>;
}

/** Places jobs on workers; see the module doc. */
export class Dispatcher {
  readonly registry: WorkerRegistry<Peer>;
  readonly clock: Clock;
  readonly balancer: Balancer;
  readonly maxQueue: number;
  readonly maxAttempts: number;
  readonly queueTimeoutMs: number;
  readonly noWorkerGraceMs: number;
  #queue: Job[] = [];
  #graceTimer: ReturnType<typeof setTimeout> | undefined;
  /** Actions of workers that left: a request for one waits out the grace period. */
  #offeredBefore = new Set<string>();
  /** Callers of whenOffered(), each with the test it waits on. */
  #offerWaiters = new Set<{ test: (w: Peer) => boolean; wake: () => void }>();
  #graceAt = Infinity;
  /** Which owner's turn comes first on the next fair pump. */
  #turn = 0;
  #nonRetriable: Set<string>;
  #deadlines = new Deadlines<Job>((job) => this.#expire(job));

  constructor(options: DispatcherOptions = {}) {
    this.registry = options.registry ?? new LocalRegistry<Peer>();
    this.clock = options.clock ?? { now: () => Date.now() };
    this.balancer = new Balancer(options.strategy, { random: options.random });
    this.maxQueue = options.maxQueue ?? 1000;
    this.maxAttempts = options.maxAttempts ?? 3;
    this.queueTimeoutMs = options.queueTimeoutMs ?? Infinity;
    this.noWorkerGraceMs = options.noWorkerGraceMs ?? 0;
    this.#nonRetriable = new Set(options.nonRetriableActions ?? []);
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
    this.#release(worker, job);
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
    } else if (this.#upstreamFailed(response.result) && this.#mayRetry(job)) {
      // The worker is fine but its upstream is not: count it against the worker's score and
      // give another worker (another IP address) a chance.
      worker.recordFailure(unitsOf(job));
      (job.excluded ??= new Set()).add(worker.id);
      job.lastError = new WorkerError(
        String(
          (response.result as { error?: unknown }).error ?? "Upstream blocked",
        ),
        ErrorCode.WORKER_ERROR,
      );
      if (this.#hasOtherWorker(job)) this.#place(job, true);
      else {job.settle({
          ok: true,
          result: response.result,
          worker,
          attempts: job.attempts,
        });}
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
    for (const action of worker.actions ?? []) this.#offeredBefore.add(action);
    const orphans = [...worker.jobs.values()];
    for (const job of orphans) {
      this.#orphan(
        worker,
        job,
        `Worker '${worker.id}' disconnected before answering: ${reason}`,
      );
    }
    // Jobs queued for this worker alone, or that no remaining worker offers, can never run now;
    // pump() would keep them waiting until their deadline when no worker has room.
    for (const job of [...this.#queue]) {
      if (job.only === worker.id) this.#fail(job, new NoWorkersError());
      else if (this.#offering(job).length === 0) this.#waitOrFail(job, true);
    }
    this.pump();
  }

  /**
   * One job's answer will never come although its worker stays (it was lost on the way): the job
   * moves to another worker or fails, as when its worker leaves. False when no such job waits.
   */
  jobLost(worker: Peer, msgId: string, reason: string): boolean {
    const job = worker.jobs.get(msgId);
    if (!job) return false;
    worker.abandoned.add(msgId);
    this.#orphan(worker, job, reason);
    this.pump();
    return true;
  }

  #orphan(worker: Peer, job: Job, reason: string): void {
    this.#release(worker, job);
    (job.excluded ??= new Set()).add(worker.id);
    job.lastError = new WorkerError(reason, ErrorCode.WORKER_LOST);
    // A worker's `non_retriable` covers the requests that worker held, no one else's.
    if (
      this.#mayRetry(job) && !worker.nonRetriable.has(job.command) &&
      this.#hasOtherWorker(job)
    ) {
      log.info(
        "Re-dispatching {command} after worker {worker} lost it (attempt {attempt})",
        {
          command: job.command,
          worker: worker.id,
          attempt: job.attempts + 1,
        },
      );
      if (job.resend) {
        job.params = job.resend({ worker: worker.id, reason });
      }
      this.#place(job, true);
    } else {
      job.settle({
        ok: false,
        error: job.lastError,
        worker,
        attempts: job.attempts,
      });
    }
  }

  /** Places queued jobs on workers that have room; call whenever capacity may have appeared. */
  pump(): void {
    if (this.#offerWaiters.size > 0) this.#wakeOfferWaiters();
    if (this.#queue.length === 0) return;
    const waiting = this.#queue;
    this.#queue = [];
    if (this.#severalOwners(waiting)) return this.#pumpFair(waiting);
    for (let i = 0; i < waiting.length; i++) {
      const job = waiting[i];
      if (job.done) continue;
      if (!this.#anyRoom()) {
        this.#queue.push(...waiting.slice(i).filter((j) => !j.done));
        return;
      }
      const worker = this.#choose(job);
      if (worker) this.#send(job, worker);
      else if (this.#offering(job).length === 0) this.#waitOrFail(job, false);
      else this.#queue.push(job);
    }
  }

  /**
   * A worker holds work and has been silent past the stall timeout (frozen, or cut off without
   * a close): its retriable requests that it has held at least `olderThanMs` move to other
   * workers, as if it had left; a late answer from it is dropped. Returns how many moved.
   */
  resendStalled(worker: Peer, olderThanMs: number, reason: string): number {
    const now = this.clock.now();
    let moved = 0;
    for (const [msgId, job] of [...worker.jobs]) {
      if (now - job.startedAt < olderThanMs) continue;
      if (
        !this.#mayRetry(job) || worker.nonRetriable.has(job.command) ||
        !this.#hasOtherWorker(job)
      ) continue;
      worker.abandoned.add(msgId);
      this.#tell(worker, msgId, reason);
      this.#orphan(worker, job, `Worker '${worker.id}' stalled: ${reason}`);
      moved++;
    }
    if (moved > 0) this.pump();
    return moved;
  }

  /**
   * Resolves true once some worker for which `test` holds is registered (checked now and
   * whenever the queue is pumped, as every registration does), or false after `ms`.
   */
  whenOffered(test: (w: Peer) => boolean, ms: number): Promise<boolean> {
    if (this.registry.all().some(test)) return Promise.resolve(true);
    if (ms <= 0) return Promise.resolve(false);
    const { promise, resolve } = Promise.withResolvers<boolean>();
    const waiter = {
      test,
      wake: () => {
        clearTimeout(timer);
        this.#offerWaiters.delete(waiter);
        resolve(true);
      },
    };
    const timer = setTimeout(() => {
      this.#offerWaiters.delete(waiter);
      resolve(false);
    }, ms);
    this.#offerWaiters.add(waiter);
    return promise;
  }

  #wakeOfferWaiters(): void {
    const workers = this.registry.all();
    for (const waiter of [...this.#offerWaiters]) {
      if (workers.some(waiter.test)) waiter.wake();
    }
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
    for (const job of [...this.#queue]) {
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
    clearTimeout(this.#graceTimer);
    this.#graceTimer = undefined;
    this.#graceAt = Infinity;
    for (const job of this.#queue.splice(0)) {
      job.settle({ ok: false, error, attempts: job.attempts });
    }
    for (const worker of this.registry.all()) {
      for (const job of [...worker.jobs.values()]) {
        this.#release(worker, job);
        job.settle({ ok: false, error, worker, attempts: job.attempts });
      }
    }
  }

  /** Stops every timer; pending jobs are left as they are (call failAll first). */
  close(): void {
    this.#deadlines.close();
    clearTimeout(this.#graceTimer);
    this.#graceTimer = undefined;
    this.#graceAt = Infinity;
  }

  /**
   * No worker offers the job's action: it waits in the queue for one to register (a
   * registration pumps the queue) until its grace period ends, then fails. `queued`: it is in
   * the queue already.
   */
  #waitOrFail(job: Job, queued: boolean): void {
    if (job.only === undefined && this.#mayWaitFor(job.command)) {
      const now = this.clock.now();
      job.noWorkerSince ??= now;
      const end = this.#graceEnd(job);
      if (now < end) {
        job.queuedAt ??= now;
        if (!queued) this.#queue.push(job);
        this.#armGrace(end);
        return;
      }
    }
    this.#fail(job, this.#noWorkers(job));
  }

  /**
   * How long work for `command` that no worker offers now may wait for one, given its absolute
   * `deadline`: the grace period, at most half the time left; 0 when it should fail at once.
   */
  graceFor(command: string, deadline: number): number {
    if (!this.#mayWaitFor(command)) return 0;
    return Math.max(
      0,
      Math.min(this.noWorkerGraceMs, (deadline - this.clock.now()) / 2),
    );
  }

  #mayWaitFor(command: string): boolean {
    // A name no worker ever offered, while workers are here, is a mistake: say so at once.
    return this.noWorkerGraceMs > 0 &&
      (this.registry.size === 0 || this.#offeredBefore.has(command));
  }

  #graceEnd(job: Job): number {
    const since = job.noWorkerSince!;
    return since + Math.min(this.noWorkerGraceMs, (job.deadline - since) / 2);
  }

  #armGrace(at: number): void {
    if (this.#graceTimer !== undefined && this.#graceAt <= at) return;
    clearTimeout(this.#graceTimer);
    this.#graceAt = at;
    this.#graceTimer = setTimeout(
      () => this.#endGrace(),
      Math.max(0, at - this.clock.now()),
    );
  }

  /** Fails the queued jobs whose grace ran out with still no worker for them. */
  #endGrace(): void {
    this.#graceTimer = undefined;
    this.#graceAt = Infinity;
    const now = this.clock.now();
    let next = Infinity;
    for (const job of [...this.#queue]) {
      if (job.noWorkerSince === undefined || job.done) continue;
      if (this.#offering(job).length > 0) {
        job.noWorkerSince = undefined;
        continue;
      }
      const end = this.#graceEnd(job);
      if (now >= end) this.#fail(job, this.#noWorkers(job));
      else next = Math.min(next, end);
    }
    if (next !== Infinity) this.#armGrace(next);
  }

  #upstreamFailed(result: unknown): boolean {
    if (
      typeof result !== "object" || result === null || Array.isArray(result)
    ) return false;
    const r = result as Record<string, unknown>;
    return r.success === false &&
      (r.retriable === true ||
        RETRIABLE_RESULT_CODES.has(String(r.error_code)));
  }

  #mayRetry(job: Job): boolean {
    return job.retriable && job.only === undefined &&
      job.attempts < this.maxAttempts &&
      this.clock.now() < job.deadline;
  }

  #offering(job: Job): Peer[] {
    if (job.only !== undefined) {
      const w = this.registry.get(job.only);
      return w && offers(w, job.command) ? [w] : [];
    }
    return this.registry.all().filter((w) =>
      offers(w, job.command) && !job.excluded?.has(w.id)
    );
  }

  #hasOtherWorker(job: Job): boolean {
    return this.#offering(job).length > 0;
  }

  #anyRoom(): boolean {
    for (const w of this.registry.all()) {
      if (
        (w.healthy || (w.mayProbe && w.inFlight === 0)) &&
        !w.draining && w.inFlight < w.maxConcurrency
      ) {
        return true;
      }
    }
    return false;
  }

  #choose(job: Job): Peer | undefined {
    let offering = this.#offering(job);
    if (UPSTREAM_ACTIONS.has(job.command)) {
      // Steer market work around workers whose upstream pushes back: waiting for a free worker
      // with a working upstream beats a certain UPSTREAM_BLOCKED answer.
      const open = offering.filter((w) => !w.blocked);
      if (open.length > 0) offering = open;
    }
    if (job.preferred) {
      for (const id of job.preferred) {
        const w = offering.find((o) => o.id === id);
        if (w && isCandidate(w, job.command)) return w;
      }
    }
    return this.balancer.pick(offering, job.command) ??
      this.#probeWhenNoneHealthy(offering);
  }

  /** With no healthy worker to offer the action, one that only timed out gets one request. */
  #probeWhenNoneHealthy(offering: readonly Peer[]): Peer | undefined {
    let probe: Peer | undefined;
    for (const w of offering) {
      if (w.healthy && !w.draining) return undefined;
      if (!probe && w.mayProbe && !w.draining && w.inFlight === 0) probe = w;
    }
    return probe;
  }

  #noWorkers(job: Job): SwitchyardError {
    if (job.lastError) return job.lastError;
    if (job.only !== undefined) {
      // Only the console names a worker: it deserves the specific reason.
      const w = this.registry.get(job.only);
      if (!w) {
        return new SwitchyardError(
          ErrorCode.NO_WORKERS,
          `No worker with client_id '${job.only}' is connected`,
        );
      }
      return new SwitchyardError(
        ErrorCode.UNKNOWN_ACTION,
        `Worker '${job.only}' does not offer '${job.command}': it offers ${
          [...(w.actions ?? [])].join(", ")
        }`,
      );
    }
    const anyOffers = this.registry.all().some((w) => offers(w, job.command));
    return new NoWorkersError(
      this.registry.size === 0 || anyOffers || job.only !== undefined
        ? ErrorCode.NO_WORKERS
        : ErrorCode.UNKNOWN_COMMAND,
    );
  }

  #severalOwners(jobs: readonly Job[]): boolean {
    const first = jobs[0].owner;
    for (let i = 1; i < jobs.length; i++) {
      if (jobs[i].owner !== first) return true;
    }
    return false;
  }

  /**
   * Free slots go round the owners that wait, one job each in turn (each owner's own jobs in
   * order, re-sent ones first), so that one owner's backlog cannot hold the others back.
   */
  #pumpFair(waiting: Job[]): void {
    const lanes = new Map<string, Job[]>();
    for (const job of waiting) {
      if (job.done) continue;
      const lane = lanes.get(job.owner);
      if (lane) lane.push(job);
      else lanes.set(job.owner, [job]);
    }
    // Start the turn after the owner served first last time, so no owner is always first.
    const owners = [...lanes.keys()];
    const start = this.#turn++ % owners.length;
    const order = [...owners.slice(start), ...owners.slice(0, start)];
    let placed = true;
    while (placed && this.#anyRoom()) {
      placed = false;
      for (const owner of order) {
        const lane = lanes.get(owner)!;
        while (lane.length > 0) {
          const job = lane.shift()!;
          if (job.done) continue;
          const worker = this.#choose(job);
          if (worker) {
            this.#send(job, worker);
            placed = true;
            break;
          }
          if (this.#offering(job).length === 0) {
            this.#waitOrFail(job, false);
            continue;
          }
          // No worker for this one now (the action's workers are busy): it keeps its place.
        }
        if (!this.#anyRoom()) break;
      }
    }
    // What is left keeps its order; a job a failed send put back is there already.
    const back = new Set(this.#queue);
    for (const job of waiting) {
      if (!job.done && job.worker === undefined && !back.has(job)) {
        this.#queue.push(job);
      }
    }
  }

  /**
   * The queue is full: an owner holding fewer queued jobs than the one holding most takes the
   * newest place of that one, whose request gets `Server busy`. Returns whether room was made.
   */
  #makeRoomFor(owner: string): boolean {
    const counts = new Map<string, number>();
    for (const job of this.#queue) {
      counts.set(job.owner, (counts.get(job.owner) ?? 0) + 1);
    }
    let heaviest = "";
    let most = 0;
    for (const [o, n] of counts) {
      if (n > most) {
        most = n;
        heaviest = o;
      }
    }
    if (heaviest === owner || (counts.get(owner) ?? 0) + 1 >= most) {
      return false;
    }
    for (let i = this.#queue.length - 1; i >= 0; i--) {
      const job = this.#queue[i];
      if (job.owner !== heaviest) continue;
      this.#fail(
        job,
        new ServerBusyError(
          `Server busy: the queue is full (limit ${this.maxQueue}) and this connection holds the largest share of it`,
        ),
      );
      return true;
    }
    return false;
  }

  #place(job: Job, front: boolean): void {
    const worker = this.#choose(job);
    if (worker) return this.#send(job, worker);
    if (this.#offering(job).length === 0) return this.#waitOrFail(job, false);
    if (
      !front && this.#queue.length >= this.maxQueue &&
      !this.#makeRoomFor(job.owner)
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
    if (front) this.#queue.unshift(job);
    else this.#queue.push(job);
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
      this.#release(worker, job);
      (job.excluded ??= new Set()).add(worker.id);
      this.#place(job, true);
    }
  }

  #release(worker: Peer, job: Job): void {
    if (job.msgId && worker.jobs.delete(job.msgId)) worker.inFlight--;
    job.worker = undefined;
  }

  #fail(job: Job, error: SwitchyardError): void {
    const i = this.#queue.indexOf(job);
    if (i >= 0) this.#queue.splice(i, 1);
    job.settle({ ok: false, error, attempts: job.attempts });
  }

  #cancel(job: Job, code: ErrorCode, message: string): void {
    if (job.done) return;
    const worker = job.worker;
    if (worker && job.msgId) {
      this.#release(worker, job);
      worker.abandoned.add(job.msgId);
      this.#tell(worker, job.msgId, message);
    }
    this.#fail(job, new SwitchyardError(code, message));
    this.pump();
  }

  #expire(job: Job): void {
    if (job.done) return;
    const worker = job.worker;
    if (worker && job.msgId) {
      // A worker that sits on a request past its deadline looks slow and unreliable from now on,
      // and gets no new work until it answers one in time.
      worker.recordFailure(unitsOf(job));
      const probe = job.owner === PROBE_OWNER;
      const reason = `${job.command} ${
        probe ? "probe " : ""
      }passed its deadline of ${
        Math.round((job.deadline - job.startedAt) / 100) / 10
      } s`;
      if (worker.bench(reason)) {
        log.warn(
          "Worker {id} benched: {reason}; no new work until it answers a probe in time",
          { id: worker.id, reason },
        );
      }
      worker.ewmaMs = Math.max(
        worker.ewmaMs ?? 0,
        this.clock.now() - job.startedAt,
      );
      this.#release(worker, job);
      worker.abandoned.add(job.msgId);
      this.#tell(worker, job.msgId, "Deadline passed");
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

  #tell(worker: Peer, msgId: string, reason: string): void {
    try {
      worker.send(
        encodeEnvelope(MessageType.CANCEL, { request_id: msgId, reason }),
      );
    } catch {
      // The worker is going away; nothing to cancel.
    }
  }
}
