/**
 * The market service: validation, provider fallback, cache, single-flight and the
 * `get_market` / `get_markets` actions a worker registers.
 *
 * @module
 */

import { getLogger } from "npm:@logtape/logtape@2.4.2";
import type { ActionHandler } from "../action.ts";
import {
  type CacheEntry,
  cacheKey,
  isEntryFresh,
  SeriesCache,
} from "./cache.ts";
import { type Clock, systemClock } from "./clock.ts";
import {
  isMarketError,
  isRetriable,
  MarketParamsError,
  UpstreamBlockedError,
  UpstreamUnavailableError,
} from "./errors.ts";
import type { CookieJar } from "./cookies.ts";
import { type BreakerOptions, HostGate, type HostStatus } from "./host_gate.ts";
import { HOST_LIMITS, OTHER_HOST_LIMITS } from "./politeness.ts";
import { SYMBOL_TYPES, validateMarketParams } from "./params.ts";
import { createProvider } from "./providers.ts";
import { shanghaiDate } from "./_dates.ts";
import { mapLimit } from "./_semaphore.ts";
import type {
  Adjust,
  MarketErrorCode,
  MarketFailure,
  MarketParams,
  MarketProvider,
  MarketResult,
  MarketSuccess,
  Period,
  SymbolType,
} from "./types.ts";
import { createSnapshotFetcher, type SnapshotPage } from "./snapshot.ts";
import {
  createSymbolLister,
  type ListedSymbol,
  type SymbolLister,
} from "./symbols.ts";

const logger = getLogger(["switchyard", "market"]);
const DAY_PERIODS: readonly Period[] = ["daily", "weekly", "monthly"];

/** Options for {@linkcode createMarketService}. */
export interface MarketServiceOptions {
  /** Provider names in fallback order (see `parseProviderList`). @default ["eastmoney"] */
  providers?: string[];
  /** Eastmoney base URL. @default "https://push2his.eastmoney.com" */
  eastmoneyUrl?: string;
  /**
   * Eastmoney's list API base URL, for `list_symbols`. @default `eastmoneyUrl` when that is set
   * (a mirror or a test server serves both), else "https://push2.eastmoney.com"
   */
  eastmoneyListUrl?: string;
  /**
   * Where `get_snapshot` turns when the list API fails; `null` for nowhere.
   * @default "https://push2delay.eastmoney.com" when the list API is Eastmoney's own, else none
   */
  eastmoneySnapshotFallbackUrl?: string | null;
  /** Tencent base URL. @default "https://proxy.finance.qq.com/ifzqgtimg" */
  tencentUrl?: string;
  /** Folder of CSV files; required when `providers` contains `csv`. */
  csvDir?: string | URL;
  /** Folder for the on-disk cache; memory only when unset. */
  cacheDir?: string;
  /** Series kept in the memory cache. @default 256 */
  cacheEntries?: number;
  /**
   * Requests per second per upstream host, with jitter; `0` disables. When unset, each known
   * host gets its own conservative rate (`HOST_LIMITS`), any other host 1.
   */
  rateLimit?: number;
  /** Requests per rolling hour per host; `0`: none. @default per host, see `HOST_LIMITS` */
  budgetHour?: number;
  /** Requests per rolling 24 hours per host; `0`: none. @default per host, see `HOST_LIMITS` */
  budgetDay?: number;
  /** Extra headers for every upstream request, e.g. a `User-Agent` or a `Cookie`. */
  headers?: Record<string, string>;
  /** Cookies sent to the hosts they belong to (see `parseCookieFile`). */
  cookies?: CookieJar;
  /** Requests in flight per upstream host. @default 2 */
  hostConcurrency?: number;
  /** Retries after a failed attempt (network error, HTTP 5xx/429). @default 2 */
  retries?: number;
  /** Upper bound of the first retry delay in ms, doubling per retry. @default 500 */
  retryBaseMs?: number;
  /** Per-attempt timeout in ms. @default 20000 */
  timeoutMs?: number;
  /**
   * Circuit breaker per host; the cool-down doubles per failed probe.
   * @default { threshold: 2, coolDownMs: 300000, maxCoolDownMs: 28800000 }
   */
  breaker?: BreakerOptions;
  /** `get_markets` items run at once. @default 4 */
  itemConcurrency?: number;
  /** `adjust` when a request omits it. @default "qfq" */
  defaultAdjust?: Adjust;
  /** Time source for limits, back-off, cool-down, cache expiry and "today". @default systemClock */
  clock?: Clock;
  /** Random source in [0, 1) for jitter. @default Math.random */
  random?: () => number;
  /** The fetch implementation. @default globalThis.fetch */
  fetch?: typeof fetch;
}

