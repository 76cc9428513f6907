/**
 * The demo provider: deterministic synthetic bars for offline demos. Never chosen unless named,
 * and always labelled `source: "demo"` so nobody mistakes them for prices.
 *
 * @module
 */

import { aggregateBars } from "./aggregate.ts";
import { type Clock, systemClock } from "./clock.ts";
import { dayNumber, shanghaiDate } from "./_dates.ts";
import type {
  Bar,
  MarketProvider,
  Period,
  Series,
  SeriesQuery,
  SymbolType,
} from "./types.ts";

const FIRST_DAY = "2015-01-05";
const NAMES: Record<string, string> = {
  "etf:510300": "沪深300ETF(演示)",
  "etf:159915": "创业板ETF(演示)",
  "etf:510500": "中证500ETF(演示)",
  "stock:000001": "平安银行(演示)",
  "stock:600519": "贵州茅台(演示)",
  "index:000001": "上证指数(演示)",
  "index:000300": "沪深300(演示)",
  "index:399006": "创业板指(演示)",
};
const KIND: Record<SymbolType, string> = {
  etf: "ETF",
  stock: "股票",
  index: "指数",
};
const TWO_DIGITS = Array.from(
  { length: 32 },
  (_, i) => String(i).padStart(2, "0"),
);

/** Options for {@linkcode createDemoProvider}. */
export interface DemoProviderOptions {
  /** Decides the last generated day (today in Shanghai). @default systemClock */
  clock?: Clock;
  /** Series (one symbol up to one day, all periods) kept in memory. @default 64 */
  cacheSeries?: number;
}

interface Generated {
  lastDate: string;
  periods: Partial<Record<Period, Bar[]>>;
}

/**
 * Creates the demo provider. Every adjustment gets the same (unadjusted) bars.
 *
 * A series is generated once per symbol and day and then served from memory, so a `get_market`
 * costs only the service's range filter: demos and benchmarks measure the broker, not the
 * generator. The cached bars are shared, not copied (the service copies the bars it answers);
 * they are not frozen either, because V8's filter over a frozen array is three times slower.
 */
export function createDemoProvider(
  options: DemoProviderOptions = {},
): MarketProvider {
  const clock = options.clock ?? systemClock;
  const limit = Math.max(1, options.cacheSeries ?? 64);
  // Insertion order is recency order: a hit moves its key to the end.
  const generated = new Map<string, Generated>();
  function barsOf(query: SeriesQuery, lastDate: string): Bar[] {
    const key = `${query.symbolType}:${query.code}`;
    let entry = generated.get(key);
    if (entry !== undefined) generated.delete(key);
    if (entry === undefined || entry.lastDate !== lastDate) {
      entry = {
        lastDate,
        periods: {
          daily: demoBars(query.symbolType, query.code, lastDate),
        },
      };
    }
    generated.set(key, entry);
    while (generated.size > limit) {
      generated.delete(generated.keys().next().value!);
    }
    return entry.periods[query.period] ??= aggregateBars(
      entry.periods.daily!,
      query.period,
    );
  }
  function fetchSeries(
    query: SeriesQuery,
    _signal: AbortSignal,
  ): Promise<Series> {
    return Promise.resolve({
      name: NAMES[`${query.symbolType}:${query.code}`] ??
        `演示${KIND[query.symbolType]} ${query.code}`,
      source: "demo",
      bars: barsOf(query, shanghaiDate(clock.now())),
    });
  }
  return { name: "demo", host: undefined, fetchSeries };
}

/**
 * Synthetic daily bars for weekdays from 2015-01-05 to `lastDate`: a random walk seeded by the
 * code, so a given day's bar never changes as `lastDate` moves.
 */
export function demoBars(
  symbolType: SymbolType,
  code: string,
  lastDate: string,
): Bar[] {
  const random = mulberry32(hash(`${symbolType}:${code}`));
  const digits = symbolType === "etf" ? 3 : 2;
  const scale = symbolType === "index"
    ? 1000 + 4000 * random()
    : symbolType === "etf"
    ? 0.8 + 4 * random()
    : 3 + 60 * random();
  let previous = round(scale, digits);
  const bars: Bar[] = [];
  const last = dayNumber(lastDate);
  // The calendar is walked by hand: a `Date` per day cost ~10 ms per series.
  let year = +FIRST_DAY.slice(0, 4);
  let month = +FIRST_DAY.slice(5, 7);
  let dayOfMonth = +FIRST_DAY.slice(8, 10);
  let monthLength = daysInMonth(year, month);
  for (let day = dayNumber(FIRST_DAY); day <= last; day++) {
    // Day 0, 1970-01-01, was a Thursday; 0 is Sunday as in getUTCDay().
    const weekday = (day + 4) % 7;
    if (weekday !== 0 && weekday !== 6) {
      const open = round(previous * (1 + (random() - 0.5) * 0.01), digits);
      const close = round(
        Math.max(previous * (1 + (random() - 0.5) * 0.04), 0.01),
        digits,
      );
      const high = round(
        Math.max(open, close) * (1 + random() * 0.01),
        digits,
      );
      const low = round(Math.min(open, close) * (1 - random() * 0.01), digits);
      const volume = Math.round(100_000 + random() * 5_000_000);
      bars.push({
        date: `${year}-${TWO_DIGITS[month]}-${TWO_DIGITS[dayOfMonth]}`,
        open,
        high,
        low,
        close,
        volume,
        amount: Math.round(volume * 100 * (open + close) / 2),
        amplitude: round((high - low) / previous * 100, 2),
        pct_change: round((close - previous) / previous * 100, 2),
        change: round(close - previous, digits),
      });
      previous = close;
    }
    if (++dayOfMonth > monthLength) {
      dayOfMonth = 1;
      if (++month > 12) {
        month = 1;
        year++;
      }
      monthLength = daysInMonth(year, month);
    }
  }
  return Object.freeze(bars) as Bar[];
}

function daysInMonth(year: number, month: number): number {
  if (month === 2) {
    return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  }
  return month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31;
}

function round(value: number, digits: number): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}

function hash(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  }
  return h >>> 0;
}

function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
