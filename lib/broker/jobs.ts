/**
 * What the dispatcher moves around: a job (one request on its way to a worker, and how it
 * ended) and a worker as the dispatcher sees it, with the jobs it holds.
 *
 * @module
 */

import type { CancelSignal } from "../_cancel.ts";
import type { SwitchyardError } from "../errors.ts";
import type { DeadlineHandle } from "./_deadlines.ts";
import { encodeEnvelope, MessageType } from "../protocol.ts";
import { type Clock, WorkerRecord } from "./registry.ts";
import { logger } from "../log.ts";

const log = logger("dispatch");

/** A worker's progress report; `item` is a finished part of a streamed job. */
export interface Progress {
  /** Parts finished. */
  done: number;
  /** Parts in all, when the worker knows. */
  total?: number;
  /** A finished part of a streamed job: its index and result. */
  item?: { index: number; result: unknown };
  /** The worker that reported it. */
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
 * Requests a job stands for in a worker's `served` and `failures`: a batch chunk's items, one
 * each (a worker that fetched 300 symbols served 300, not the 12 chunks they came in).
 */
export function unitsOf(job: Job): number {
  // "get_markets" is batch.ts's BATCH_COMMAND, which imports this module.
  return job.command === "get_markets" && Array.isArray(job.params)
    ? Math.max(1, job.params.length)
    : 1;
}

/**
 * A unit of work in the dispatcher. Every field is set from the start, so that all jobs share
 * one shape, and settling costs no closure per job.
 */
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
  /**
   * Jobs dispatched to this worker, by envelope `msg_id` (the dispatcher's own bookkeeping).
   * @ignore
   */
  readonly jobs: Map<string, Job> = new Map();
  /**
   * Requests this worker no longer owns (deadline passed, moved away), for late-answer logs.
   * @ignore
   */
  readonly abandoned: RecentIds = new RecentIds(1024);
  /** Writes one frame to the worker (its link on the worker port). */
  readonly send: (frame: string) => void;

  /** Worker `id` from `address`, written to with `send`. */
  constructor(
    id: string,
    address: string,
    send: (frame: string) => void,
    options: { clock: Clock; defaultConcurrency: number },
  ) {
    super(id, address, options);
    this.send = send;
  }

  /**
   * Takes `job` off this worker: it no longer counts against its slots.
   * @ignore
   */
  release(job: Job): void {
    if (job.msgId && this.jobs.delete(job.msgId)) this.inFlight--;
    job.worker = undefined;
  }

  /**
   * @ignore
   * This worker sat on `job` (a `probe`, or not) past its deadline: it looks slow and unreliable
   * from now on, and gets no new work until it answers one in time.
   */
  missedDeadline(job: Job, probe: boolean, now: number): void {
    this.recordFailure(unitsOf(job));
    const reason = `${job.command} ${
      probe ? "probe " : ""
    }passed its deadline of ${
      Math.round((job.deadline - job.startedAt) / 100) / 10
    } s`;
    if (this.bench(reason)) {
      log.warn(
        "Worker {id} benched: {reason}; no new work until it answers a probe in time",
        { id: this.id, reason },
      );
    }
    this.ewmaMs = Math.max(this.ewmaMs ?? 0, now - job.startedAt);
  }

  /**
   * The request `msgId` is no longer this worker's: it is told to stop, a late answer is dropped.
   * @ignore
   */
  abandon(msgId: string, reason: string): void {
    this.abandoned.add(msgId);
    try {
      this.send(
        encodeEnvelope(MessageType.CANCEL, { request_id: msgId, reason }),
      );
    } catch {
      // The worker is going away; nothing to cancel.
    }
  }
}
