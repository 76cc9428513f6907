/**
 * Live counters of a broker, for `GET /metrics` (Prometheus text) and the dashboard.
 *
 * The request path only bumps plain numbers: a counter per command and outcome, a bucket of a
 * latency histogram, a slot of a per-second timeline. Everything else (workers, queue, upstream
 * status) is read from the broker when scraped. `prom-client` renders the text: its own
 * `observe()`/`inc()` hash the label set on every call, ~0.5–0.8 µs per request, a few percent of
 * the broker's whole cost of a request (docs/metrics.md has the measurement).
 *
 * Label cardinality is bounded: a command gets its own series only when a worker or the server
 * offers it, or it succeeded, and only up to `maxCommands` of them; the rest count as `other`.
 * Outcomes are `success` or a wire error code; per-worker series vanish with the worker.
 *
 * Its parts, one file each: `metrics_series.ts` (recording per command), `metrics_timeline.ts`
 * (the dashboard's per-second feed) and `metrics_exposition.ts` (rendering the text).
 *
 * @module
 */

import { Registry } from "npm:prom-client@15.1.3";
import { BATCH_COMMAND } from "./batch.ts";
import type { GuardStats } from "../transport/guard.ts";
import type { Clock, WorkerRecord } from "./registry.ts";
import { CommandSeries } from "./metrics_series.ts";
import { defineMetrics } from "./metrics_exposition.ts";
import {
  type AnswerCounts,
  AnswerTimeline,
  type Timeline,
} from "./metrics_timeline.ts";

export { LATENCY_BUCKETS, OTHER_COMMAND } from "./metrics_series.ts";
export { workerState } from "./metrics_exposition.ts";
export type { AnswerCounts, Timeline } from "./metrics_timeline.ts";

/** The two ports, as metric labels name them. */
export type PortName = "worker" | "requester";

/** Why a connection was refused. */
export type RefusalReason =
  | "unauthorized"
  | "rate_limited"
  | "too_many_connections"
  | "shutting_down";

/** What the metrics read from the broker when scraped. */
export interface MetricsSource {
  /** The connected workers. */
  workers(): readonly WorkerRecord[];
  /** Requests waiting for a free worker. */
  queued(): number;
  /** Requests in flight from requesters. */
  inFlight(): number;
  /** Open connections on a port. */
  connections(port: PortName): number;
}

/** Options for {@linkcode Metrics}. */
export interface MetricsOptions {
  /** Commands with their own series; later ones count as `other`. @default 64 */
  maxCommands?: number;
  /** Whether a command has a right to its own series (a worker or the server offers it). @default none does */
  isKnownCommand?: (command: string) => boolean;
  /** Seconds of per-second history kept for the dashboard. @default 600 */
  timelineSeconds?: number;
  /** Recent failures kept for the dashboard. @default 50 */
  recentErrors?: number;
  /** The clock for the timeline and cool-downs. @default the wall clock */
  clock?: Clock;
  /** Version for `switchyard_build_info`. */
  version?: string;
}

/** One failed request, as the dashboard lists it. */
export interface RecentError {
  /** Epoch ms. */
  at: number;
  /** The command, or "" for a frame rejected before it named one. */
  command: string;
  /** The answer's wire error code. */
  error_code: string;
  /** The answer's error text. */
  error: string;
}

/** A batch in flight, as the dashboard shows it. */
export interface BatchView {
  /** The batch's request_id. */
  id: string;
  /** Items in the batch. */
  total: number;
  /** Items finished so far. */
  done: number;
  /** Epoch ms. */
  started: number;
}

/** Updates one batch in flight; see {@linkcode Metrics.batchStarted}. */
export interface BatchTracker {
  /** Sets how many items are finished. */
  progress(done: number): void;
  /**
   * Counts one finished item as an answer of its own (throughput, latency, the dashboard's
   * answered and failed): `errorCode` undefined for a success.
   */
  item(errorCode: string | undefined, elapsedMs: number): void;
  /** Ends the tracking with the batch's item counts; later calls do nothing. */
  finish(success: number, failed: number): void;
}

/** The broker's live counters; see the module doc. */
export class Metrics {
  /** The Prometheus text content type. */
  static readonly CONTENT_TYPE: string = Registry.PROMETHEUS_CONTENT_TYPE;
  /**
   * The prom-client registry the text is rendered from; register more metrics on it. (Left out
   * of the generated docs: its type is prom-client's, documented there.)
   * @ignore
   */
  readonly registry: Registry = new Registry();
  #clock: Clock;
  #series: CommandSeries;
  #source: MetricsSource | undefined;
  #guard: (() => Record<PortName, GuardStats> | undefined) | undefined;
  #connections: Record<PortName, number> = { worker: 0, requester: 0 };
  #refusals = new Map<string, number>();
  #batches = new Map<string, BatchView>();
  #batchOutcomes = { success: 0, failed: 0 };
  #batchItems = { success: 0, failed: 0 };
  // Batches finished whose own answer is still to be counted: that answer is not counted again
  // in the timeline or the answers, its items were.
  #batchAnswersDue = 0;
  #errors: RecentError[] = [];
  #listeners = new Set<() => void>();
  #maxErrors: number;
  #timeline: AnswerTimeline;

