/**
 * The demo provider: deterministic synthetic bars for offline demos. Never chosen unless named,
 * and always labelled `source: "demo"` so nobody mistakes them for prices.
 *
 * @module
 */

import { aggregateBars } from "./aggregate.ts";
import { type Clock, systemClock } from "./clock.ts";
import { dateOfDay, dayNumber, isWeekend, shanghaiDate } from "./_dates.ts";
import type {
  Bar,
  MarketProvider,
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

/** Options for {@linkcode createDemoProvider}. */
export interface DemoProviderOptions {
  /** Decides the last generated day (today in Shanghai). @default systemClock */
  clock?: Clock;
}

/** Creates the demo provider. Every adjustment gets the same (unadjusted) bars. */
export function createDemoProvider(
  options: DemoProviderOptions = {},
): MarketProvider {
  const clock = options.clock ?? systemClock;
  function fetchSeries(
    query: SeriesQuery,
    _signal: AbortSignal,
  ): Promise<Series> {
    const daily = demoBars(
      query.symbolType,
      query.code,
      shanghaiDate(clock.now()),
    );
    return Promise.resolve({
      name: NAMES[`${query.symbolType}:${query.code}`] ??
        `演示${KIND[query.symbolType]} ${query.code}`,
      source: "demo",
      bars: aggregateBars(daily, query.period),
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
  for (let day = dayNumber(FIRST_DAY); day <= dayNumber(lastDate); day++) {
    const date = dateOfDay(day);
    if (isWeekend(date)) continue;
    const open = round(previous * (1 + (random() - 0.5) * 0.01), digits);
    const close = round(
      Math.max(previous * (1 + (random() - 0.5) * 0.04), 0.01),
      digits,
    );
    const high = round(Math.max(open, close) * (1 + random() * 0.01), digits);
    const low = round(Math.min(open, close) * (1 - random() * 0.01), digits);
    const volume = Math.round(100_000 + random() * 5_000_000);
    bars.push({
      date,
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
  return bars;
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
