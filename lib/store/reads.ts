/**
 * The store's reads: each kind of read as one query. The hot ones (one series, one day's
 * cross-section) run through statements prepared once per connection and decode column chunks;
 * the rest read rows.
 *
 * @module
 */

import type {
  DuckDBConnection,
  DuckDBDataChunk,
  DuckDBPreparedStatement,
} from "npm:@duckdb/node-api@1.5.6-r.1";
import { dayNumber } from "../market/_dates.ts";
import type { Adjust, Bar, SymbolType } from "../market/types.ts";
import { dayValue } from "./database.ts";
import {
  BAR_COLUMNS,
  barAt,
  barOf,
  columnsOf,
  date,
  FIRST_DAY,
  LAST_DAY,
  READ_COLUMNS,
  seriesRows,
} from "./rows.ts";
import type {
  SeriesInfo,
  SeriesKey,
  StoreStatusRow,
  SymbolInfo,
} from "./types.ts";

const SERIES_SQL =
  `SELECT ${READ_COLUMNS} FROM bars WHERE symbol_type = $1 AND code = $2 AND adjust = $3
     AND date >= $4 AND date <= $5 ORDER BY date`;
const CROSS_SQL =
  `SELECT symbol_type, code, ${READ_COLUMNS} FROM bars WHERE adjust = $1 AND date = $2
     ORDER BY symbol_type, code`;
const CROSS_KIND_SQL =
  `SELECT symbol_type, code, ${READ_COLUMNS} FROM bars WHERE adjust = $1 AND date = $2
     AND symbol_type = $3 ORDER BY code`;

/** The reads of one store connection. */
export class StoreReads {
  #conn: DuckDBConnection;
  /** Reads through the prepared statements, one at a time (a statement holds one binding). */
  #reading: Promise<unknown> = Promise.resolve();
  #prepared = new Map<string, DuckDBPreparedStatement>();

  constructor(conn: DuckDBConnection) {
    this.#conn = conn;
  }

  /** Every series held, by `seriesId`. */
  seriesInfo(symbolType?: SymbolType): Promise<Map<string, SeriesInfo>> {
    return symbolType
      ? seriesRows(this.#conn, "WHERE symbol_type = $1", [symbolType])
      : seriesRows(this.#conn, "");
  }

  /** Every series' last bar, by `seriesId`. */
  async lastBars(symbolType?: SymbolType): Promise<Map<string, Bar>> {
    const rows = await this.#rows(
      `SELECT ${BAR_COLUMNS} FROM bars b SEMI JOIN series s
         ON b.symbol_type = s.symbol_type AND b.code = s.code AND b.adjust = s.adjust
         AND b.date = s.last_date ${
        symbolType ? "WHERE b.symbol_type = $1" : ""
      }`,
      symbolType ? [symbolType] : [],
    );
    const out = new Map<string, Bar>();
    for (const r of rows) {
      out.set(`${r[0]}|${r[1]}|${r[2]}`, barOf(r));
    }
    return out;
  }

  /** Every symbol tracked, by `${symbolType}|${code}`. */
  async symbols(symbolType?: SymbolType): Promise<Map<string, SymbolInfo>> {
    const rows = await this.#rows(
      `SELECT s.symbol_type, s.code, s.name, strftime(s.gone_since, '%Y-%m-%d'),
         strftime(r.date, '%Y-%m-%d'), r.open, r.high, r.low, r.close
       FROM symbols s LEFT JOIN raw_last r USING (symbol_type, code) ${
        symbolType ? "WHERE s.symbol_type = $1" : ""
      }`,
      symbolType ? [symbolType] : [],
    );
    const out = new Map<string, SymbolInfo>();
    for (const r of rows) {
      const info: SymbolInfo = {
        symbolType: r[0] as SymbolType,
        code: r[1] as string,
        name: r[2] as string,
      };
      if (r[3] !== null) info.goneSince = r[3] as string;
      if (r[4] !== null) {
        info.raw = {
          date: r[4] as string,
          open: r[5] as number,
          high: r[6] as number,
          low: r[7] as number,
          close: r[8] as number,
        };
      }
      out.set(`${info.symbolType}|${info.code}`, info);
    }
    return out;
  }