/** Counters for benchmarks and health pages. */
export interface MarketStats {
  /** Requests answered from the cache. */
  hits: number;
  /** Requests that needed a provider. */
  misses: number;
  /** Series loads started at providers (one per single-flight group). */
  upstreamCalls: number;
  /** HTTP requests sent, retries and pages included. */
  httpRequests: number;
  /** Series in the memory cache. */
  cacheEntries: number;
}

/** A market-data service, the backend of the `get_market` and `get_markets` actions. */
export interface MarketService {
  /** One series. Never rejects for bad params or upstream trouble; rejects only when aborted. */
  getMarket(params: unknown, signal?: AbortSignal): Promise<MarketResult>;
  /** Many series, results in input order; accepts a list or `{ markets: [...] }`. */
  getMarkets(
    list: unknown,
    signal?: AbortSignal,
    onProgress?: (done: number, total: number) => void,
  ): Promise<MarketResult[]>;
  /**
   * Every listed symbol of a kind (`{"symbol_type": "etf"}`), cached for the Shanghai day. Never
   * rejects for bad params or upstream trouble; rejects only when aborted.
   */
  listSymbols(params: unknown, signal?: AbortSignal): Promise<SymbolListResult>;
  /**
   * One page of the day's quotes of a kind (`{"symbol_type": "stock", "page": 1}`), never
   * cached. Never rejects for bad params or upstream trouble; rejects only when aborted.
   */
  getSnapshot(params: unknown, signal?: AbortSignal): Promise<SnapshotResult>;
  /** The `get_market`, `get_markets`, `list_symbols` and `get_snapshot` action handlers. */
  actions(): Record<string, ActionHandler>;
  /** Names of providers whose host breaker is open now (for heartbeats). */
  blockedSources(): string[];
  /** Cool-downs, budgets and rates per host, and cache counters (for heartbeats). */
  upstreamStatus(): UpstreamStatus;
  /** Cache and upstream counters. */
  stats(): MarketStats;
  /** Cancels loads in flight; later calls fail as `UPSTREAM_UNAVAILABLE`. */
  close(): void;
}

/** A `list_symbols` answer. */
export type SymbolListResult =
  | {
    /** Always `true`. */
    success: true;
    /** Instrument kind. */
    symbol_type: SymbolType;
    /** Always `"eastmoney"`. */
    source: string;
    /** Whether the list came from today's cache. */
    cached: boolean;
    /** How many symbols. */
    count: number;
    /** Code and name of every listed symbol. */
    symbols: ListedSymbol[];
  }
  | Omit<MarketFailure, "code">;

/** A `get_snapshot` answer. */
export type SnapshotResult = SnapshotPage | Omit<MarketFailure, "code">;

/** What a worker reports about its upstreams in heartbeats (the `upstream` field). */
export interface UpstreamStatus {
  /** Per upstream host this service has called or will call. */
  hosts: Record<string, HostStatus>;
  /** Requests answered from the cache, and those that needed a provider. */
  cache: { hits: number; misses: number };
}

interface Flight {
  promise: Promise<CacheEntry>;
  controller: AbortController;
  waiters: number;
}

/**
 * Creates a market service.
 *
 * @throws {TypeError} for an unknown provider name, or `csv` without `csvDir`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createMarketService } from "./service.ts";
 * const market = createMarketService({ providers: ["demo"] });
 * const result = await market.getMarket({ symbol_type: "etf", code: "510300", start_date: "2024-01-01", end_date: "2024-01-31" });
 * assert.ok(result.success);
 * assert.equal(result.source, "demo");
 * assert.equal(result.data.length, 23);
 * market.close();
 * ```
 */
