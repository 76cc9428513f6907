/**
 * Weekly and monthly bars from daily ones, for providers that only have daily bars.
 *
 * @module
 */

import { isoWeek } from "./_dates.ts";
import type { Bar, Period } from "./types.ts";

/**
 * Aggregates daily bars (ascending) into `period` bars: open of the first bar, close of the last,
 * highest high, lowest low, summed volume, amount and turnover, dated by the period's last trading
 * day. Weeks are ISO weeks (Monday to Sunday). Change, percent change and amplitude are computed
 * against the previous period's close, so the first period has none. `daily` returns a copy.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { aggregateBars } from "./aggregate.ts";
 * const [week] = aggregateBars([
 *   { date: "2024-01-02", open: 1, high: 2, low: 1, close: 2, volume: 10 },
 *   { date: "2024-01-05", open: 2, high: 3, low: 0.5, close: 1.5, volume: 5 },
 * ], "weekly");
 * assert.equal(week.date, "2024-01-05");
 * assert.equal(week.open, 1);
 * assert.equal(week.high, 3);
 * assert.equal(week.low, 0.5);
 * assert.equal(week.close, 1.5);
 * assert.equal(week.volume, 15);
 * ```
 */
export function aggregateBars(bars: readonly Bar[], period: Period): Bar[] {
  if (period !== "weekly" && period !== "monthly") {
    return bars.map((bar) => ({ ...bar }));
  }
  const keyOf = period === "weekly"
    ? isoWeek
    : (date: string) => date.slice(0, 7);
  const out: Bar[] = [];
  let key: string | undefined;
  let group: Bar[] = [];
  for (const bar of bars) {
    const k = keyOf(bar.date);
    if (k !== key && group.length > 0) {
      out.push(merge(group, out.at(-1)));
      group = [];
    }
    key = k;
    group.push(bar);
  }
  if (group.length > 0) out.push(merge(group, out.at(-1)));
  return out;
}

function merge(group: Bar[], previous: Bar | undefined): Bar {
  const first = group[0];
  const last = group[group.length - 1];
  const bar: Bar = {
    date: last.date,
    open: first.open,
    high: Math.max(...group.map((b) => b.high)),
    low: Math.min(...group.map((b) => b.low)),
    close: last.close,
    volume: group.reduce((sum, b) => sum + b.volume, 0),
  };
  const amount = sumOf(group, "amount");
  if (amount !== undefined) bar.amount = amount;
  if (previous !== undefined && previous.close !== 0) {
    bar.amplitude = round((bar.high - bar.low) / previous.close * 100, 2);
    bar.pct_change = round(
      (bar.close - previous.close) / previous.close * 100,
      2,
    );
    bar.change = round(bar.close - previous.close, 4);
  }
  const turnover = sumOf(group, "turnover");
  if (turnover !== undefined) bar.turnover = round(turnover, 2);
  return bar;
}

/** The sum of an optional field, or `undefined` when any bar lacks it (a partial sum would lie). */
function sumOf(group: Bar[], field: "amount" | "turnover"): number | undefined {
  let sum = 0;
  for (const bar of group) {
    const value = bar[field];
    if (value === undefined) return undefined;
    sum += value;
  }
  return sum;
}

function round(value: number, digits: number): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}
