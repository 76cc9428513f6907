/**
 * Moving a job to another worker when its worker cannot answer it: the worker left, one answer
 * was lost on the way, the worker stalled, or it answered that its upstream failed. A job that
 * may run again goes back to the dispatcher to be placed first (it has waited already); one
 * that may not fails with the reason.
 *
 * @module
 */

import { ErrorCode, NoWorkersError, WorkerError } from "../errors.ts";
import type { SwitchyardError } from "../errors.ts";
import { logger } from "../log.ts";
import type { Job, Peer } from "./jobs.ts";
import { unitsOf } from "./jobs.ts";
import type { JobQueue } from "./job_queue.ts";
import type { NoWorkerGrace } from "./no_worker_grace.ts";
import type { Clock, WorkerRegistry } from "./registry.ts";
import { offering } from "./worker_choice.ts";

const log = logger("dispatch");

/** Where a job that moves on is placed again: the dispatcher's own placing and failing. */
export interface Placement {
  /** Places `job` again: on a worker now, or first in the queue. */
  placeAgain(job: Job): void;
  /** Takes `job` out of the queue and fails it with `error`. */
  fail(job: Job, error: SwitchyardError): void;
  /** Places queued jobs on workers that have room. */
  pump(): void;
}

/** What {@linkcode Retries} reads and where it places jobs. */
export interface RetriesOptions {
  /** Where workers are kept. */
  registry: WorkerRegistry<Peer>;
  /** The clock deadlines are judged by. */
  clock: Clock;
  /** Workers one job may try. */
  maxAttempts: number;
  /** Jobs waiting for a worker: those a lost worker alone could run end with it. */
  queue: JobQueue;
  /** A job no worker is left for may wait for one to register. */
  grace: NoWorkerGrace;
  /** Places and fails jobs. */
  placement: Placement;
}

/** Lost answers and the jobs that move on; see the module doc. */
export class Retries {
  #registry: WorkerRegistry<Peer>;
  #clock: Clock;
  #maxAttempts: number;
  #queue: JobQueue;
  #grace: NoWorkerGrace;
  #placement: Placement;

  constructor(options: RetriesOptions) {
    this.#registry = options.registry;
    this.#clock = options.clock;
    this.#maxAttempts = options.maxAttempts;
    this.#queue = options.queue;
    this.#grace = options.grace;
    this.#placement = options.placement;
  }

  /** Whether `job` may run again on another worker: retriable, attempts and time left. */
  mayRetry(job: Job): boolean {
    return job.retriable && job.only === undefined &&
      job.attempts < this.#maxAttempts &&
      this.#clock.now() < job.deadline;
  }

  /**
   * `worker` answered `job` (which {@linkcode mayRetry}) that its upstream failed: the worker is
   * fine but its upstream is not. That counts against the worker's score, and another worker
   * (another IP address) gets a chance; with no other worker the answer stands.
   */
  upstreamFailed(worker: Peer, job: Job, result: unknown): void {
    worker.recordFailure(unitsOf(job));
    (job.excluded ??= new Set()).add(worker.id);
    job.lastError = new WorkerError(
      String((result as { error?: unknown }).error ?? "Upstream blocked"),
      ErrorCode.WORKER_ERROR,
    );
    if (offering(this.#registry, job).length > 0) {
      this.#placement.placeAgain(job);
    } else {
      job.settle({ ok: true, result, worker, attempts: job.attempts });
    }
  }

  /**
   * `worker` left (the dispatcher has taken it out of the registry): its jobs move to other
   * workers or fail, and so do queued jobs that no remaining worker can run.
   */
  workerLost(worker: Peer, reason: string): void {
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
    for (const job of this.#queue.jobs()) {
      if (job.only === worker.id) {
        this.#placement.fail(job, new NoWorkersError());
      } else if (offering(this.#registry, job).length === 0) {
        this.#grace.waitOrFail(job, true);
      }
    }
    this.#placement.pump();
  }

  /** The answer to `msgId` will never come from `worker`; false when no such job waits. */
  jobLost(worker: Peer, msgId: string, reason: string): boolean {
    const job = worker.jobs.get(msgId);
    if (!job) return false;
    worker.abandoned.add(msgId);
    this.#orphan(worker, job, reason);
    this.#placement.pump();
    return true;
  }

  /** Moves `worker`'s retriable jobs held at least `olderThanMs`; returns how many moved. */
  resendStalled(worker: Peer, olderThanMs: number, reason: string): number {
    const now = this.#clock.now();
    let moved = 0;
    for (const [msgId, job] of [...worker.jobs]) {
      if (now - job.startedAt < olderThanMs) continue;
      if (
        !this.mayRetry(job) || worker.nonRetriable.has(job.command) ||
        offering(this.#registry, job).length === 0
      ) continue;
      worker.abandon(msgId, reason);
      this.#orphan(worker, job, `Worker '${worker.id}' stalled: ${reason}`);
      moved++;
    }
    if (moved > 0) this.#placement.pump();
    return moved;
  }

  #orphan(worker: Peer, job: Job, reason: string): void {
    worker.release(job);
    (job.excluded ??= new Set()).add(worker.id);
    job.lastError = new WorkerError(reason, ErrorCode.WORKER_LOST);
    // A worker's `non_retriable` covers the requests that worker held, no one else's. With no
    // other worker, a retriable job waits the grace period for one (often the same worker,
    // back on a new connection) rather than failing at once.
    if (
      this.mayRetry(job) && !worker.nonRetriable.has(job.command) &&
      (offering(this.#registry, job).length > 0 ||
        this.#grace.graceFor(job.command, job.deadline) > 0)
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
      this.#placement.placeAgain(job);
    } else {
      job.settle({
        ok: false,
        error: job.lastError,
        worker,
        attempts: job.attempts,
      });
    }
  }
}
