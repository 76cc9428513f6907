/**
 * A simulated Eastmoney for the store and sync: a universe of ETFs, stocks and indexes whose
 * trading days advance one at a time, with ex-dividend days, suspensions and new listings. It
 * speaks Eastmoney's wire formats: the list API (`/api/qt/clist/get`, 100 rows a page, quote
 * fields `f2…f124` with `-` for a suspended symbol, as akshare's `stock_zh_a_spot_em` reads
 * them) and the K-line API (`/api/qt/stock/kline/get`, `fqt` 0/1/2, `klt` 101/102/103).
 *
 * Adjustment follows what the real 510300 bars show (../shared/fixtures/market/README.md): a cash
 * dividend lowers every earlier qfq price by its amount (qfq history changes at each dividend),
 * hfq adds every earlier dividend (hfq only grows), and derived fields (amplitude, change, pct)
 * are computed against the previous bar's close of the same series.
 *
 * The truth a fresh full fetch would give is {@linkcode FakeMarket.series}.
 *
 * @module
 */

import { systemClock } from "../lib/market/clock.ts";
import type { MarketServiceOptions } from "../lib/market/service.ts";
import type { Adjust, Bar, SymbolType } from "../lib/market/types.ts";
import { LIST_FILTERS } from "../lib/market/symbols.ts";
import { roundHalfAway } from "../lib/store/derive.ts";
import { listPageAnswer } from "./_fake_eastmoney.ts";

/**
 * Options of a market service that asks `market` directly: no pacing, budgets or retries, and
 * the market's own time (a series fetched on an earlier simulated day is stale).
 */
export function directServiceOptions(
  market: FakeMarket,
): MarketServiceOptions {
  return {
    eastmoneyUrl: market.url,
    eastmoneyListUrl: market.url,
    eastmoneySnapshotFallbackUrl: null,
    rateLimit: 0,
    budgetHour: 0,
    budgetDay: 0,
    retries: 0,
    clock: {
      now: () => market.updatedAt + 60_000,
      sleep: (ms, signal) => systemClock.sleep(ms, signal),
    },
  };
}

/** Options for {@linkcode startFakeMarket}. */
export interface FakeMarketOptions {
  /** ETFs listed at the start. @default 20 */
  etfs?: number;
  /** Stocks listed at the start. @default 30 */
  stocks?: number;
  /** Indexes listed at the start besides 000001 (the calendar index). @default 2 */
  indexes?: number;
  /** First trading day of every history. @default "2025-06-02" */
  historyStart?: string;
  /** The day the market stands at when started (its session closed). @default "2026-03-20" */
  today?: string;
  /** Share of symbols going ex-dividend each simulated day. @default 0.01 */
  exDividendRate?: number;
  /** Share of symbols suspended each day. @default 0.005 */
  suspendRate?: number;
  /** New stock listings per trading day after `today`. @default 2 */
  newListingsPerDay?: number;
  /** Codes listed whose K-line answers hold no bar at all (`klines: []`, `dktotal: 0`). */
  emptyCodes?: string[];
  /** Seed of every made-up number. @default 1 */
  seed?: number;
}

/** A running simulated market. */
export interface FakeMarket {
  /** Base URL for `--eastmoney-url` (both APIs). */
  readonly url: string;
  /** The last trading day served, `YYYY-MM-DD`. */
  readonly today: string;
  /** Epoch ms of the snapshot's update time: 15:00:03 Shanghai of `today` (after the close). */
  readonly updatedAt: number;
  /** Moves to the next trading day (after its close); returns it. */
  advance(): string;
  /** Requests served per endpoint (`clist`, `kline`). */
  counts(): Record<string, number>;
  /** Codes listed today per kind. */
  listed(symbolType: SymbolType): string[];
  /** What a fresh full fetch of a series gives today. */
  series(symbolType: SymbolType, code: string, adjust: Adjust): Bar[];
  /** Trading days up to today. */
  days(): string[];
  /** When set, quotes say they were updated then (epoch ms): a snapshot taken during the session. */
  snapshotTime?: number;
  /** Delay before each K-line answer, ms. */
  latencyMs?: number;
  /** When set, every list page leaves its last row out, as a cut-off answer does. */
  truncateList?: boolean;
  /** Closes the server. */
  close(): Promise<void>;
}

