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
 * @module
 */

import { Counter, Gauge, Registry } from "npm:prom-client@15.1.3";
import { ErrorCode } from "../errors.ts";
import { BATCH_COMMAND } from "./batch.ts";
import type { GuardStats } from "../transport/guard.ts";
import type { Clock, WorkerRecord } from "./registry.ts";
import type { UpstreamHost } from "../upstream_status.ts";

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

/** Latency histogram bucket bounds, in seconds. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
  120,
  300,
];
const BUCKETS_MS = LATENCY_BUCKETS.map((s) => s * 1000);

/** The command label for commands without a series of their own. */
export const OTHER_COMMAND = "other";

const OUTCOMES: ReadonlySet<string> = new Set(
  Object.values(ErrorCode).map((c) => c.toLowerCase()),
);

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

/** Answers as the dashboard counts them: each batch item as one, in place of its batch. */
export interface AnswerCounts {
  /** Requests and batch items answered with success. */
  answered: number;
  /** Requests and batch items that failed, and rejected frames. */
  failed: number;
}

/**
 * Per-second totals, oldest first, ending at `end` (epoch seconds, exclusive). A batch counts
 * as its items, each when it finishes, never as one answer at its end.
 */
export interface Timeline {
  /** The second after the last one, in epoch seconds. */
  end: number;
  /** Requests and batch items answered per second. */
  requests: number[];
  /** Requests and batch items answered with a failure per second. */
  failures: number[];
  /** Mean latency per second in ms; null for a second without requests. */
  mean_ms: (number | null)[];
  /** Largest latency per second in ms; null for a second without requests. */
  max_ms: (number | null)[];
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

class Series {
  outcomes = new Map<string, number>();
  buckets = new Float64Array(BUCKETS_MS.length + 1);
  sum = 0;
  count = 0;
}

/** The broker's live counters; see the module doc. */
export class Metrics {
  /** The Prometheus text content type. */
  static readonly CONTENT_TYPE: string = Registry.PROMETHEUS_CONTENT_TYPE;
  /** The prom-client registry the text is rendered from; register more metrics on it. */
  readonly registry: Registry = new Registry();
  #clock: Clock;
  #maxCommands: number;
  #isKnown: (command: string) => boolean;
  #series = new Map<string, Series>();
  #other = new Series();
  #source: MetricsSource | undefined;
  #guard: (() => Record<PortName, GuardStats> | undefined) | undefined;
  #connections: Record<PortName, number> = { worker: 0, requester: 0 };
  #refusals = new Map<string, number>();
  #batches = new Map<string, BatchView>();
  #batchOutcomes = { success: 0, failed: 0 };
  #batchItems = { success: 0, failed: 0 };
  #answers: AnswerCounts = { answered: 0, failed: 0 };
  // Batches finished whose own answer is still to be counted: that answer is not counted again
  // in the timeline or the answers, its items were.
  #batchAnswersDue = 0;
  #errors: RecentError[] = [];
  #listeners = new Set<() => void>();
  #maxErrors: number;
  // The per-second timeline: a ring of slots, `#second` is the slot being filled.
  #slots: number;
  #second = 0;
  #requests: Float64Array;
  #failures: Float64Array;
  #latencySum: Float64Array;
  #latencyMax: Float64Array;
  /** Answers without a latency of their own (items of a batch that ended before they ran). */
  #unmeasured: Float64Array;

