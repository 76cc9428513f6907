/**
 * The grace period for work no worker offers: after a restart, requests arrive before the
 * workers are back, so a job (or a batch) for an action that a worker which left offered, or
 * any action while no worker is registered, waits a while for one to register before
 * `NO_WORKERS`. The dispatcher keeps the waiting jobs in its queue; this keeps the clock.
 *
 * @module
 */

import type { SwitchyardError } from "../errors.ts";
import type { Job, Peer } from "./jobs.ts";
import type { JobQueue } from "./job_queue.ts";
import type { Clock, WorkerRegistry } from "./registry.ts";
import { noWorkersError, offering } from "./worker_choice.ts";

/** The dispatcher's no-worker grace period; see the module doc. */
export class NoWorkerGrace {
  /** The longest a job waits, in ms (at most half the time its deadline leaves); 0 never. */
  readonly ms: number;
  #registry: WorkerRegistry<Peer>;
  #clock: Clock;
  #queue: JobQueue;
  #fail: (job: Job, error: SwitchyardError) => void;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #at = Infinity;
  /** Actions of workers that left: a request for one waits out the grace period. */
  #offeredBefore = new Set<string>();
  /** Callers of whenOffered(), each with the test it waits on. */
  #waiters = new Set<{ test: (w: Peer) => boolean; wake: () => void }>();

  /**
   * A grace period of `ms` over the workers of `registry`, for jobs that wait in `queue`; `fail`
   * fails a job whose grace ran out.
   */
  constructor(
    ms: number,
    registry: WorkerRegistry<Peer>,
    clock: Clock,
    queue: JobQueue,
    fail: (job: Job, error: SwitchyardError) => void,
  ) {
    this.ms = ms;
    this.#registry = registry;
    this.#clock = clock;
    this.#queue = queue;
    this.#fail = fail;
  }

  /** A worker left: requests for its actions wait for it to come back. */
  left(worker: Peer): void {
    for (const action of worker.actions ?? []) this.#offeredBefore.add(action);
  }

  /**
   * No worker offers the job's action: it waits in the queue for one to register (a
   * registration pumps the queue) until its grace period ends, then fails. `queued`: it is in
   * the queue already.
   */
  waitOrFail(job: Job, queued: boolean): void {
    if (job.only === undefined && this.#mayWaitFor(job.command)) {
      const now = this.#clock.now();
      job.noWorkerSince ??= now;
      const end = this.#endOf(job);
      if (now < end) {
        job.queuedAt ??= now;
        if (!queued) this.#queue.add(job, false);
        this.#arm(end);
        return;
      }
    }
    this.#fail(job, noWorkersError(this.#registry, job));
  }

  #mayWaitFor(command: string): boolean {
    // A name no worker ever offered, while workers are here, is a mistake: say so at once.
    return this.ms > 0 &&
      (this.#registry.size === 0 || this.#offeredBefore.has(command));
  }

  /**
   * How long work for `command` that no worker offers now may wait for one, given its absolute
   * `deadline`: the grace period, at most half the time left; 0 when it should fail at once.
   */
  graceFor(command: string, deadline: number): number {
    if (!this.#mayWaitFor(command)) return 0;
    return Math.max(
      0,
      Math.min(this.ms, (deadline - this.#clock.now()) / 2),
    );
  }

  /** When `job`, waiting since `job.noWorkerSince`, stops waiting. */
  #endOf(job: Job): number {
    const since = job.noWorkerSince!;
    return since + Math.min(this.ms, (job.deadline - since) / 2);
  }

  /** Ends the grace of waiting jobs at `at`, unless an earlier end is armed already. */
  #arm(at: number): void {
    if (this.#timer !== undefined && this.#at <= at) return;
    clearTimeout(this.#timer);
    this.#at = at;
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined;
        this.#at = Infinity;
        this.#end();
      },
      Math.max(0, at - this.#clock.now()),
    );
  }

  /** Fails the queued jobs whose grace ran out with still no worker for them. */
  #end(): void {
    const now = this.#clock.now();
    let next = Infinity;
    for (const job of this.#queue.jobs()) {
      if (job.noWorkerSince === undefined || job.done) continue;
      if (offering(this.#registry, job).length > 0) {
        job.noWorkerSince = undefined;
        continue;
      }
      const end = this.#endOf(job);
      if (now >= end) this.#fail(job, noWorkersError(this.#registry, job));
      else next = Math.min(next, end);
    }
    if (next !== Infinity) this.#arm(next);
  }

  /** Stops the timer. */
  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#at = Infinity;
  }

  /**
   * Resolves true once some worker for which `test` holds is registered (checked now and
   * whenever {@linkcode wake} is called), or false after `ms`.
   */
  whenOffered(test: (w: Peer) => boolean, ms: number): Promise<boolean> {
    if (this.#registry.all().some(test)) return Promise.resolve(true);
    if (ms <= 0) return Promise.resolve(false);
    const { promise, resolve } = Promise.withResolvers<boolean>();
    const waiter = {
      test,
      wake: () => {
        clearTimeout(timer);
        this.#waiters.delete(waiter);
        resolve(true);
      },
    };
    const timer = setTimeout(() => {
      this.#waiters.delete(waiter);
      resolve(false);
    }, ms);
    this.#waiters.add(waiter);
    return promise;
  }

  /** Wakes the callers of {@linkcode whenOffered} whose worker is here now. */
  wake(): void {
    if (this.#waiters.size === 0) return;
    const workers = this.#registry.all();
    for (const waiter of [...this.#waiters]) {
      if (workers.some(waiter.test)) waiter.wake();
    }
  }
}
