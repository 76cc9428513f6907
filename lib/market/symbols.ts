/**
 * Every listed symbol of a kind, from Eastmoney's list API (`push2.eastmoney.com/api/qt/clist/get`,
 * the one behind akshare's `fund_etf_spot_em`, `stock_zh_a_spot_em` and `index_code_id_map_em`),
 * cached for the Shanghai day: listings change at most once a day.
 *
 * @module
 */

import { shanghaiDate } from "./_dates.ts";
import { BROWSER_USER_AGENT, numberOf, upstream } from "./_http.ts";
import type { Clock } from "./clock.ts";
import { UpstreamBlockedError, UpstreamUnavailableError } from "./errors.ts";
import type { HostGate } from "./host_gate.ts";
import type { SymbolType } from "./types.ts";

/** Eastmoney's list API base URL. */
export const EASTMONEY_LIST_URL = "https://push2.eastmoney.com";

/** akshare's `fs` filter of the list API per kind. */
export const LIST_FILTERS: Readonly<Record<SymbolType, string>> = {
  etf: "b:MK0021,b:MK0022,b:MK0023,b:MK0024,b:MK0827",
  stock: "m:0 t:6,m:0 t:80,m:1 t:2,m:1 t:23,m:0 t:81 s:2048",
  index: "b:MK0010,m:1+t:1,m:0 t:5,m:1+s:3,m:0+t:5,m:2",
};

/** Rows per page of the list API; Eastmoney answers at most 100 whatever is asked. */
export const LIST_PAGE_SIZE = 100;
const PAGE_SIZE = LIST_PAGE_SIZE;

/** One listed symbol. */
export interface ListedSymbol {
  /** Six-digit code. */
  code: string;
  /** Name as Eastmoney lists it. */
  name: string;
}

/** A symbol list and where it came from. */
export interface SymbolList {
  /** Instrument kind. */
  symbolType: SymbolType;
  /** Every listed symbol, in Eastmoney's order (by code). */
  symbols: ListedSymbol[];
  /** Whether it came from the cache. */
  cached: boolean;
}

/** Options for {@linkcode createSymbolLister}. */
export interface SymbolListerOptions {
  /** Base URL; tests point it at a fake server. @default "https://push2.eastmoney.com" */
  baseUrl?: string;
  /** Builds the gate that every request goes through. */
  gateFor: (host: string) => HostGate;
  /** Decides "today". */
  clock: Clock;
  /** A folder for a copy of each day's lists; memory only when unset. */
  cacheDir?: string;
  /** Index code → secid, filled from the list's market numbers for the K-line provider. */
  resolvedSecids?: Map<string, string>;
}

/** Lists symbols by kind. */
export interface SymbolLister {
  /** The upstream host. */
  readonly host: string;
  /** Every listed symbol of `symbolType`, from today's cache or from Eastmoney. */
  list(symbolType: SymbolType, signal: AbortSignal): Promise<SymbolList>;
  /** Cancels list fetches in flight. */
  close(): void;
}

/** `promise`, or a rejection with `signal.reason` as soon as `signal` aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() =>
      signal.removeEventListener("abort", onAbort)
    );
  });
}

interface Stored {
  date: string;
  symbolType: SymbolType;
  symbols: ListedSymbol[];
  markets: Record<string, number>;
}

/**
 * Reads page `n` of Eastmoney's list API for one kind of symbol: the page's rows and the total
 * the list claims, or an {@linkcode UpstreamUnavailableError} naming `what` when the answer
 * carries no total.
 */
export async function requestListPage(
  gate: HostGate,
  baseUrl: string,
  symbolType: SymbolType,
  n: number,
  options: { fields: string; what: string; signal: AbortSignal },
): Promise<{ total: number; rows: Record<string, unknown>[] }> {
  const url = new URL(`${baseUrl}/api/qt/clist/get`);
  url.search = new URLSearchParams({
    pn: String(n),
    pz: String(PAGE_SIZE),
    po: "0",
    np: "1",
    ut: "bd1d9ddb04089700cf9c27f6f7426281",
    fltt: "2",
    invt: "2",
    fid: "f12",
    fs: LIST_FILTERS[symbolType],
    fields: options.fields,
  }).toString();
  const body = await gate.requestJson(url.href, {
    signal: options.signal,
    headers: {
      "User-Agent": BROWSER_USER_AGENT,
      "Referer": "https://quote.eastmoney.com/center/gridlist.html",
    },
  });
  const data = (body as { data?: { total?: unknown; diff?: unknown } })?.data;
  const total = numberOf(data?.total);
  if (data === null || data === undefined || total === undefined) {
    throw new UpstreamUnavailableError(
      new URL(baseUrl).host,
      `Cannot read Eastmoney ${options.what} ${n} for ${symbolType}: no data.total`,
    );
  }
  const rows = Array.isArray(data.diff)
    ? data.diff
    : typeof data.diff === "object" && data.diff !== null
    ? Object.values(data.diff) // np=0 answers an object keyed by position
    : [];
  return { total, rows: rows as Record<string, unknown>[] };
}