  /** Defines every metric on a registry of its own. */
  constructor(options: MetricsOptions = {}) {
    this.#clock = options.clock ?? { now: () => Date.now() };
    this.#maxCommands = options.maxCommands ?? 64;
    this.#isKnown = options.isKnownCommand ?? (() => false);
    this.#maxErrors = options.recentErrors ?? 50;
    this.#slots = options.timelineSeconds ?? 600;
    this.#requests = new Float64Array(this.#slots);
    this.#failures = new Float64Array(this.#slots);
    this.#latencySum = new Float64Array(this.#slots);
    this.#latencyMax = new Float64Array(this.#slots);
    this.#unmeasured = new Float64Array(this.#slots);
    this.#second = Math.floor(this.#clock.now() / 1000);
    this.#define(options.version ?? "unknown");
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
    const series = this.#seriesOf(command, errorCode === undefined);
    const outcome = errorCode === undefined ? "success" : errorCode;
    series.outcomes.set(outcome, (series.outcomes.get(outcome) ?? 0) + 1);
    let i = 0;
    while (i < BUCKETS_MS.length && elapsedMs > BUCKETS_MS[i]) i++;
    series.buckets[i]++;
    series.sum += elapsedMs;
    series.count++;
    if (command === BATCH_COMMAND && this.#batchAnswersDue > 0) {
      this.#batchAnswersDue--;
    } else this.#answer(errorCode !== undefined, elapsedMs, now);
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

  /** Counts one answer (a request's or a batch item's) in the timeline and the answers. */
  #answer(failed: boolean, elapsedMs: number | undefined, now: number): void {
    const second = Math.floor(now / 1000);
    if (second !== this.#second) this.#advance(second);
    const slot = second % this.#slots;
    this.#requests[slot]++;
    if (elapsedMs !== undefined) {
      this.#latencySum[slot] += elapsedMs;
      if (elapsedMs > this.#latencyMax[slot]) {
        this.#latencyMax[slot] = elapsedMs;
      }
    } else this.#unmeasured[slot]++;
    if (failed) {
      this.#failures[slot]++;
      this.#answers.failed++;
    } else this.#answers.answered++;
  }

  /** Answers so far, each batch item counted as one in place of its batch. */
  answers(): AnswerCounts {
    return { ...this.#answers };
  }

  #seriesOf(command: string, succeeded: boolean): Series {
    const known = this.#series.get(command);
    if (known) return known;
    if (
      this.#series.size < this.#maxCommands && command !== OTHER_COMMAND &&
      (succeeded || this.#isKnown(command))
    ) {
      const series = new Series();
      this.#series.set(command, series);
      return series;
    }
    return this.#other;
  }

  #advance(second: number): void {
    if (second < this.#second) return; // a clock step back: keep filling the current slot
    const gap = Math.min(second - this.#second, this.#slots);
    for (let s = 1; s <= gap; s++) {
      const slot = (this.#second + s) % this.#slots;
      this.#requests[slot] = 0;
      this.#failures[slot] = 0;
      this.#latencySum[slot] = 0;
      this.#latencyMax[slot] = 0;
      this.#unmeasured[slot] = 0;
    }
    this.#second = second;
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
        this.#answer(errorCode !== undefined, elapsedMs, this.#clock.now());
      },
      finish: (success, failed) => {
        if (finished) return;
        finished = true;
        this.#batches.delete(key);
        // Items that never finished one by one (the batch broke off) count as failed now.
        const rest = total - counted;
        this.#batchItems.failed += rest;
        const now = this.#clock.now();
        for (let i = 0; i < rest; i++) this.#answer(true, undefined, now);
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
    const now = Math.floor(this.#clock.now() / 1000);
    if (now > this.#second) this.#advance(now);
    const n = Math.min(seconds, this.#slots);
    const out: Timeline = {
      end: this.#second + 1,
      requests: [],
      failures: [],
      mean_ms: [],
      max_ms: [],
    };
    for (let s = this.#second - n + 1; s <= this.#second; s++) {
      const slot = ((s % this.#slots) + this.#slots) % this.#slots;
      out.requests.push(this.#requests[slot]);
      out.failures.push(this.#failures[slot]);
      const count = this.#requests[slot] - this.#unmeasured[slot];
      out.mean_ms.push(
        count ? Math.round(this.#latencySum[slot] / count * 100) / 100 : null,
      );
      out.max_ms.push(
        count ? Math.round(this.#latencyMax[slot] * 100) / 100 : null,
      );
    }
    return out;
  }

  /** The Prometheus text exposition. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  // ---- exposition ----------------------------------------------------------------------------

  #define(version: string): void {
    const registers = [this.registry];
    // deno-lint-ignore no-this-alias
    const m = this;
    const workers = () => m.#source?.workers() ?? [];
    const startedAt = this.#clock.now() / 1000;

    new Gauge({
      name: "switchyard_build_info",
      help: "Always 1; the server's version as a label",
      labelNames: ["version"],
      registers,
      collect() {
        this.set({ version }, 1);
      },
    });
    new Gauge({
      name: "switchyard_start_time_seconds",
      help: "When the server started, in Unix seconds",
      registers,
      collect() {
        this.set(startedAt);
      },
    });
    new Counter({
      name: "switchyard_requests_total",
      help:
        "Requester requests answered, by command and outcome (success or error code)",
      labelNames: ["command", "outcome"],
      registers,
      collect() {
        this.reset();
        for (const [command, series] of m.#allSeries()) {
          for (const [code, n] of series.outcomes) {
            const lower = code.toLowerCase();
            const outcome = code === "success" || OUTCOMES.has(lower)
              ? lower
              : "error";
            this.inc({ command, outcome }, n);
          }
        }
      },
    });
    this.registry.registerMetric(
      // prom-client renders any object of this shape; its own Histogram cannot be filled from
      // counts kept elsewhere.
      {
        name: "switchyard_request_duration_seconds",
        help: "Time from a request's arrival to its answer, by command",
        type: "histogram",
        get: () => this.#histogram(),
      } as unknown as Counter,
    );
    new Gauge({
      name: "switchyard_queue_depth",
      help: "Requests waiting for a free worker",
      registers,
      collect() {
        this.set(m.#source?.queued() ?? 0);
      },
    });
    new Gauge({
      name: "switchyard_requests_in_flight",
      help: "Requester requests accepted and not yet answered",
      registers,
      collect() {
        this.set(m.#source?.inFlight() ?? 0);
      },
    });
    new Gauge({
      name: "switchyard_workers",
      help:
        "Connected workers by state (ready, busy, blocked, unhealthy, draining)",
      labelNames: ["state"],
      registers,
      collect() {
        const counts: Record<string, number> = {
          ready: 0,
          busy: 0,
          blocked: 0,
          unhealthy: 0,
          draining: 0,
        };
        for (const w of workers()) counts[workerState(w)]++;
        for (const [state, n] of Object.entries(counts)) {
          this.set({ state }, n);
        }
      },
    });
    const perWorker = (
      name: string,
      help: string,
      value: (w: WorkerRecord) => number | undefined,
      type: "gauge" | "counter" = "gauge",
    ) => {
      const config = { name, help, labelNames: ["worker", "name"], registers };
      const fill = (metric: Gauge | Counter) => {
        metric.reset();
        for (const w of workers()) {
          const v = value(w);
          if (v !== undefined) metric.inc({ worker: w.id, name: w.name }, v);
        }
      };
      if (type === "gauge") {
        new Gauge({
          ...config,
          collect() {
            fill(this);
          },
        });
      } else {
        new Counter({
          ...config,
          collect() {
            fill(this);
          },
        });
      }
    };
    perWorker(
      "switchyard_worker_in_flight",
      "Requests a worker holds now",
      (w) => w.inFlight,
    );
    perWorker(
      "switchyard_worker_max_concurrency",
      "Requests a worker takes at once",
      (w) => w.maxConcurrency,
    );
    perWorker(
      "switchyard_worker_weight",
      "A worker's balancing weight",
      (w) => w.weight,
    );
    perWorker(
      "switchyard_worker_latency_seconds",
      "A worker's smoothed response time",
      (w) => w.ewmaMs === undefined ? undefined : w.ewmaMs / 1000,
    );
    perWorker(
      "switchyard_worker_served_total",
      "Requests a worker answered, failures included, since it connected",
      (w) => w.served,
      "counter",
    );
    perWorker(
      "switchyard_worker_failed_total",
      "Requests that failed on a worker since it connected",
      (w) => w.failures,
      "counter",
    );
    new Counter({
      name: "switchyard_batches_total",
      help:
        "get_markets batches finished, by outcome (success: every item succeeded)",
      labelNames: ["outcome"],
      registers,
      collect() {
        this.reset();
        this.inc({ outcome: "success" }, m.#batchOutcomes.success);
        this.inc({ outcome: "failed" }, m.#batchOutcomes.failed);
      },
    });
    new Counter({
      name: "switchyard_batch_items_total",
      help: "Items of get_markets batches finished, by outcome",
      labelNames: ["outcome"],
      registers,
      collect() {
        this.reset();
        this.inc({ outcome: "success" }, m.#batchItems.success);
        this.inc({ outcome: "failed" }, m.#batchItems.failed);
      },
    });
    new Gauge({
      name: "switchyard_batches_in_flight",
      help: "get_markets batches running now",
      registers,
      collect() {
        this.set(m.#batches.size);
      },
    });
    new Gauge({
      name: "switchyard_batch_items_pending",
      help: "Unfinished items of the batches running now",
      registers,
      collect() {
        let n = 0;
        for (const b of m.#batches.values()) n += b.total - b.done;
        this.set(n);
      },
    });
    new Gauge({
      name: "switchyard_upstream_blocked",
      help:
        "1 for each market-data source a worker reports blocked (banned or failing)",
      labelNames: ["worker", "name", "source"],
      registers,
      collect() {
        this.reset();
        for (const w of workers()) {
          for (const source of w.blockedSources) {
            this.set({ worker: w.id, name: w.name, source }, 1);
          }
        }
      },
    });
    const perHost = (
      name: string,
      help: string,
      each: (
        set: (labels: Record<string, string>, v: number) => void,
        host: UpstreamHost,
        now: number,
      ) => void,
      extraLabels: string[] = [],
    ) =>
      new Gauge({
        name,
        help,
        labelNames: ["worker", "name", "host", ...extraLabels],
        registers,
        collect() {
          this.reset();
          const now = m.#clock.now();
          for (const w of workers()) {
            for (
              const [host, status] of Object.entries(w.upstream?.hosts ?? {})
            ) {
              each(
                (labels, v) =>
                  this.set({ worker: w.id, name: w.name, host, ...labels }, v),
                status,
                now,
              );
            }
          }
        },
      });
    perHost(
      "switchyard_upstream_cooldown_seconds",
      "Seconds a worker still leaves an upstream host alone (0: not cooling down)",
      (set, h, now) => set({}, Math.max(0, (h.cooldown_until - now) / 1000)),
    );
    perHost(
      "switchyard_upstream_budget_remaining",
      "Requests a worker may still send to an upstream host, by window (hour, day)",
      (set, h) => {
        if (h.budget_hour !== null) set({ window: "hour" }, h.budget_hour);
        if (h.budget_day !== null) set({ window: "day" }, h.budget_day);
      },
      ["window"],
    );
    perHost(
      "switchyard_upstream_rate",
      "Requests per second a worker sends to an upstream host",
      (set, h) => {
        if (h.rate !== null) set({}, h.rate);
      },
    );
    for (const kind of ["hits", "misses"] as const) {
      new Counter({
        name: `switchyard_upstream_cache_${kind}_total`,
        help: `Market cache ${kind} a worker reports`,
        labelNames: ["worker", "name"],
        registers,
        collect() {
          this.reset();
          for (const w of workers()) {
            const cache = w.upstream?.cache;
            if (cache) this.inc({ worker: w.id, name: w.name }, cache[kind]);
          }
        },
      });
    }
    const ratioHelp =
      "Cache hits over lookups, over every worker that reports its cache (absent before the first lookup)";
    this.registry.registerMetric(
      // A ratio of no lookups has no value: the series is left out until there is one (a gauge
      // of prom-client's always has a sample, and NaN is what Prometheus then shows).
      {
        name: "switchyard_upstream_cache_hit_ratio",
        help: ratioHelp,
        type: "gauge",
        get: () => {
          let hits = 0;
          let lookups = 0;
          for (const w of workers()) {
            const cache = w.upstream?.cache;
            if (!cache) continue;
            hits += cache.hits;
            lookups += cache.hits + cache.misses;
          }
          return {
            name: "switchyard_upstream_cache_hit_ratio",
            help: ratioHelp,
            type: "gauge",
            values: lookups ? [{ labels: {}, value: hits / lookups }] : [],
            aggregator: "average",
          };
        },
      } as unknown as Gauge,
    );
    new Gauge({
      name: "switchyard_connections",
      help: "Open WebSocket connections, by port",
      labelNames: ["port"],
      registers,
      collect() {
        for (const port of ["worker", "requester"] as const) {
          this.set({ port }, m.#source?.connections(port) ?? 0);
        }
      },
    });
    new Counter({
      name: "switchyard_connections_total",
      help: "WebSocket connections accepted, by port",
      labelNames: ["port"],
      registers,
      collect() {
        this.reset();
        for (const port of ["worker", "requester"] as const) {
          this.inc({ port }, m.#connections[port]);
        }
      },
    });
    new Counter({
      name: "switchyard_connection_refusals_total",
      help: "Connections refused, by port and reason",
      labelNames: ["port", "reason"],
      registers,
      collect() {
        this.reset();
        for (const [key, n] of m.#refusals) {
          const [port, reason] = key.split("\n");
          this.inc({ port, reason }, n);
        }
        const guard = m.#guard?.();
        if (!guard) return;
        for (const port of ["worker", "requester"] as const) {
          const g = guard[port];
          this.inc(
            { port, reason: "per_address_limit" },
            g.refused_per_address,
          );
          this.inc({ port, reason: "open_connection_limit" }, g.refused_total);
          this.inc({ port, reason: "header_timeout" }, g.header_timeouts);
          this.inc({ port, reason: "body_timeout" }, g.body_timeouts);
          this.inc({ port, reason: "oversized_head" }, g.oversized_heads);
          this.inc({ port, reason: "evicted" }, g.evicted);
        }
      },
    });
    new Counter({
      name: "switchyard_accept_errors_total",
      help: "Errors accepting TCP connections (such as EMFILE), by port",
      labelNames: ["port"],
      registers,
      collect() {
        this.reset();
        const guard = m.#guard?.();
        if (!guard) return;
        for (const port of ["worker", "requester"] as const) {
          this.inc({ port }, guard[port].accept_errors);
        }
      },
    });
    new Gauge({
      name: "switchyard_tcp_connections",
      help:
        "Open TCP connections by port and state (pending: no complete request head yet; open: all)",
      labelNames: ["port", "state"],
      registers,
      collect() {
        this.reset();
        const guard = m.#guard?.();
        if (!guard) return;
        for (const port of ["worker", "requester"] as const) {
          this.set({ port, state: "open" }, guard[port].open);
          this.set({ port, state: "pending" }, guard[port].pending);
        }
      },
    });
  }

  *#allSeries(): Iterable<[string, Series]> {
    yield* this.#series;
    if (this.#other.count > 0) yield [OTHER_COMMAND, this.#other];
  }

  #histogram() {
    const values: {
      metricName: string;
      labels: Record<string, string | number>;
      value: number;
    }[] = [];
    const name = "switchyard_request_duration_seconds";
    for (const [command, series] of this.#allSeries()) {
      let cumulative = 0;
      for (let i = 0; i <= BUCKETS_MS.length; i++) {
        cumulative += series.buckets[i];
        values.push({
          metricName: `${name}_bucket`,
          labels: {
            le: i < BUCKETS_MS.length ? LATENCY_BUCKETS[i] : "+Inf",
            command,
          },
          value: cumulative,
        });
      }
      values.push({
        metricName: `${name}_sum`,
        labels: { command },
        value: series.sum / 1000,
      });
      values.push({
        metricName: `${name}_count`,
        labels: { command },
        value: series.count,
      });
    }
    return {
      name,
      help: "Time from a request's arrival to its answer, by command",
      type: "histogram",
      values,
      aggregator: "sum",
    };
  }
}

/** A worker's one state for the dashboard and `switchyard_workers`, the most telling first. */
export function workerState(
  w: WorkerRecord,
): "draining" | "unhealthy" | "blocked" | "busy" | "ready" {
  if (w.draining) return "draining";
  if (!w.healthy) return "unhealthy";
  if (w.blocked) return "blocked";
  if (w.inFlight >= w.maxConcurrency) return "busy";
  return "ready";
}
