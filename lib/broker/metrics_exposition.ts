/**
 * Rendering for `/metrics`: every metric defined on a prom-client registry, filled when scraped
 * from the counts that the request path keeps (`metrics_series.ts`, `metrics.ts`) and from the
 * broker's live state (workers, queue, connections, upstream reports).
 *
 * @module
 */

import { Counter, Gauge, type Registry } from "npm:prom-client@15.1.3";
import { ErrorCode } from "../errors.ts";
import type { GuardStats } from "../transport/guard.ts";
import type { UpstreamHost } from "../upstream_status.ts";
import { type CommandSeries, LATENCY_BUCKETS } from "./metrics_series.ts";
import type { Clock, WorkerRecord } from "./registry.ts";

const OUTCOMES: ReadonlySet<string> = new Set(
  Object.values(ErrorCode).map((c) => c.toLowerCase()),
);

type Port = "worker" | "requester";

/** What the metrics are filled from when scraped. */
export interface ExpositionState {
  /** The server's version, for `switchyard_build_info`. */
  readonly version: string;
  /** The clock for the start time and cool-downs. */
  readonly clock: Clock;
  /** Answers by command. */
  readonly series: CommandSeries;
  /** The connected workers. */
  workers(): readonly WorkerRecord[];
  /** Requests waiting for a free worker. */
  queued(): number;
  /** Requests in flight from requesters. */
  inFlight(): number;
  /** Open connections on a port. */
  connections(port: Port): number;
  /** Connections accepted, by port. */
  readonly accepted: Readonly<Record<Port, number>>;
  /** Connections refused, by `port\nreason`. */
  readonly refusals: ReadonlyMap<string, number>;
  /** What the ports' connection guards refused, once attached. */
  guard(): Record<Port, GuardStats> | undefined;
  /** Batches finished, by outcome. */
  readonly batchOutcomes: Readonly<{ success: number; failed: number }>;
  /** Batch items finished, by outcome. */
  readonly batchItems: Readonly<{ success: number; failed: number }>;
  /** Batches in flight. */
  readonly batches: ReadonlyMap<string, { total: number; done: number }>;
}

/** Defines every metric on `registry`, filled from `state` at each scrape. */
export function defineMetrics(
  registry: Registry,
  state: ExpositionState,
): void {
  // In this order in the text.
  defineRequestMetrics(registry, state);
  defineWorkerMetrics(registry, state);
  defineBatchMetrics(registry, state);
  defineUpstreamMetrics(registry, state);
  defineConnectionMetrics(registry, state);
}

