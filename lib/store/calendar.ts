/**
 * The trading calendar: the days the exchanges opened. It is not computed from weekdays and a
 * holiday table (holidays are announced a year at a time and shift with the lunar calendar): it is
 * read from the Shanghai Composite index's own daily K-line (`000001`, one request per sync), so
 * a day is a trading day exactly when the index has a bar for it. The store keeps every day learned.
 *
 * @module
 */

import { shanghaiDate } from "../market/_dates.ts";

/** The index whose bars define the trading days. */
export const CALENDAR_INDEX = { symbolType: "index", code: "000001" } as const;

/** The close, 15:00 Shanghai (07:00 UTC), of `date`, epoch ms. */
export function closeOf(date: string): number {
  return Date.parse(`${date}T07:00:00Z`);
}

/**
 * The latest of `days` (ascending) whose session has closed at `now`; `undefined` when none has.
 * A bar dated today before 15:00 Shanghai is an intraday bar, not a day's close.
 */
export function latestClosedDay(
  days: readonly string[],
  now: number,
): string | undefined {
  for (let i = days.length - 1; i >= 0; i--) {
    if (closeOf(days[i]) <= now) return days[i];
  }
  return undefined;
}

/** The trading day before `date` in `days` (ascending), or `undefined`. */
export function previousTradingDay(
  days: readonly string[],
  date: string,
): string | undefined {
  let lo = 0, hi = days.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (days[mid] < date) lo = mid + 1;
    else hi = mid;
  }
  return lo > 0 ? days[lo - 1] : undefined;
}

/** Trading days in `days` after `after` up to and including `through`. */
export function tradingDaysBetween(
  days: readonly string[],
  after: string,
  through: string,
): string[] {
  return days.filter((d) => d > after && d <= through);
}

/** Weekdays between `from` and `to` (inclusive) that are not in `days`: the exchange holidays. */
export function holidaysBetween(
  days: readonly string[],
  from: string,
  to: string,
): string[] {
  const open = new Set(days);
  const out: string[] = [];
  for (let t = Date.parse(from); t <= Date.parse(to); t += 86_400_000) {
    const date = new Date(t).toISOString().slice(0, 10);
    const weekday = new Date(t).getUTCDay();
    if (weekday !== 0 && weekday !== 6 && !open.has(date)) out.push(date);
  }
  return out;
}

/** Today in Shanghai. */
export function todayInShanghai(now: number): string {
  return shanghaiDate(now);
}
