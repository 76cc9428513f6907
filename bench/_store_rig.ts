/**
 * Made-up daily bars for the store's benchmarks: a calendar of weekdays, six-digit stock codes
 * and one bar per symbol and day, every optional field present.
 *
 * @module
 */

import type { Bar } from "../lib/market/types.ts";
import type { SeriesKey } from "../lib/store/types.ts";

/** `count` weekdays as `YYYY-MM-DD`, from `start` (a UTC time) on. */
export function weekdays(
  count: number,
  start = Date.UTC(2000, 0, 3),
): string[] {
  const days: string[] = [];
  for (let t = start; days.length < count; t += 86_400_000) {
    const w = new Date(t).getUTCDay();
    if (w !== 0 && w !== 6) days.push(new Date(t).toISOString().slice(0, 10));
  }
  return days;
}

/** Symbol `i`'s code. */
export function code(i: number): string {
  return String(100000 + i);
}

/** Symbol `i`'s series: a stock, forward-adjusted. */
export function key(i: number): SeriesKey {
  return { symbolType: "stock", code: code(i), adjust: "qfq" };
}

/** Symbol `i`'s bar on `days[d]`. */
export function bar(days: readonly string[], i: number, d: number): Bar {
  const p = 10 + ((i * 31 + d * 17) % 1000) / 100;
  return {
    date: days[d],
    open: p,
    high: p + 0.1,
    low: p - 0.1,
    close: p + 0.05,
    volume: 1000 + d,
    amount: p * 100_000,
    amplitude: 2,
    pct_change: 0.5,
    change: 0.05,
    turnover: 1.2,
  };
}
