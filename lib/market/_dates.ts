/**
 * Calendar helpers: Shanghai trading dates, ISO weeks, the daily close.
 *
 * @module
 */

const DAY_MS = 86_400_000;
const SHANGHAI_OFFSET_MS = 8 * 3_600_000;
/** The A-share close, 15:00 Asia/Shanghai, as an offset into the UTC day (07:00 UTC). */
const CLOSE_UTC_MS = 7 * 3_600_000;

/** The Shanghai calendar date of an instant, `YYYY-MM-DD`. */
export function shanghaiDate(ms: number): string {
  return new Date(ms + SHANGHAI_OFFSET_MS).toISOString().slice(0, 10);
}

/** Days since the epoch of a `YYYY-MM-DD` date. */
export function dayNumber(date: string): number {
  return Date.UTC(
    +date.slice(0, 4),
    +date.slice(5, 7) - 1,
    +date.slice(8, 10),
  ) / DAY_MS;
}

/** The `YYYY-MM-DD` date of a day number. */
export function dateOfDay(day: number): string {
  return new Date(day * DAY_MS).toISOString().slice(0, 10);
}

/** Whether a `YYYY-MM-DD` date falls on Saturday or Sunday. */
export function isWeekend(date: string): boolean {
  const weekday = new Date(dayNumber(date) * DAY_MS).getUTCDay();
  return weekday === 0 || weekday === 6;
}

/** The ISO week (Monday to Sunday) of a date, as `YYYY-Www` of its ISO year. */
export function isoWeek(date: string): string {
  const day = dayNumber(date);
  const weekday = (new Date(day * DAY_MS).getUTCDay() + 6) % 7; // Monday = 0
  const thursday = day - weekday + 3; // the ISO year is the year of the week's Thursday
  const year = new Date(thursday * DAY_MS).getUTCFullYear();
  const week = Math.floor((thursday - Date.UTC(year, 0, 1) / DAY_MS) / 7) + 1;
  return `${year}-W${String(week).padStart(2, "0")}`;
}

/**
 * The most recent weekday close (15:00 Shanghai) at or before `ms`. Holidays are not known, so a
 * holiday counts as a trading day: at worst an entry is refreshed once too often.
 */
export function lastCloseAt(ms: number): number {
  let close = Math.floor((ms - CLOSE_UTC_MS) / DAY_MS) * DAY_MS + CLOSE_UTC_MS;
  while (isWeekend(new Date(close).toISOString().slice(0, 10))) close -= DAY_MS;
  return close;
}
