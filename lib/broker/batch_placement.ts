/**
 * Where batch items may go, by what workers report of their market-data upstreams in heartbeats
 * (per host: cool-down end, requests left this hour and today, request rate). A worker whose
 * hosts are all cooling down past the deadline, or out of budget, gets nothing; the others get
 * shares in proportion to the rate they can fetch at; and items beyond what all of them can
 * fetch before the deadline are refused at once, retriable, rather than sent to wait and time
 * out — or worse, to press a host that is already pushing back.
 *
 * A worker that reports nothing (an older worker, or one without upstream hosts, such as the
 * demo provider) counts as unlimited: placement is then what it always was.
 *
 * @module
 */

/** One upstream host in a worker's heartbeat, as the server keeps it. */
export interface UpstreamHostReport {
  /** Epoch ms until which the worker leaves this host alone; 0 when it is not cooling down. */
  cooldown_until: number;
  /** Requests left this hour; null or absent when the worker did not say. */
  budget_hour?: number | null;
  /** Requests left today; null or absent when the worker did not say. */
  budget_day?: number | null;
  /** Requests per second the worker allows itself; null, absent or 0 for no limit. */
  rate?: number | null;
}

/** A worker's upstream report: its hosts. */
export interface UpstreamReport {
  /** By host name. */
  hosts: Record<string, UpstreamHostReport>;
}

/** The part of a worker that placement reads. */
export interface PlacementWorker {
  readonly id: string;
  readonly weight: number;
  /** The `upstream` of the worker's last heartbeat that had one. */
  readonly upstream?: UpstreamReport;
}

/** The error code of an item refused because no worker could fetch it before the deadline. */
export const UPSTREAM_BUDGET = "UPSTREAM_BUDGET";

function finite(n: number | null | undefined): number {
  return typeof n === "number" && Number.isFinite(n) && n >= 0 ? n : Infinity;
}

/**
 * Items a worker can still fetch from its best host between `now` and `deadline`: limited by
 * the host's cool-down, its rate and its budgets. `Infinity` when the worker reports no host.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { fetchCapacity } from "./batch_placement.ts";
 * const now = 1_000_000;
 * const upstream = { hosts: { "a.example": { cooldown_until: 0, budget_hour: 50, budget_day: 400, rate: 0.5 } } };
 * assert.equal(fetchCapacity(upstream, now, now + 60_000), 31); // 1 now, then one per 2 s
 * assert.equal(fetchCapacity(upstream, now, now + 600_000), 50); // the hour's budget
 * const cooling = { hosts: { "a.example": { cooldown_until: now + 120_000, rate: 1 } } };
 * assert.equal(fetchCapacity(cooling, now, now + 60_000), 0);
 * ```
 */
export function fetchCapacity(
  upstream: UpstreamReport | undefined,
  now: number,
  deadline: number,
): number {
  const hosts = upstream ? Object.values(upstream.hosts) : [];
  if (hosts.length === 0) return Infinity;
  let best = 0;
  for (const host of hosts) {
    const start = Math.max(
      now,
      finite(host.cooldown_until) === Infinity ? 0 : host.cooldown_until,
    );
    if (start >= deadline) continue;
    const rate = host.rate ?? 0;
    const byRate = rate > 0
      ? Math.floor(rate * (deadline - start) / 1000) + 1
      : Infinity;
    const budget = Math.min(finite(host.budget_hour), finite(host.budget_day));
    best = Math.max(best, Math.min(byRate, budget));
  }
  return best;
}

/**
 * Items per second a worker can fetch now: the rate of its fastest host that is neither cooling
 * down nor out of budget; 0 when none is; `undefined` when it reports no host or a host without
 * a rate limit.
 */
export function fetchRate(
  upstream: UpstreamReport | undefined,
  now: number,
): number | undefined {
  const hosts = upstream ? Object.values(upstream.hosts) : [];
  if (hosts.length === 0) return undefined;
  let best = 0;
  for (const host of hosts) {
    if (host.cooldown_until > now) continue;
    if (Math.min(finite(host.budget_hour), finite(host.budget_day)) <= 0) {
      continue;
    }
    if (!host.rate || host.rate <= 0) return undefined;
    best = Math.max(best, host.rate);
  }
  return best;
}

/** Where a round of a batch may go. */
export interface PlacementPlan<W extends PlacementWorker> {
  /** Workers that can fetch something before the deadline. */
  usable: W[];
  /** Items each usable worker can take, by id (`Infinity` when unknown). */
  capacity: Map<string, number>;
  /** Share weights by id: fetch rates when every usable worker has one, else balancer weights. */
  weight: Map<string, number>;
  /** All usable workers' capacity together. */
  total: number;
  /** When the first worker can fetch again, when none can now (epoch ms). */
  earliest?: number;
}

/**
 * Plans a round: who can take items, how many, and in what proportion. `committed` holds items
 * other batches already placed on each worker and not yet finished, which use the same rate.
 */
export function planPlacement<W extends PlacementWorker>(
  workers: readonly W[],
  now: number,
  deadline: number,
  committed: (worker: W) => number = () => 0,
): PlacementPlan<W> {
  const usable: W[] = [];
  const capacity = new Map<string, number>();
  const rates = new Map<string, number | undefined>();
  let earliest: number | undefined;
  let total = 0;
  for (const w of workers) {
    const cap = fetchCapacity(w.upstream, now, deadline) - committed(w);
    if (cap <= 0) {
      for (const host of Object.values(w.upstream?.hosts ?? {})) {
        const free = Math.max(host.cooldown_until, now);
        if (earliest === undefined || free < earliest) earliest = free;
      }
      continue;
    }
    usable.push(w);
    capacity.set(w.id, cap);
    rates.set(w.id, fetchRate(w.upstream, now));
    total += cap;
  }
  const byRate = usable.length > 0 &&
    usable.every((w) => (rates.get(w.id) ?? 0) > 0);
  const weight = new Map(
    usable.map((w) => [w.id, byRate ? rates.get(w.id)! : w.weight]),
  );
  return {
    usable,
    capacity,
    weight,
    total,
    earliest: usable.length === 0 ? earliest : undefined,
  };
}
