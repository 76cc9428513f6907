/**
 * The store's rows in JavaScript: the column lists, decoding rows and column chunks into bars and
 * series, appending rows, and comparing bars.
 *
 * @module
 */

import type {
  DuckDBAppender,
  DuckDBConnection,
  DuckDBDataChunk,
  DuckDBDateValue,
  DuckDBVector,
} from "npm:@duckdb/node-api@1.5.6-r.1";
import { dateOfDay, dayNumber } from "../market/_dates.ts";
import type { Adjust, Bar, SymbolType } from "../market/types.ts";
import { dayValue, STORE_BAR_FIELDS } from "./database.ts";
import { seriesId, type SeriesInfo, type SeriesKey } from "./types.ts";

/** A series' key and a whole bar per row, the date as `YYYY-MM-DD` text (see {@linkcode barOf}). */
export const BAR_COLUMNS =
  `symbol_type, code, adjust, strftime(date, '%Y-%m-%d') AS date, ${
    STORE_BAR_FIELDS.join(", ")
  }`;

/**
 * What a hot read returns per bar, dates as DATE (decoded from their day numbers in JS: cheaper
 * than formatting a string per row in SQL and handing each across the binding).
 */
export const READ_COLUMNS = `date, ${STORE_BAR_FIELDS.join(", ")}`;

/** The first day a read may ask for, 1900-01-01, as a day number. */
export const FIRST_DAY = -25567;
/** The last day a read may ask for, 2999-12-31, as a day number. */
export const LAST_DAY = 376199;

const SERIES_COLUMNS =
  "symbol_type, code, adjust, bars, strftime(first_date, '%Y-%m-%d'), strftime(last_date, '%Y-%m-%d'), last_close";

/** The series rows that `clause` (what follows `FROM series`) selects, by {@linkcode seriesId}. */
export async function seriesRows(
  conn: DuckDBConnection,
  clause: string,
  params: string[] = [],
): Promise<Map<string, SeriesInfo>> {
  const reader = await conn.runAndReadAll(
    `SELECT ${SERIES_COLUMNS} FROM series ${clause}`,
    params.length > 0 ? params : undefined,
  );
  const out = new Map<string, SeriesInfo>();
  for (const r of reader.getRows()) {
    const info: SeriesInfo = {
      symbolType: r[0] as SymbolType,
      code: r[1] as string,
      adjust: r[2] as Adjust,
      bars: Number(r[3]),
      firstDate: r[4] as string,
      lastDate: r[5] as string,
      lastClose: r[6] as number,
    };
    out.set(seriesId(info), info);
  }
  return out;
}

/** Whether two bars agree on every field. */
export function sameBar(a: Bar, b: Bar): boolean {
  return a.date === b.date && STORE_BAR_FIELDS.every((f) => a[f] === b[f]);
}

/** The first field where two bars differ, for mismatch reports. */
export function barDifference(a: Bar, b: Bar): string | undefined {
  if (a.date !== b.date) return `date ${a.date} ≠ ${b.date}`;
  const f = STORE_BAR_FIELDS.find((f) => a[f] !== b[f]);
  return f === undefined ? undefined : `${a.date} ${f} ${a[f]} ≠ ${b[f]}`;
}

/** The bar of a row read with {@linkcode BAR_COLUMNS}. */
export function barOf(r: unknown[]): Bar {
  // The fields every bar has are NOT NULL: only optional ones are ever absent.
  const bar = { date: r[3] as string } as Bar;
  STORE_BAR_FIELDS.forEach((field, i) => {
    const value = r[4 + i];
    if (value !== null && value !== undefined) bar[field] = value as number;
  });
  return bar;
}

/** A chunk's bar columns: the dates as day numbers, then the numbers. */
export interface Columns {
  /** Day numbers (days since 1970-01-01). */
  days: Int32Array;
  /** One vector per field, in {@linkcode READ_COLUMNS} order. */
  values: DuckDBVector[];
}

/** The bar columns of a chunk read with {@linkcode READ_COLUMNS} from column `first` on. */
export function columnsOf(chunk: DuckDBDataChunk, first: number): Columns {
  const dates = chunk.getColumnVector(first) as unknown as {
    items: Int32Array;
  };
  const values: DuckDBVector[] = [];
  for (let i = 1; i <= STORE_BAR_FIELDS.length; i++) {
    values.push(chunk.getColumnVector(first + i));
  }
  return { days: dates.items, values };
}

/** Row `i`'s bar of a chunk's {@linkcode Columns}. */
export function barAt({ days, values: v }: Columns, i: number): Bar {
  const bar = { date: dateOfDay(days[i]) } as Bar;
  for (let f = 0; f < STORE_BAR_FIELDS.length; f++) {
    const value = v[f].getItem(i);
    if (value !== null) bar[STORE_BAR_FIELDS[f]] = value as number;
  }
  return bar;
}

/** Appends a series' key: the first three columns of the bars, series and scratch tables. */
export function appendKey(a: DuckDBAppender, key: SeriesKey): void {
  a.appendVarchar(key.symbolType);
  a.appendVarchar(key.code);
  a.appendVarchar(key.adjust);
}

/** Appends one row of the bars table. */
export function appendBar(a: DuckDBAppender, key: SeriesKey, bar: Bar): void {
  appendKey(a, key);
  a.appendDate(dateValue(bar.date));
  for (const field of STORE_BAR_FIELDS) {
    const value = bar[field];
    if (value === undefined) a.appendNull();
    else a.appendDouble(value);
  }
  a.endRow();
}

/** Empties a scratch table of the connection and appends `rows` to it. */
export async function refill<T>(
  conn: DuckDBConnection,
  table: string,
  rows: readonly T[],
  fill: (a: DuckDBAppender, row: T) => void,
): Promise<void> {
  await conn.run(`DELETE FROM ${table}`);
  await appendRows(conn, table, rows, fill);
}

/** Appends `rows` to `table`, each through `fill`. */
export async function appendRows<T>(
  conn: DuckDBConnection,
  table: string,
  rows: readonly T[],
  fill: (a: DuckDBAppender, row: T) => void,
): Promise<void> {
  await withAppender(conn, table, (appender) => {
    for (const row of rows) {
      fill(appender, row);
      appender.endRow();
    }
  });
}

/**
 * Appends to `table` through `fill`, then flushes the rows. When that fails, the rows are
 * dropped and the appender closed all the same: one left open would flush them into the table
 * whenever it is collected, outside the failed commit's transaction.
 */
export async function withAppender<T>(
  conn: DuckDBConnection,
  table: string,
  fill: (a: DuckDBAppender) => T,
): Promise<T> {
  const appender = await conn.createAppender(table);
  try {
    const out = fill(appender);
    appender.flushSync();
    return out;
  } catch (error) {
    appender.clear();
    throw error;
  } finally {
    appender.closeSync();
  }
}

/** A DuckDB DATE of a `YYYY-MM-DD` text. */
export function dateValue(text: string): DuckDBDateValue {
  return dayValue(dayNumber(date(text)));
}

/** `text` when it is a `YYYY-MM-DD` date; a clear error otherwise. */
export function date(text: string): string {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(text)) {
    throw new RangeError(
      `Invalid bar date ${JSON.stringify(text)}: expected YYYY-MM-DD`,
    );
  }
  return text;
}
