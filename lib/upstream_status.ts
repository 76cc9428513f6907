/**
 * What a worker says of its market-data upstreams in its heartbeats (the additive `upstream`
 * field): per host a cool-down, the requests left this hour and today, the request rate; and its
 * cache's hits and misses. Read defensively: a worker that sends nothing, or something malformed,
 * simply has no upstream status.
 *
 * @module
 */

/** One upstream host as a worker sees it. */
export interface UpstreamHost {
  /** Epoch ms until which the worker leaves this host alone; 0 when it is not cooling down. */
  cooldown_until: number;
  /** Requests the worker may still send this hour; null when it has no hourly budget or did not say. */
  budget_hour: number | null;
  /** Requests the worker may still send today; null when it has no daily budget or did not say. */
  budget_day: number | null;
  /** Requests per second it sends now; null when it did not say. */
  rate: number | null;
}

/** The `upstream` field of a worker heartbeat, cleaned. */
export interface UpstreamStatus {
  /** By host name. */
  hosts: Record<string, UpstreamHost>;
  /** The market cache's counters; null when the worker did not say. */
  cache: { hits: number; misses: number } | null;
}

/** Hosts kept per worker: a worker cannot grow the server's memory or the metric series. */
export const MAX_UPSTREAM_HOSTS = 16;

function count(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) && value >= 0
    ? value
    : null;
}

/**
 * Reads a heartbeat's `upstream` field; undefined when it is absent or not an object. Fields of
 * the wrong type are dropped, host names are capped at 100 characters and at
 * {@linkcode MAX_UPSTREAM_HOSTS} hosts.
 */
export function readUpstreamStatus(raw: unknown): UpstreamStatus | undefined {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    return undefined;
  }
  const { hosts, cache } = raw as { hosts?: unknown; cache?: unknown };
  const out: UpstreamStatus = { hosts: {}, cache: null };
  if (typeof hosts === "object" && hosts !== null && !Array.isArray(hosts)) {
    let n = 0;
    for (const [name, value] of Object.entries(hosts)) {
      if (n >= MAX_UPSTREAM_HOSTS) break;
      if (typeof value !== "object" || value === null) continue;
      const h = value as Record<string, unknown>;
      out.hosts[name.slice(0, 100)] = {
        cooldown_until: count(h.cooldown_until) ?? 0,
        budget_hour: count(h.budget_hour),
        budget_day: count(h.budget_day),
        rate: count(h.rate),
      };
      n++;
    }
  }
  if (typeof cache === "object" && cache !== null) {
    const c = cache as Record<string, unknown>;
    const hits = count(c.hits);
    const misses = count(c.misses);
    if (hits !== null || misses !== null) {
      out.cache = { hits: hits ?? 0, misses: misses ?? 0 };
    }
  }
  return out;
}