/** The server, its requests and its queue. */
function defineRequestMetrics(
  registry: Registry,
  state: ExpositionState,
): void {
  const registers = [registry];
  const startedAt = state.clock.now() / 1000;
  const version = state.version;

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
      for (const [command, series] of state.series.all()) {
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
  registry.registerMetric(
    // prom-client renders any object of this shape; its own Histogram cannot be filled from
    // counts kept elsewhere.
    {
      name: "switchyard_request_duration_seconds",
      help: "Time from a request's arrival to its answer, by command",
      type: "histogram",
      get: () => histogram(state.series),
    } as unknown as Counter,
  );
  new Gauge({
    name: "switchyard_queue_depth",
    help: "Requests waiting for a free worker",
    registers,
    collect() {
      this.set(state.queued());
    },
  });
  new Gauge({
    name: "switchyard_requests_in_flight",
    help: "Requester requests accepted and not yet answered",
    registers,
    collect() {
      this.set(state.inFlight());
    },
  });
}

/** The workers, by state and one by one. */
function defineWorkerMetrics(registry: Registry, state: ExpositionState): void {
  const registers = [registry];
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
      for (const w of state.workers()) counts[workerState(w)]++;
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
      for (const w of state.workers()) {
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
}

/** `get_markets` batches and their items. */
function defineBatchMetrics(registry: Registry, state: ExpositionState): void {
  const registers = [registry];
  const outcomes = (
    name: string,
    help: string,
    counts: () => { success: number; failed: number },
  ) =>
    new Counter({
      name,
      help,
      labelNames: ["outcome"],
      registers,
      collect() {
        this.reset();
        this.inc({ outcome: "success" }, counts().success);
        this.inc({ outcome: "failed" }, counts().failed);
      },
    });
  outcomes(
    "switchyard_batches_total",
    "get_markets batches finished, by outcome (success: every item succeeded)",
    () => state.batchOutcomes,
  );
  outcomes(
    "switchyard_batch_items_total",
    "Items of get_markets batches finished, by outcome",
    () => state.batchItems,
  );
  new Gauge({
    name: "switchyard_batches_in_flight",
    help: "get_markets batches running now",
    registers,
    collect() {
      this.set(state.batches.size);
    },
  });
  new Gauge({
    name: "switchyard_batch_items_pending",
    help: "Unfinished items of the batches running now",
    registers,
    collect() {
      let n = 0;
      for (const b of state.batches.values()) n += b.total - b.done;
      this.set(n);
    },
  });
}

/** What workers report of their market-data upstreams. */
function defineUpstreamMetrics(
  registry: Registry,
  state: ExpositionState,
): void {
  const registers = [registry];
  new Gauge({
    name: "switchyard_upstream_blocked",
    help:
      "1 for each market-data source a worker reports blocked (banned or failing)",
    labelNames: ["worker", "name", "source"],
    registers,
    collect() {
      this.reset();
      for (const w of state.workers()) {
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
        const now = state.clock.now();
        for (const w of state.workers()) {
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
        for (const w of state.workers()) {
          const cache = w.upstream?.cache;
          if (cache) this.inc({ worker: w.id, name: w.name }, cache[kind]);
        }
      },
    });
  }
  const ratioHelp =
    "Cache hits over lookups, over every worker that reports its cache (absent before the first lookup)";
  registry.registerMetric(
    // A ratio of no lookups has no value: the series is left out until there is one (a gauge
    // of prom-client's always has a sample, and NaN is what Prometheus then shows).
    {
      name: "switchyard_upstream_cache_hit_ratio",
      help: ratioHelp,
      type: "gauge",
      get: () => {
        let hits = 0;
        let lookups = 0;
        for (const w of state.workers()) {
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
}

/** Connections and what the ports refused. */
function defineConnectionMetrics(
  registry: Registry,
  state: ExpositionState,
): void {
  const registers = [registry];
  new Gauge({
    name: "switchyard_connections",
    help: "Open WebSocket connections, by port",
    labelNames: ["port"],
    registers,
    collect() {
      for (const port of ["worker", "requester"] as const) {
        this.set({ port }, state.connections(port));
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
        this.inc({ port }, state.accepted[port]);
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
      for (const [key, n] of state.refusals) {
        const [port, reason] = key.split("\n");
        this.inc({ port, reason }, n);
      }
      for (const [port, g] of guardedPorts(state)) {
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
      for (const [port, g] of guardedPorts(state)) {
        this.inc({ port }, g.accept_errors);
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
      for (const [port, g] of guardedPorts(state)) {
        this.set({ port, state: "open" }, g.open);
        this.set({ port, state: "pending" }, g.pending);
      }
    },
  });
}

/** Each port's connection guard figures; none before the guards are attached. */
function guardedPorts(state: ExpositionState): [Port, GuardStats][] {
  const guard = state.guard();
  if (!guard) return [];
  return (["worker", "requester"] as const).map((port) => [port, guard[port]]);
}

function histogram(series: CommandSeries) {
  const values: {
    metricName: string;
    labels: Record<string, string | number>;
    value: number;
  }[] = [];
  const name = "switchyard_request_duration_seconds";
  for (const [command, one] of series.all()) {
    let cumulative = 0;
    for (let i = 0; i <= LATENCY_BUCKETS.length; i++) {
      cumulative += one.buckets[i];
      values.push({
        metricName: `${name}_bucket`,
        labels: {
          le: i < LATENCY_BUCKETS.length ? LATENCY_BUCKETS[i] : "+Inf",
          command,
        },
        value: cumulative,
      });
    }
    values.push({
      metricName: `${name}_sum`,
      labels: { command },
      value: one.sum / 1000,
    });
    values.push({
      metricName: `${name}_count`,
      labels: { command },
      value: one.count,
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