/** Creates a {@linkcode SymbolLister}. */
export function createSymbolLister(options: SymbolListerOptions): SymbolLister {
  const { baseUrl, host, gate } = upstream(
    options.baseUrl ?? EASTMONEY_LIST_URL,
    options.gateFor,
  );
  const memory = new Map<SymbolType, Stored>();
  const flights = new Map<SymbolType, Promise<Stored>>();
  const dir = options.cacheDir?.replace(/\/+$/, "");
  const closing = new AbortController();

  async function fetchList(
    symbolType: SymbolType,
    signal: AbortSignal,
  ): Promise<Stored> {
    const symbols: ListedSymbol[] = [];
    const markets: Record<string, number> = {};
    const seen = new Set<string>();
    let total = Infinity;
    for (let n = 1; symbols.length < total; n++) {
      const got = await requestListPage(gate, baseUrl, symbolType, n, {
        fields: "f12,f13,f14",
        what: "symbol list page",
        signal,
      });
      total = got.total;
      if (got.rows.length === 0 && symbols.length < total) {
        // A list cut short is worse than none: `--all` would silently skip symbols.
        gate.reportHostile();
        throw new UpstreamBlockedError(
          host,
          `Eastmoney symbol list for ${symbolType} stopped at ${symbols.length} of ${total} on page ${n}: not caching a partial list`,
        );
      }
      for (const row of got.rows) {
        const code = typeof row.f12 === "string" ? row.f12 : String(row.f12);
        if (!/^\d{6}$/.test(code) || seen.has(code)) continue;
        seen.add(code);
        symbols.push({
          code,
          name: typeof row.f14 === "string" ? row.f14 : code,
        });
        const market = numberOf(row.f13);
        if (market !== undefined) markets[code] = market;
      }
      if (n > total / PAGE_SIZE + 5) break; // duplicates would loop forever
    }
    if (symbols.length < total) {
      throw new UpstreamBlockedError(
        host,
        `Eastmoney symbol list for ${symbolType} holds ${symbols.length} distinct codes of ${total}: not caching a partial list`,
      );
    }
    return {
      date: shanghaiDate(options.clock.now()),
      symbolType,
      symbols,
      markets,
    };
  }

  async function readDisk(symbolType: SymbolType): Promise<Stored | undefined> {
    if (dir === undefined) return undefined;
    try {
      const stored = JSON.parse(
        await Deno.readTextFile(`${dir}/symbols_${symbolType}.json`),
      ) as Stored;
      return stored?.symbolType === symbolType && Array.isArray(stored.symbols)
        ? stored
        : undefined;
    } catch {
      return undefined;
    }
  }

  async function writeDisk(stored: Stored): Promise<void> {
    if (dir === undefined) return;
    await Deno.mkdir(dir, { recursive: true });
    const path = `${dir}/symbols_${stored.symbolType}.json`;
    const temp = `${path}.${crypto.randomUUID()}.tmp`;
    try {
      await Deno.writeTextFile(temp, JSON.stringify(stored));
      await Deno.rename(temp, path);
    } catch {
      await Deno.remove(temp).catch(() => {});
    }
  }

  function remember(stored: Stored): void {
    memory.set(stored.symbolType, stored);
    if (stored.symbolType === "index" && options.resolvedSecids) {
      for (const [code, market] of Object.entries(stored.markets)) {
        options.resolvedSecids.set(code, `${market}.${code}`);
      }
    }
  }

  async function list(
    symbolType: SymbolType,
    signal: AbortSignal,
  ): Promise<SymbolList> {
    const today = shanghaiDate(options.clock.now());
    let stored = memory.get(symbolType);
    if (stored?.date !== today) {
      stored = await readDisk(symbolType);
      if (stored?.date === today) remember(stored);
    }
    if (stored?.date === today) {
      return { symbolType, symbols: stored.symbols, cached: true };
    }
    let flight = flights.get(symbolType);
    if (flight === undefined) {
      // One fetch for every caller, not tied to the first caller's signal: one caller giving up
      // must not fail the others. `close()` ends it.
      flight = fetchList(symbolType, closing.signal).then(async (fresh) => {
        remember(fresh);
        await writeDisk(fresh);
        return fresh;
      });
      flights.set(symbolType, flight);
      flight.catch(() => {}).finally(() => flights.delete(symbolType));
    }
    const fresh = await untilAborted(flight, signal);
    return { symbolType, symbols: fresh.symbols, cached: false };
  }

  return { host, list, close: () => closing.abort(new Error("Closed")) };
}
