/**
 * What the workers' announced upstream pacing (the `rate` of each host in their heartbeats)
 * means for time: how long a market command may need beyond the default deadline, and how long
 * a worker that waits for its next upstream slot may stay silent.
 *
 * A worker fetches one K-line series per rate-limit slot (Eastmoney: one per 30 s, give or take
 * the limiter's 30% jitter). A market command sent without its own `timeout` therefore gets the
 * default deadline plus the slots its items need on the workers that can take them, counting
 * the market items they already hold; capped by `maxTimeoutMs`. A batch beyond that cap is
 * placed as far as the rates allow and the rest is refused with `UPSTREAM_BUDGET` and a
 * `retry_at`, as before.
 *
 * @module
 */

import { fetchRate, type UpstreamReport } from "./batch_placement.ts";

/** How far the workers' rate limiter may stretch one interval (its jitter). */
export const PACING_JITTER = 0.3;

/** Commands whose work waits for upstream slots. */
const PACED_COMMANDS: ReadonlySet<string> = new Set([
  "get_market",
  "get_markets",
]);

/** A worker as pacing sees it: its upstream report and the jobs it holds. */
export interface PacedWorker {
  readonly upstream?: UpstreamReport;
  readonly draining: boolean;
  readonly jobs: ReadonlyMap<string, { command: string; params: unknown }>;
}

/** Items a command stands for: a batch's items, else one. */
export function itemsOf(command: string, params: unknown): number {
  if (command !== "get_markets") return 1;
  const items = Array.isArray(params)
    ? params
    : (params as { markets?: unknown } | null)?.markets;
  return Array.isArray(items) ? Math.max(1, items.length) : 1;
}

/**
 * The longest a worker may wait for its next upstream slot, in ms: one interval of its fastest
 * usable host, stretched by the jitter; undefined when it reports no rate limit.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { slotWaitMs } from "./pacing.ts";
 * const upstream = { hosts: { "k.example": { cooldown_until: 0, budget_hour: 60, budget_day: 500, rate: 1 / 30 } } };
 * assert.equal(slotWaitMs(upstream, 0), 39_000);
 * assert.equal(slotWaitMs(undefined, 0), undefined);
 * ```
 */
export function slotWaitMs(
  upstream: UpstreamReport | undefined,
  now: number,
): number | undefined {
  const rate = fetchRate(upstream, now);
  if (rate === undefined || rate <= 0) return undefined;
  return Math.ceil(1000 / rate * (1 + PACING_JITTER));
}

/** Market items a worker holds now (a batch chunk counts each of its items). */
export function heldItems(worker: PacedWorker): number {
  let n = 0;
  for (const job of worker.jobs.values()) {
    if (PACED_COMMANDS.has(job.command)) n += itemsOf(job.command, job.params);
  }
  return n;
}

/**
 * Extra time, in ms, that `command` with `params` needs beyond the default deadline at the
 * workers' pacing: the slots its items and the market items already held take, shared over the
 * workers that report a rate. 0 for other commands, or when no worker is paced.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { pacingAllowanceMs } from "./pacing.ts";
 * const upstream = { hosts: { "k.example": { cooldown_until: 0, budget_hour: 60, budget_day: 500, rate: 1 / 30 } } };
 * const idle = { upstream, draining: false, jobs: new Map() };
 * assert.equal(pacingAllowanceMs([idle], "get_market", {}, 0), 39_000);
 * assert.equal(pacingAllowanceMs([idle, idle], "get_markets", [{}, {}, {}], 0), 78_000);
 * assert.equal(pacingAllowanceMs([idle], "get_time", {}, 0), 0);
 * ```
 */
export function pacingAllowanceMs(
  workers: Iterable<PacedWorker>,
  command: string,
  params: unknown,
  now: number,
): number {
  if (!PACED_COMMANDS.has(command)) return 0;
  let paced = 0;
  let slowest = 0;
  let held = 0;
  for (const w of workers) {
    if (w.draining) continue;
    const wait = slotWaitMs(w.upstream, now);
    if (wait === undefined) continue;
    paced++;
    slowest = Math.max(slowest, wait);
    held += heldItems(w);
  }
  if (paced === 0) return 0;
  return Math.ceil((itemsOf(command, params) + held) / paced) * slowest;
}

/**
 * How long a worker may stay silent while it holds market work, beyond the silence limit: the
 * slots its held items wait for. 0 when it holds none or reports no rate.
 */
export function pacedSilenceMs(worker: PacedWorker, now: number): number {
  const wait = slotWaitMs(worker.upstream, now);
  return wait === undefined ? 0 : heldItems(worker) * wait;
}