  /** Defines every metric on a registry of its own. */
  constructor(options: MetricsOptions = {}) {
    this.#clock = options.clock ?? { now: () => Date.now() };
    this.#series = new CommandSeries(
      options.maxCommands ?? 64,
      options.isKnownCommand ?? (() => false),
    );
    this.#maxErrors = options.recentErrors ?? 50;
    this.#timeline = new AnswerTimeline(
      options.timelineSeconds ?? 600,
      this.#clock.now(),
    );
    // deno-lint-ignore no-this-alias
    const m = this;
    defineMetrics(this.registry, {
      version: options.version ?? "unknown",
      clock: this.#clock,
      series: this.#series,
      workers: () => m.#source?.workers() ?? [],
      queued: () => m.#source?.queued() ?? 0,
      inFlight: () => m.#source?.inFlight() ?? 0,
      connections: (port) => m.#source?.connections(port) ?? 0,
      accepted: this.#connections,
      refusals: this.#refusals,
      guard: () => m.#guard?.(),
      batchOutcomes: this.#batchOutcomes,
      batchItems: this.#batchItems,
      batches: this.#batches,
    });
  }

  /** Sets what is read at scrape time. */
  attach(source: MetricsSource): void {
    this.#source = source;
  }

  /** Sets where the ports' connection guards report what they refused (see `guard.ts`). */
  attachGuard(stats: () => Record<PortName, GuardStats> | undefined): void {
    this.#guard = stats;
  }

  /**
   * Counts one answered request: `errorCode` undefined for a success. `now` is the clock's time
   * at the answer, which the caller has read already.
   */
  request(
    command: string,
    errorCode: string | undefined,
    elapsedMs: number,
    now: number,
    error?: string,
  ): void {
    this.#series.record(
      command,
      errorCode === undefined ? "success" : errorCode,
      elapsedMs,
    );
    if (command === BATCH_COMMAND && this.#batchAnswersDue > 0) {
      this.#batchAnswersDue--;
    } else this.#timeline.add(errorCode !== undefined, elapsedMs, now);
    if (errorCode !== undefined) {
      if (this.#errors.length >= this.#maxErrors) this.#errors.shift();
      this.#errors.push({
        at: now,
        command: command.slice(0, 100),
        error_code: errorCode,
        error: (error ?? errorCode).slice(0, 300),
      });
    }
  }

  /** Answers so far, each batch item counted as one in place of its batch. */
  answers(): AnswerCounts {
    return this.#timeline.answers();
  }

  /**
   * Calls `listener` whenever what the dashboard shows changed in a way worth showing at once
   * (a worker came or went, a batch started, moved or ended); returns the unsubscribe.
   */
  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Tells the listeners of {@linkcode Metrics.onChange} that something changed. */
  changed(): void {
    for (const listener of this.#listeners) listener();
  }

  /** Counts an accepted connection. */
  accepted(port: PortName): void {
    this.#connections[port]++;
  }

  /** Counts a refused connection. */
  refused(port: PortName, reason: RefusalReason): void {
    const key = `${port}\n${reason}`;
    this.#refusals.set(key, (this.#refusals.get(key) ?? 0) + 1);
  }

  /** Starts tracking a batch in flight; call `finish` exactly once. */
  batchStarted(id: string, total: number): BatchTracker {
    const view: BatchView = { id, total, done: 0, started: this.#clock.now() };
    // Two batches may carry one request_id on different connections: key them apart.
    let key = id;
    for (let n = 2; this.#batches.has(key); n++) key = `${id}#${n}`;
    this.#batches.set(key, view);
    this.changed();
    let finished = false;
    let counted = 0;
    return {
      progress: (done) => {
        if (done === view.done) return;
        view.done = done;
        this.changed();
      },
      item: (errorCode, elapsedMs) => {
        if (finished || counted >= total) return;
        counted++;
        if (errorCode === undefined) this.#batchItems.success++;
        else this.#batchItems.failed++;
        this.#timeline.add(
          errorCode !== undefined,
          elapsedMs,
          this.#clock.now(),
        );
      },
      finish: (success, failed) => {
        if (finished) return;
        finished = true;
        this.#batches.delete(key);
        // Items that never finished one by one (the batch broke off) count as failed now.
        const rest = total - counted;
        this.#batchItems.failed += rest;
        const now = this.#clock.now();
        for (let i = 0; i < rest; i++) this.#timeline.add(true, undefined, now);
        this.#batchAnswersDue++;
        if (failed === 0 && success === total) this.#batchOutcomes.success++;
        else this.#batchOutcomes.failed++;
        this.changed();
      },
    };
  }

  /** Batches in flight, oldest first. */
  batches(): BatchView[] {
    return [...this.#batches.values()].map((b) => ({ ...b }));
  }

  /** Recent failures, newest last. */
  recentErrors(): RecentError[] {
    return [...this.#errors];
  }

  /** The last `seconds` of the per-second timeline (at most `timelineSeconds`). */
  timeline(seconds = 300): Timeline {
    return this.#timeline.read(seconds, this.#clock.now());
  }

  /** The Prometheus text exposition. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}