  /** Trading days learned, ascending. */
  async calendar(): Promise<string[]> {
    const rows = await this.#rows(
      "SELECT DISTINCT strftime(date, '%Y-%m-%d') AS d FROM calendar ORDER BY d",
    );
    return rows.map((r) => r[0] as string);
  }

  /** A note written with `meta`. */
  async meta(key: string): Promise<string | undefined> {
    const rows = await this.#rows("SELECT value FROM meta WHERE key = $1", [
      key,
    ]);
    return rows.length > 0 ? rows.at(-1)![0] as string : undefined;
  }

  /** One series' bars, ascending, within `[start, end]` when given. */
  readSeries(
    key: SeriesKey,
    start?: string,
    end?: string,
  ): Promise<Bar[]> {
    return this.#query(SERIES_SQL, (p) => {
      p.bindVarchar(1, key.symbolType);
      p.bindVarchar(2, key.code);
      p.bindVarchar(3, key.adjust);
      p.bindDate(
        4,
        dayValue(start === undefined ? FIRST_DAY : dayNumber(date(start))),
      );
      p.bindDate(
        5,
        dayValue(end === undefined ? LAST_DAY : dayNumber(date(end))),
      );
    }, (chunk, out: Bar[]) => {
      const columns = columnsOf(chunk, 0);
      for (let i = 0; i < chunk.rowCount; i++) out.push(barAt(columns, i));
    }, []);
  }

  /** Every series whole, by `seriesId` (for comparisons and checks, not for serving). */
  async readAll(): Promise<Map<string, Bar[]>> {
    const rows = await this.#rows(
      `SELECT ${BAR_COLUMNS} FROM bars ORDER BY symbol_type, code, adjust, date`,
    );
    const out = new Map<string, Bar[]>();
    for (const r of rows) {
      const id = `${r[0]}|${r[1]}|${r[2]}`;
      let list = out.get(id);
      if (list === undefined) out.set(id, list = []);
      list.push(barOf(r));
    }
    return out;
  }

  /** Every symbol's bar of one day under one adjustment (of one kind, or of all), by kind and code. */
  crossSection(
    symbolType: SymbolType | undefined,
    adjust: Adjust,
    day: string,
  ): Promise<{ symbolType: SymbolType; code: string; bar: Bar }[]> {
    return this.#query(symbolType ? CROSS_KIND_SQL : CROSS_SQL, (p) => {
      p.bindVarchar(1, adjust);
      p.bindDate(2, dayValue(dayNumber(date(day))));
      if (symbolType) p.bindVarchar(3, symbolType);
    }, (chunk, out: { symbolType: SymbolType; code: string; bar: Bar }[]) => {
      const kinds = chunk.getColumnVector(0);
      const codes = chunk.getColumnVector(1);
      const columns = columnsOf(chunk, 2);
      for (let i = 0; i < chunk.rowCount; i++) {
        out.push({
          symbolType: kinds.getItem(i) as SymbolType,
          code: codes.getItem(i) as string,
          bar: barAt(columns, i),
        });
      }
    }, []);
  }

  /** Several series of one kind and adjustment at once, by code (for checks over a universe). */
  async readMany(
    symbolType: SymbolType,
    adjust: Adjust,
    codes: readonly string[],
  ): Promise<Map<string, Bar[]>> {
    const out = new Map<string, Bar[]>();
    if (codes.length === 0) return out;
    const rows = await this.#rows(
      `SELECT ${BAR_COLUMNS} FROM bars WHERE symbol_type = $1 AND adjust = $2
         AND code IN (SELECT unnest(string_split($3, ','))) ORDER BY code, date`,
      [symbolType, adjust, codes.join(",")],
    );
    for (const r of rows) {
      const code = r[1] as string;
      let list = out.get(code);
      if (list === undefined) out.set(code, list = []);
      list.push(barOf(r));
    }
    return out;
  }

  /** Per kind and adjustment: series, bars, latest day and how many are behind it. */
  async status(): Promise<StoreStatusRow[]> {
    const rows = await this.#rows(`
      WITH latest AS (SELECT symbol_type, adjust, max(last_date) AS d FROM series GROUP BY ALL)
      SELECT s.symbol_type, s.adjust, count(*), sum(s.bars), strftime(l.d, '%Y-%m-%d'),
        count(*) FILTER (WHERE s.last_date < l.d)
      FROM series s JOIN latest l USING (symbol_type, adjust)
      GROUP BY s.symbol_type, s.adjust, l.d ORDER BY s.symbol_type, s.adjust`);
    return rows.map((r) => ({
      symbolType: r[0] as SymbolType,
      adjust: r[1] as Adjust,
      series: Number(r[2]),
      bars: Number(r[3]),
      lastDate: (r[4] as string | null) ?? undefined,
      behind: Number(r[5]),
    }));
  }

  /** Bars held in all. */
  async barCount(): Promise<number> {
    const rows = await this.#rows("SELECT count(*) FROM bars");
    return Number(rows[0][0]);
  }

  /**
   * Waits for the reads in progress, then drops the prepared statements (they are bound to the
   * tables as they were: a rewritten table needs them prepared again).
   */
  async reset(): Promise<void> {
    await this.#reading;
    for (const p of this.#prepared.values()) p.destroySync();
    this.#prepared.clear();
  }

  /**
   * Runs a hot read through its statement, prepared once per connection (a read then costs its
   * execution, not a parse and plan), decoding column chunks straight into `out`.
   */
  #query<T>(
    sql: string,
    bind: (p: DuckDBPreparedStatement) => void,
    decode: (chunk: DuckDBDataChunk, out: T) => void,
    out: T,
  ): Promise<T> {
    const run = this.#reading.then(async () => {
      let prepared = this.#prepared.get(sql);
      if (prepared === undefined) {
        prepared = await this.#conn.prepare(sql);
        this.#prepared.set(sql, prepared);
      }
      prepared.clearBindings();
      bind(prepared);
      const result = await prepared.run();
      for (let c = 0; c < result.chunkCount; c++) {
        decode(result.getChunk(c), out);
      }
      return out;
    });
    this.#reading = run.catch(() => {});
    return run;
  }

  async #rows(sql: string, params: unknown[] = []): Promise<unknown[][]> {
    const reader = await this.#conn.runAndReadAll(
      sql,
      params.length > 0 ? params as string[] : undefined,
    );
    return reader.getRows() as unknown[][];
  }
}