export function createMarketService(
  options: MarketServiceOptions = {},
): MarketService {
  const clock = options.clock ?? systemClock;
  const gates = new Map<string, HostGate>();
  function gateFor(host: string): HostGate {
    let gate = gates.get(host);
    if (gate === undefined) {
      const limits = HOST_LIMITS[host] ?? OTHER_HOST_LIMITS;
      const cookie = options.cookies?.headerFor(host, clock.now());
      gate = new HostGate(host, {
        rateLimit: options.rateLimit ?? limits.rateLimit,
        budgetHour: options.budgetHour ?? limits.budgetHour,
        budgetDay: options.budgetDay ?? limits.budgetDay,
        headers: cookie === undefined
          ? options.headers
          : { Cookie: cookie, ...options.headers },
        concurrency: options.hostConcurrency,
        retries: options.retries,
        retryBaseMs: options.retryBaseMs,
        timeoutMs: options.timeoutMs,
        breaker: options.breaker,
        clock,
        random: options.random,
        fetch: options.fetch,
      });
      gates.set(host, gate);
    }
    return gate;
  }
  const resolvedSecids = new Map<string, string>();
  const providers = (options.providers ?? ["eastmoney"]).map((name) =>
    createProvider(name, {
      eastmoneyUrl: options.eastmoneyUrl,
      tencentUrl: options.tencentUrl,
      csvDir: options.csvDir,
      gateFor,
      clock,
      resolvedSecids,
    })
  );
  // Lists come from Eastmoney whatever the K-line providers are; its gate is made on first use.
  let lister: SymbolLister | undefined;
  const listerOf = () =>
    lister ??= createSymbolLister({
      baseUrl: options.eastmoneyListUrl ?? options.eastmoneyUrl,
      gateFor,
      clock,
      cacheDir: options.cacheDir,
      resolvedSecids,
    });
  const snapshots = createSnapshotFetcher({
    baseUrl: options.eastmoneyListUrl ?? options.eastmoneyUrl,
    fallbackUrl: options.eastmoneySnapshotFallbackUrl,
    gateFor,
  });
  if (providers.length === 0) {
    throw new TypeError("Invalid providers []: expected at least one");
  }
  const cache = new SeriesCache({
    entries: options.cacheEntries,
    dir: options.cacheDir,
  });
  const flights = new Map<string, Flight>();
  const itemConcurrency = options.itemConcurrency ?? 4;
  const counters = { hits: 0, misses: 0, upstreamCalls: 0 };
  let closed = false;

  function load(
    provider: MarketProvider,
    key: string,
    p: MarketParams,
  ): Flight {
    let flight = flights.get(key);
    if (flight !== undefined) return flight;
    const controller = new AbortController();
    const promise = (async () => {
      counters.upstreamCalls++;
      const fetchedAt = clock.now();
      const series = await provider.fetchSeries({
        symbolType: p.symbol_type,
        code: p.code,
        period: p.period,
        adjust: p.adjust,
      }, controller.signal);
      const entry: CacheEntry = {
        key,
        fetchedAt,
        adjust: p.adjust,
        period: p.period,
        ...series,
      };
      // An empty history is never final: a throttled host answers one too (`klines: []`,
      // `dktotal: 0`), so the next request asks again.
      if (provider.host !== undefined && entry.bars.length > 0) {
        await cache.set(entry).catch((error) => {
          logger.warn("Cannot write market cache entry {key}: {error}", {
            key,
            error,
          });
        });
      }
      return entry;
    })();
    flight = { promise, controller, waiters: 0 };
    flights.set(key, flight);
    const self = flight;
    promise.catch(() => {}).finally(() => {
      if (flights.get(key) === self) flights.delete(key);
    });
    return flight;
  }

  function join(flight: Flight, signal: AbortSignal): Promise<CacheEntry> {
    if (signal.aborted) return Promise.reject(signal.reason);
    flight.waiters++;
    return new Promise((resolve, reject) => {
      // One caller giving up must not cancel the load for the others; the last one does.
      const onAbort = () => {
        if (--flight.waiters === 0) flight.controller.abort(signal.reason);
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      flight.promise.then(resolve, reject).finally(() => {
        signal.removeEventListener("abort", onAbort);
      });
    });
  }

  async function getMarket(
    params: unknown,
    signal: AbortSignal = new AbortController().signal,
  ): Promise<MarketResult> {
    const code = typeof (params as { code?: unknown })?.code === "string"
      ? (params as { code: string }).code
      : "";
    let p: MarketParams;
    try {
      p = validateMarketParams(params, {
        today: shanghaiDate(clock.now()),
        defaultAdjust: options.defaultAdjust,
      });
    } catch (error) {
      return failure(code, error);
    }
    if (closed) {
      return failure(
        code,
        new UpstreamUnavailableError("", "Market service is closed"),
      );
    }
    let lastError: unknown;
    let missed = false;
    const serving = providers.filter((provider) =>
      (provider.periods ?? DAY_PERIODS).includes(p.period)
    );
    if (serving.length === 0) {
      return failure(
        code,
        new MarketParamsError(
          `Invalid period "${p.period}" for providers ${
            providers.map((x) => x.name).join(", ")
          }: minute periods come from eastmoney only`,
        ),
      );
    }
    for (const provider of serving) {
      const key = cacheKey(
        provider.name,
        p.symbol_type,
        p.code,
        p.period,
        p.adjust,
      );
      if (provider.host !== undefined) {
        const entry = await cache.get(key);
        if (
          entry !== undefined && isEntryFresh(entry, p.end_date, clock.now())
        ) {
          counters.hits++;
          return success(p, entry, true);
        }
      }
      if (!missed) counters.misses++;
      missed = true;
      try {
        return success(p, await join(load(provider, key, p), signal), false);
      } catch (error) {
        if (signal.aborted) throw signal.reason;
        if (
          !(error instanceof UpstreamBlockedError ||
            error instanceof UpstreamUnavailableError)
        ) {
          return failure(p.code, error);
        }
        // An upstream that blocks or fails is what an operator of many workers watches for.
        logger.warn("Provider {provider} failed for {code}: {message}", {
          provider: provider.name,
          code: p.code,
          message: error.message,
        });
        lastError = error;
      }
    }
    return failure(p.code, lastError);
  }

  async function getMarkets(
    list: unknown,
    signal: AbortSignal = new AbortController().signal,
    onProgress?: (
      done: number,
      total: number,
      item: { index: number; result: unknown },
    ) => void,
  ): Promise<MarketResult[]> {
    const items = Array.isArray(list)
      ? list
      : Array.isArray((list as { markets?: unknown })?.markets)
      ? (list as { markets: unknown[] }).markets
      : undefined;
    if (items === undefined) {
      throw new MarketParamsError(
        `Invalid get_markets params ${
          JSON.stringify(list)?.slice(0, 60)
        }: expected a list of market params or {"markets": [...]}`,
      );
    }
    let done = 0;
    return await mapLimit(items, itemConcurrency, async (item, index) => {
      const result = await getMarket(item, signal);
      onProgress?.(++done, items.length, { index, result });
      return result;
    });
  }

  async function listSymbols(
    params: unknown,
    signal: AbortSignal = new AbortController().signal,
  ): Promise<SymbolListResult> {
    const symbolType = (params as { symbol_type?: unknown })?.symbol_type;
    if (!SYMBOL_TYPES.includes(symbolType as SymbolType)) {
      const { code: _, ...rest } = failure(
        "",
        new MarketParamsError(
          `Invalid symbol_type ${
            JSON.stringify(symbolType) ?? "undefined"
          }: expected one of etf, stock, index`,
        ),
      );
      return rest;
    }
    if (closed) {
      const { code: _, ...rest } = failure(
        "",
        new UpstreamUnavailableError("", "Market service is closed"),
      );
      return rest;
    }
    try {
      const list = await listerOf().list(symbolType as SymbolType, signal);
      return {
        success: true,
        symbol_type: list.symbolType,
        source: "eastmoney",
        cached: list.cached,
        count: list.symbols.length,
        symbols: list.symbols.map((s) => ({ ...s })),
      };
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      const { code: _, ...rest } = failure("", error);
      return rest;
    }
  }

  async function getSnapshot(
    params: unknown,
    signal: AbortSignal = new AbortController().signal,
  ): Promise<SnapshotResult> {
    const p = params as { symbol_type?: unknown; page?: unknown } | null;
    const bad = !SYMBOL_TYPES.includes(p?.symbol_type as SymbolType)
      ? `Invalid symbol_type ${
        JSON.stringify(p?.symbol_type) ?? "undefined"
      }: expected one of etf, stock, index`
      : !(Number.isInteger(p?.page) && (p!.page as number) >= 1 &&
          (p!.page as number) <= 1000)
      ? `Invalid page ${
        JSON.stringify(p?.page) ?? "undefined"
      }: expected an integer from 1 to 1000`
      : undefined;
    const error = bad !== undefined
      ? new MarketParamsError(bad)
      : closed
      ? new UpstreamUnavailableError("", "Market service is closed")
      : undefined;
    try {
      if (error !== undefined) throw error;
      return await snapshots.page(
        p!.symbol_type as SymbolType,
        p!.page as number,
        signal,
      );
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      const { code: _, ...rest } = failure("", error);
      return rest;
    }
  }

  return {
    getMarket,
    getMarkets,
    listSymbols,
    getSnapshot,
    actions: () => ({
      get_snapshot: (params, ctx) => getSnapshot(params, ctx.signal),
      get_market: (params, ctx) => getMarket(params, ctx.signal),
      get_markets: (params, ctx) =>
        getMarkets(params, ctx.signal, ctx.progress),
      list_symbols: (params, ctx) => listSymbols(params, ctx.signal),
    }),
    blockedSources: () =>
      providers.filter((p) =>
        p.host !== undefined && gates.get(p.host)?.state === "open"
      )
        .map((p) => p.name),
    upstreamStatus: () => ({
      hosts: Object.fromEntries(
        [...gates].map(([host, gate]) => [host, gate.status()]),
      ),
      cache: { hits: counters.hits, misses: counters.misses },
    }),
    stats: () => ({
      ...counters,
      httpRequests: [...gates.values()].reduce(
        (sum, gate) => sum + gate.requests,
        0,
      ),
      cacheEntries: cache.size,
    }),
    close: () => {
      closed = true;
      lister?.close();
      for (const flight of flights.values()) {
        flight.controller.abort(
          new UpstreamUnavailableError("", "Market service is closed"),
        );
      }
    },
  };
}

function success(
  p: MarketParams,
  entry: CacheEntry,
  cached: boolean,
): MarketResult {
  const result: MarketSuccess = {
    success: true,
    code: p.code,
    name: entry.name,
    symbol_type: p.symbol_type,
    period: p.period,
    adjust: p.adjust,
    source: entry.source,
    cached,
    data: entry.bars
      .filter((bar) => {
        const day = bar.date.slice(0, 10); // minute bars carry a time too
        return day >= p.start_date && day <= p.end_date;
      })
      .map((bar) => ({ ...bar })),
  };
  if (entry.bars.length === 0) result.empty_history = true;
  return result;
}

/** The item error object for `error`. */
function failure(code: string, error: unknown): MarketFailure {
  let errorCode: MarketErrorCode = "INTERNAL_ERROR";
  let message = error instanceof Error ? error.message : String(error);
  if (isMarketError(error)) errorCode = error.errorCode;
  else {
    logger.error("Unexpected market error for {code}: {error}", {
      code,
      error,
    });
    message = `Internal error: ${message}`;
  }
  const result: MarketFailure = {
    success: false,
    code,
    error: message,
    error_code: errorCode,
    retriable: isRetriable(errorCode),
  };
  if (error instanceof UpstreamBlockedError && error.retryAt !== undefined) {
    result.retry_at = error.retryAt;
  }
  return result;
}
