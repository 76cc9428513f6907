/**
 * The time as the original system prints it, for the server's and the worker's `get_time`.
 *
 * @module
 */

/** `YYYY-MM-DD HH:MM:SS` in the process's local time zone, as the original prints it. */
export function formatLocalTime(date: Date = new Date()): string {
  const p = (n: number) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${p(date.getMonth() + 1)}-${
    p(date.getDate())
  } ` +
    `${p(date.getHours())}:${p(date.getMinutes())}:${p(date.getSeconds())}`;
}