/** Exchange holidays the fake's calendar skips (weekdays), as the SSE announced them. */
const HOLIDAYS = new Set([
  "2025-10-01",
  "2025-10-02",
  "2025-10-03",
  "2025-10-06",
  "2025-10-07",
  "2025-10-08",
  "2026-01-01",
  "2026-01-02",
  "2026-02-16",
  "2026-02-17",
  "2026-02-18",
  "2026-02-19",
  "2026-02-20",
  "2026-02-23",
]);

interface Listing {
  symbolType: SymbolType;
  code: string;
  market: number;
  name: string;
  /** Index into the calendar of its first trading day. */
  from: number;
}

interface RawDay {
  day: number;
  open: number;
  high: number;
  low: number;
  close: number;
  volume: number;
  amount: number;
  turnover: number;
  /** Cash dividend going ex on this day (0 for none). */
  dividend: number;
}

/** Starts the simulated market on 127.0.0.1, on a free port. */
export function startFakeMarket(options: FakeMarketOptions = {}): FakeMarket {
  const seed = options.seed ?? 1;
  const start = options.historyStart ?? "2025-06-02";
  const calendar: string[] = [];
  for (
    let t = Date.parse(start);
    calendar.length < 5000;
    t += 86_400_000
  ) {
    const date = new Date(t).toISOString().slice(0, 10);
    const weekday = new Date(t).getUTCDay();
    if (weekday !== 0 && weekday !== 6 && !HOLIDAYS.has(date)) {
      calendar.push(date);
    }
    if (date >= "2040-01-01") break;
  }
  let today = calendar.findIndex((d) => d >= (options.today ?? "2026-03-20"));
  const firstSimDay = today + 1;
  const divRate = options.exDividendRate ?? 0.01;
  const suspendRate = options.suspendRate ?? 0.005;
  const newPerDay = options.newListingsPerDay ?? 2;

  const listings: Listing[] = [{
    symbolType: "index",
    code: "000001",
    market: 1,
    name: "上证指数",
    from: 0,
  }];
  for (let i = 0; i < (options.indexes ?? 2); i++) {
    const code = String(399001 + i);
    listings.push({
      symbolType: "index",
      code,
      market: 0,
      name: `指数${code}`,
      from: 0,
    });
  }
  for (let i = 0; i < (options.etfs ?? 20); i++) {
    const sh = i % 2 === 0;
    const code = sh ? String(510000 + i) : String(159000 + i);
    listings.push({
      symbolType: "etf",
      code,
      market: sh ? 1 : 0,
      name: `ETF${code}`,
      from: 0,
    });
  }
  for (let i = 0; i < (options.stocks ?? 30); i++) {
    const sh = i % 2 === 0;
    const code = sh ? String(600000 + i) : String(i + 1).padStart(6, "0");
    listings.push({
      symbolType: "stock",
      code,
      market: sh ? 1 : 0,
      name: `股份${code}`,
      // Some stocks list during the history, none before it.
      from: i % 7 === 3 ? Math.min(40 + i, firstSimDay - 1) : 0,
    });
  }
  for (let day = firstSimDay; day < firstSimDay + 400; day++) {
    for (let k = 0; k < newPerDay; k++) {
      const code = String(301000 + (day - firstSimDay) * 10 + k);
      listings.push({
        symbolType: "stock",
        code,
        market: 0,
        name: `新股${code}`,
        from: day,
      });
    }
  }
  const byKey = new Map(listings.map((l) => [`${l.market}.${l.code}`, l]));
  const counts: Record<string, number> = {};

  function hash(...parts: (string | number)[]): number {
    let h = 2166136261 ^ seed;
    for (const ch of parts.join("|")) {
      h = Math.imul(h ^ ch.charCodeAt(0), 16777619) >>> 0;
    }
    h = Math.imul(h ^ (h >>> 15), 2246822507) >>> 0;
    h = Math.imul(h ^ (h >>> 13), 3266489909) >>> 0;
    return ((h ^ (h >>> 16)) >>> 0) / 4294967296;
  }

  const decimalsOf = (l: Listing) => l.symbolType === "etf" ? 3 : 2;

  /** The raw days of a listing through `until` (calendar index). */
  function rawDays(l: Listing, until: number): RawDay[] {
    const d = decimalsOf(l);
    let state = Math.floor(hash(l.code, "seed") * 4294967296) >>> 0;
    const random = () => {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
      return state / 4294967296;
    };
    let prev = round(
      l.symbolType === "etf" ? 1 + random() * 3 : 5 + random() * 40,
      d,
    );
    const out: RawDay[] = [];
    for (let day = l.from; day <= until; day++) {
      const r = [random(), random(), random(), random(), random(), random()];
      const suspended = day > l.from && l.code !== "000001" &&
        hash(l.code, day, "s") < suspendRate;
      if (suspended) continue;
      const dividend = l.symbolType !== "index" && day > l.from &&
          hash(l.code, day, "d") < divRate
        ? Math.max(10 ** -d, round(prev * 0.03, d))
        : 0;
      const ref = round(prev - dividend, d);
      const open = round(ref * (1 + (r[0] - 0.5) * 0.02), d);
      const close = round(ref * (1 + (r[1] - 0.5) * 0.06), d);
      const high = round(Math.max(open, close) * (1 + r[2] * 0.01), d);
      const low = round(Math.min(open, close) * (1 - r[3] * 0.01), d);
      const volume = Math.round(10_000 + r[4] * 1_000_000);
      out.push({
        day,
        open,
        high,
        low,
        close,
        volume,
        amount: round(volume * 100 * (open + close) / 2, 2),
        turnover: round(r[5] * 3, 2),
        dividend,
      });
      prev = close;
    }
    return out;
  }

  function adjusted(l: Listing, adjust: Adjust, until: number): Bar[] {
    const raws = rawDays(l, until);
    const d = decimalsOf(l);
    const total = raws.reduce((s, r) => s + r.dividend, 0);
    let before = 0; // dividends ex on or before the bar
    let prevClose: number | undefined;
    return raws.map((r) => {
      before += r.dividend;
      const shift = adjust === "qfq"
        ? -(total - before)
        : adjust === "hfq"
        ? before
        : 0;
      const open = round(r.open + shift, d);
      const high = round(r.high + shift, d);
      const low = round(r.low + shift, d);
      const close = round(r.close + shift, d);
      const bar: Bar = {
        date: calendar[r.day],
        open,
        high,
        low,
        close,
        volume: r.volume,
        amount: r.amount,
      };
      const previous = prevClose ?? open;
      bar.amplitude = roundHalfAway((high - low) / previous * 100, 2);
      bar.pct_change = roundHalfAway((close - previous) / previous * 100, 2);
      bar.change = round(close - previous, d);
      bar.turnover = r.turnover;
      prevClose = close;
      return bar;
    });
  }

  function klineAnswer(q: URLSearchParams): unknown {
    const envelope = { rc: 0, rt: 17, svr: 181669, lt: 1, full: 0, dlmkts: "" };
    const listing = byKey.get(q.get("secid") ?? "");
    if (listing === undefined || listing.from > today) {
      return { ...envelope, data: null };
    }
    const adjust: Adjust = q.get("fqt") === "1"
      ? "qfq"
      : q.get("fqt") === "2"
      ? "hfq"
      : "none";
    const rows = options.emptyCodes?.includes(listing.code)
      ? []
      : adjusted(listing, adjust, today);
    const d = decimalsOf(listing);
    return {
      ...envelope,
      data: {
        code: listing.code,
        market: listing.market,
        name: listing.name,
        decimal: d,
        dktotal: rows.length,
        preKPrice: rows[0]?.open ?? 0,
        klines: rows.map((r) =>
          [
            r.date,
            r.open.toFixed(d),
            r.close.toFixed(d),
            r.high.toFixed(d),
            r.low.toFixed(d),
            String(r.volume),
            r.amount!.toFixed(2),
            r.amplitude!.toFixed(2),
            r.pct_change!.toFixed(2),
            r.change!.toFixed(d),
            r.turnover!.toFixed(2),
          ].join(",")
        ),
      },
    };
  }

  function listed(symbolType: SymbolType): Listing[] {
    return listings.filter((l) =>
      l.symbolType === symbolType && l.from <= today
    )
      .sort((a, b) => a.code < b.code ? -1 : 1);
  }

  function quote(l: Listing): Record<string, unknown> {
    const base = { f12: l.code, f13: l.market, f14: l.name };
    const raws = rawDays(l, today);
    const last = raws.at(-1);
    // A snapshot taken during the session shows the day's bar so far, updated then.
    const traded = last !== undefined && last.day === today;
    const previous = traded ? raws.at(-2) : last;
    const dash = {
      f2: "-",
      f3: "-",
      f4: "-",
      f5: "-",
      f6: "-",
      f7: "-",
      f8: "-",
      f15: "-",
      f16: "-",
      f17: "-",
      f18: previous === undefined ? "-" : previous.close,
      f124: previous === undefined
        ? 0
        : Math.floor((closeOf(calendar[previous.day]) + 3000) / 1000),
    };
    if (!traded) return { ...base, ...dash };
    const ref = round(
      (previous?.close ?? last.open) - last.dividend,
      decimalsOf(l),
    );
    return {
      ...base,
      f2: last.close,
      f3: round((last.close - ref) / ref * 100, 2),
      f4: round(last.close - ref, decimalsOf(l)),
      f5: last.volume,
      f6: last.amount,
      f7: round((last.high - last.low) / ref * 100, 2),
      f8: last.turnover,
      f15: last.high,
      f16: last.low,
      f17: last.open,
      f18: ref,
      f124: Math.floor(
        (market.snapshotTime ?? closeOf(calendar[today]) + 3000) / 1000,
      ),
    };
  }

  function listAnswer(q: URLSearchParams): unknown {
    const kind = (Object.keys(LIST_FILTERS) as SymbolType[]).find((k) =>
      LIST_FILTERS[k] === q.get("fs")
    );
    if (kind === undefined) return { rc: 0, rt: 6, data: null };
    const all = listed(kind);
    const size = Math.min(100, Math.max(1, Number(q.get("pz") ?? 20)));
    const page = Math.max(1, Number(q.get("pn") ?? 1));
    const fields = (q.get("fields") ?? "f12,f13,f14").split(",");
    const slice = all.slice((page - 1) * size, page * size);
    if (market.truncateList) slice.pop();
    const rows = slice.map((l) => {
      const full = fields.some((f) => f !== "f12" && f !== "f13" && f !== "f14")
        ? quote(l)
        : { f12: l.code, f13: l.market, f14: l.name };
      return Object.fromEntries(
        fields.filter((f) => f in full).map((f) => [f, full[f]]),
      );
    });
    return listPageAnswer(all.length, rows);
  }

  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (request) => {
      const url = new URL(request.url);
      const endpoint = url.pathname === "/api/qt/clist/get"
        ? "clist"
        : url.pathname === "/api/qt/stock/kline/get"
        ? "kline"
        : undefined;
      if (endpoint === undefined) {
        return new Response("Not found", { status: 404 });
      }
      counts[endpoint] = (counts[endpoint] ?? 0) + 1;
      if (endpoint === "kline" && market.latencyMs) {
        await new Promise((resolve) => setTimeout(resolve, market.latencyMs));
      }
      const body = endpoint === "clist"
        ? listAnswer(url.searchParams)
        : klineAnswer(url.searchParams);
      return Response.json(body);
    },
  );

  const market: FakeMarket = {
    url: `http://127.0.0.1:${server.addr.port}`,
    get today() {
      return calendar[today];
    },
    get updatedAt() {
      return closeOf(calendar[today]) + 3000;
    },
    advance() {
      today++;
      return calendar[today];
    },
    counts: () => ({ ...counts }),
    listed: (symbolType) => listed(symbolType).map((l) => l.code),
    series(symbolType, code, adjust) {
      const l = listings.find((x) =>
        x.symbolType === symbolType && x.code === code
      );
      return l === undefined || l.from > today ||
          options.emptyCodes?.includes(code)
        ? []
        : adjusted(l, adjust, today);
    },
    days: () => calendar.slice(0, today + 1),
    close: () => server.shutdown(),
  };
  return market;
}

/** 15:00 Shanghai (07:00 UTC) of `date`. */
function closeOf(date: string): number {
  return Date.parse(`${date}T07:00:00Z`);
}

function round(value: number, digits: number): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}
