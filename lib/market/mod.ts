/**
 * Chinese market data (ETF, stock and index K-lines) for Switchyard workers.
 *
 * A {@linkcode MarketService} validates `get_market` params, asks its providers in fallback
 * order (Eastmoney, Tencent, a CSV folder, synthetic demo data), caches whole histories and
 * slices them per request, and stays polite to each upstream host: a rate limit, bounded
 * concurrency, retries with jittered back-off and a circuit breaker. Failed items carry an
 * `error_code` and a `retriable` flag so the broker knows whether another worker may succeed.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createMarketService } from "./mod.ts";
 * const market = createMarketService({ providers: ["demo"] });
 * const handlers = market.actions();
 * const result = await handlers.get_market(
 *   { symbol_type: "etf", code: "510300", start_date: "2024-01-01", end_date: "2024-01-05" },
 *   { signal: new AbortController().signal, requestId: "example" },
 * );
 * const answer = result as { success: boolean; code: string; data: unknown[] };
 * assert.equal(answer.success, true);
 * assert.equal(answer.code, "510300");
 * assert.ok(answer.data.length > 0);
 * market.close();
 * ```
 *
 * @module
 */

export { createMarketService } from "./service.ts";
export { validateMarketParams } from "./params.ts";
export { secidCandidates, secidFor } from "./secid.ts";
export { aggregateBars } from "./aggregate.ts";
export { parseProviderList, PROVIDER_NAMES } from "./providers.ts";
export { isEntryFresh } from "./cache.ts";
export { parseCsvBars } from "./csv.ts";
export { systemClock } from "./clock.ts";
export { parseCookieFile } from "./cookies.ts";
export { createProxyFetch, parseHeaderFlags } from "./upstream_options.ts";
export { HOST_LIMITS } from "./politeness.ts";
export {
  isRetriable,
  MarketParamsError,
  RETRIABLE_ERROR_CODES,
  UnknownCodeError,
  UpstreamBlockedError,
  UpstreamUnavailableError,
} from "./errors.ts";

export type {
  MarketService,
  MarketServiceOptions,
  MarketStats,
  SnapshotResult,
  SymbolListResult,
  UpstreamStatus,
} from "./service.ts";
export type { SnapshotPage, SnapshotRow } from "./snapshot.ts";
export type { ListedSymbol } from "./symbols.ts";
export type { ValidateMarketParamsOptions } from "./params.ts";
export type { BreakerOptions } from "./host_gate.ts";
export type { CacheEntry } from "./cache.ts";
export type { CookieJar } from "./cookies.ts";
export type { HostStatus } from "./host_gate.ts";
export type { HostLimits } from "./politeness.ts";
export type { ProxyFetch } from "./upstream_options.ts";
export type { Clock } from "./clock.ts";
export type { MarketError } from "./errors.ts";
export type * from "./types.ts";
