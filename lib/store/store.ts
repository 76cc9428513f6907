/**
 * The market store: daily bars of every symbol in one embedded DuckDB file, written only in
 * transactions, readable without our code (the DuckDB CLI, Python's duckdb, Parquet exports).
 *
 * One process writes a store at a time: DuckDB locks the file, and a second writer is refused
 * at once with {@linkcode StoreLockedError}.
 *
 * @module
 */

import type {
  DuckDBAppender,
  DuckDBConnection,
  DuckDBDataChunk,
  DuckDBDateValue,
  DuckDBInstance,
  DuckDBPreparedStatement,
  DuckDBVector,
} from "npm:@duckdb/node-api@1.5.6-r.1";
import { dateOfDay, dayNumber } from "../market/_dates.ts";
import type { Adjust, Bar, SymbolType } from "../market/types.ts";

type DuckDB = typeof import("npm:@duckdb/node-api@1.5.6-r.1");
let duckdb: DuckDB | undefined;

/**
 * DuckDB, loaded on first use: its native library needs `--allow-ffi`, which programs that never
 * open a store (the requester's other commands, a server without `--store`) need not grant.
 */
async function loadDuckDB(): Promise<DuckDB> {
  try {
    return duckdb ??= await import("npm:@duckdb/node-api@1.5.6-r.1");
  } catch (error) {
    if ((error as Error)?.name === "NotCapable") {
      throw new Error(
        "Cannot load DuckDB, the store's database: its native library needs --allow-ffi (or -A)",
        { cause: error },
      );
    }
    throw error;
  }
}

/** The default store path of `requester.ts sync` and `store`. */
export const DEFAULT_STORE_PATH = "data/switchyard.duckdb";

/** Another process holds the store (a running sync, or a server writing into it). */
export class StoreLockedError extends Error {
  /** The holder's process id, when DuckDB says. */
  readonly pid?: number;
  constructor(path: string, pid?: number, options?: ErrorOptions) {
    super(
      `Store ${JSON.stringify(path)} is locked by another process${
        pid === undefined ? "" : ` (PID ${pid})`
      }: another sync (or a server writing into it) is running; wait for it to finish`,
      options,
    );
    this.name = "StoreLockedError";
    this.pid = pid;
  }
}

/** Which series: one symbol's bars under one adjustment. */
export interface SeriesKey {
  /** Instrument kind. */
  symbolType: SymbolType;
  /** Six-digit code. */
  code: string;
  /** Price adjustment. */
  adjust: Adjust;
}

/** What the store knows of one series. */
export interface SeriesInfo extends SeriesKey {
  /** Bars held (always > 0: an empty history is never stored). */
  bars: number;
  /** First bar's date. */
  firstDate: string;
  /** Last bar's date. */
  lastDate: string;
  /** Last bar's close. */
  lastClose: number;
}

/** The last unadjusted bar known for a symbol: what corporate actions are detected against. */
export interface RawLast {
  /** Its date. */
  date: string;
  /** Unadjusted open. */
  open: number;
  /** Unadjusted high. */
  high: number;
  /** Unadjusted low. */
  low: number;
  /** Unadjusted close. */
  close: number;
}

/** A symbol the store tracks. */
export interface SymbolInfo {
  /** Instrument kind. */
  symbolType: SymbolType;
  /** Six-digit code. */
  code: string;
  /** Name as last listed. */
  name: string;
  /** The day a complete list no longer held it (never deleted, only marked). */
  goneSince?: string;
  /** The last unadjusted bar known. */
  raw?: RawLast;
}

/** Everything one write puts into the store, atomically. */
export interface StoreChanges {
  /** Series replaced whole (their old bars go). Never empty: callers refuse empty histories. */
  replace?: { key: SeriesKey; bars: readonly Bar[] }[];
  /** Bars added after a series' last bar. */
  append?: { key: SeriesKey; bars: readonly Bar[] }[];
  /** Symbols listed (name updates; clears a `goneSince`). */
  symbols?: { symbolType: SymbolType; code: string; name: string }[];
  /** Symbols no longer listed, with the day that showed it. */
  gone?: { symbolType: SymbolType; code: string; date: string }[];
  /** Last unadjusted bars learned. */
  raw?: { symbolType: SymbolType; code: string; bar: RawLast }[];
  /** Trading days learned. */
  calendar?: readonly string[];
  /** Key/value notes (last synced day …). */
  meta?: Record<string, string>;
}

/** Options for {@linkcode MarketStore.open}. */
export interface MarketStoreOptions {
  /** Open without writing (several readers may share a file no writer holds). @default false */
  readOnly?: boolean;
  /** DuckDB's memory limit. @default "64MB" */
  memoryLimit?: string;
  /**
   * DuckDB threads. One by default: the store's reads are small, and on a busy machine a second
   * thread costs more in waking and waiting than it saves (one-series reads measured 3.5 ms with
   * one thread against 17 ms with two, `bench/store_reads.ts`); one thread also holds less memory.
   * @default 1
   */
  threads?: number;
}

/** Per kind, what `store status` prints. */
export interface StoreStatusRow {
  /** Instrument kind. */
  symbolType: SymbolType;
  /** Price adjustment. */
  adjust: Adjust;
  /** Series held. */
  series: number;
  /** Bars held. */
  bars: number;
  /** The latest last bar over the kind's series. */
  lastDate?: string;
  /** Series whose last bar is before `lastDate`. */
  behind: number;
}

const BAR_COLUMNS =
  "symbol_type, code, adjust, strftime(date, '%Y-%m-%d') AS date, open, high, low, close, volume, amount, amplitude, pct_change, change, turnover";
const OPTIONAL = [
  "amount",
  "amplitude",
  "pct_change",
  "change",
  "turnover",
] as const;

/**
 * What a read returns per bar, dates as DATE (decoded from their day numbers in JS: cheaper than
 * formatting a string per row in SQL and handing each across the binding).
 */
const READ_COLUMNS =
  "date, open, high, low, close, volume, amount, amplitude, pct_change, change, turnover";
const SERIES_SQL =
  `SELECT ${READ_COLUMNS} FROM bars WHERE symbol_type = $1 AND code = $2 AND adjust = $3
     AND date >= $4 AND date <= $5 ORDER BY date`;
const CROSS_SQL =
  `SELECT symbol_type, code, ${READ_COLUMNS} FROM bars WHERE adjust = $1 AND date = $2
     ORDER BY symbol_type, code`;
const CROSS_KIND_SQL =
  `SELECT symbol_type, code, ${READ_COLUMNS} FROM bars WHERE adjust = $1 AND date = $2
     AND symbol_type = $3 ORDER BY code`;
const FIRST_DAY = -25567; // 1900-01-01
const LAST_DAY = 376199; // 2999-12-31

const SCHEMA = `
CREATE TABLE IF NOT EXISTS bars (
  symbol_type VARCHAR NOT NULL, code VARCHAR NOT NULL, adjust VARCHAR NOT NULL, date DATE NOT NULL,
  open DOUBLE NOT NULL, high DOUBLE NOT NULL, low DOUBLE NOT NULL, close DOUBLE NOT NULL,
  volume DOUBLE NOT NULL, amount DOUBLE, amplitude DOUBLE, pct_change DOUBLE, change DOUBLE,
  turnover DOUBLE);
CREATE TABLE IF NOT EXISTS series (
  symbol_type VARCHAR NOT NULL, code VARCHAR NOT NULL, adjust VARCHAR NOT NULL,
  bars BIGINT NOT NULL, first_date DATE NOT NULL, last_date DATE NOT NULL, last_close DOUBLE NOT NULL);
CREATE TABLE IF NOT EXISTS symbols (
  symbol_type VARCHAR NOT NULL, code VARCHAR NOT NULL, name VARCHAR NOT NULL, gone_since DATE);
CREATE TABLE IF NOT EXISTS raw_last (
  symbol_type VARCHAR NOT NULL, code VARCHAR NOT NULL, date DATE NOT NULL,
  open DOUBLE NOT NULL, high DOUBLE NOT NULL, low DOUBLE NOT NULL, close DOUBLE NOT NULL);
CREATE TABLE IF NOT EXISTS calendar (date DATE NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR NOT NULL, value VARCHAR NOT NULL);
`;

/** `${symbolType}|${code}|${adjust}`: the map key of a series. */
export function seriesId(key: SeriesKey): string {
  return `${key.symbolType}|${key.code}|${key.adjust}`;
}

/** A daily-bar store in one DuckDB file. */
export class MarketStore {
  /** The file. */
  readonly path: string;
  #instance: DuckDBInstance;
  #conn: DuckDBConnection;
  #readOnly: boolean;
  #writing: Promise<void> = Promise.resolve();
  /** Reads through the prepared statements, one at a time (a statement holds one binding). */
  #reading: Promise<unknown> = Promise.resolve();
  #prepared = new Map<string, DuckDBPreparedStatement>();

  private constructor(
    path: string,
    instance: DuckDBInstance,
    conn: DuckDBConnection,
    readOnly: boolean,
  ) {
    this.path = path;
    this.#instance = instance;
    this.#conn = conn;
    this.#readOnly = readOnly;
  }

  /**
   * Opens (creating when missing, unless read-only) the store at `path`.
   *
   * @throws {StoreLockedError} when another process holds the file.
   */
  static async open(
    path: string,
    options: MarketStoreOptions = {},
  ): Promise<MarketStore> {
    const readOnly = options.readOnly ?? false;
    if (!readOnly) {
      const dir = path.replace(/\/[^/]*$/, "");
      if (dir !== path && dir !== "") {
        await Deno.mkdir(dir, { recursive: true });
      }
    }
    const { DuckDBInstance } = await loadDuckDB();
    let instance: DuckDBInstance;
    try {
      instance = await DuckDBInstance.create(path, {
        access_mode: readOnly ? "READ_ONLY" : "READ_WRITE",
        memory_limit: options.memoryLimit ?? "64MB",
        threads: String(options.threads ?? 1),
        // Freed memory goes back to the system past this, not kept for reuse (default 128MB).
        allocator_flush_threshold: "8MB",
        checkpoint_threshold: "8MB",
      });
    } catch (error) {
      const message = (error as Error).message ?? "";
      if (/Could not set lock|Conflicting lock/.test(message)) {
        const pid = /PID (\d+)/.exec(message)?.[1];
        throw new StoreLockedError(
          path,
          pid === undefined ? undefined : Number(pid),
          { cause: error },
        );
      }
      throw error;
    }
    const conn = await instance.connect();
    if (!readOnly) {
      await conn.run(SCHEMA);
      // Scratch tables of this connection, made once: catalog changes inside every commit
      // would cost more than the rows.
      await conn.run(`
        CREATE TEMP TABLE _touched (symbol_type VARCHAR, code VARCHAR, adjust VARCHAR);
        CREATE TEMP TABLE _replaced (symbol_type VARCHAR, code VARCHAR, adjust VARCHAR);
        CREATE TEMP TABLE _symbols (symbol_type VARCHAR, code VARCHAR, name VARCHAR);
        CREATE TEMP TABLE _raw AS SELECT * FROM raw_last LIMIT 0;
        CREATE TEMP TABLE _days (date DATE);`);
    }
    return new MarketStore(path, instance, conn, readOnly);
  }

  /** Every series held, by {@linkcode seriesId}. */
  async seriesInfo(symbolType?: SymbolType): Promise<Map<string, SeriesInfo>> {
    const rows = await this.#rows(
      `SELECT symbol_type, code, adjust, bars, strftime(first_date, '%Y-%m-%d'),
         strftime(last_date, '%Y-%m-%d'), last_close FROM series ${
        symbolType ? "WHERE symbol_type = $1" : ""
      }`,
      symbolType ? [symbolType] : [],
    );
    const out = new Map<string, SeriesInfo>();
    for (const r of rows) {
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

  /** Every series' last bar, by {@linkcode seriesId}. */
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

  /** Every series whole, by {@linkcode seriesId} (for comparisons and checks, not for serving). */
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
   * Writes `changes` in one transaction: all of it lands, or (on any error, or a kill) none.
   * Replaced series lose their old bars; series statistics are recomputed from the bars.
   */
  commit(changes: StoreChanges): Promise<void> {
    if (this.#readOnly) {
      return Promise.reject(
        new TypeError(`Store ${this.path} was opened read-only`),
      );
    }
    // One writer at a time on the connection: a transaction per commit, in call order.
    const run = this.#writing.then(() => this.#commit(changes));
    this.#writing = run.catch(() => {});
    return run;
  }

  async #commit(changes: StoreChanges): Promise<void> {
    const conn = this.#conn;
    const replace = changes.replace ?? [];
    const append = (changes.append ?? []).filter((a) => a.bars.length > 0);
    for (const { key, bars } of replace) {
      if (bars.length === 0) {
        throw new RangeError(
          `Cannot store an empty history for ${seriesId(key)}`,
        );
      }
    }
    await conn.run("BEGIN TRANSACTION");
    try {
      const touched = [...replace, ...append].map((c) => c.key);
      if (touched.length > 0) {
        await conn.run("DELETE FROM _touched; DELETE FROM _replaced");
        await appendRows(conn, "_touched", touched, (a, k) => {
          a.appendVarchar(k.symbolType);
          a.appendVarchar(k.code);
          a.appendVarchar(k.adjust);
        });
        // Series statistics come from the bars written and the series rows, never from a scan
        // of all bars: a commit costs what it writes, however large the store.
        const before = new Map<string, SeriesInfo>();
        const existing = (await conn.runAndReadAll(
          `SELECT symbol_type, code, adjust, bars, strftime(first_date, '%Y-%m-%d'),
             strftime(last_date, '%Y-%m-%d'), last_close
           FROM series SEMI JOIN _touched USING (symbol_type, code, adjust)`,
        )).getRows();
        for (const r of existing) {
          const info: SeriesInfo = {
            symbolType: r[0] as SymbolType,
            code: r[1] as string,
            adjust: r[2] as Adjust,
            bars: Number(r[3]),
            firstDate: r[4] as string,
            lastDate: r[5] as string,
            lastClose: r[6] as number,
          };
          before.set(seriesId(info), info);
        }
        const stale = replace.filter(({ key }) => before.has(seriesId(key)));
        if (stale.length > 0) {
          await appendRows(conn, "_replaced", stale, (a, { key }) => {
            a.appendVarchar(key.symbolType);
            a.appendVarchar(key.code);
            a.appendVarchar(key.adjust);
          });
          await conn.run(
            `DELETE FROM bars WHERE (symbol_type, code, adjust) IN (SELECT * FROM _replaced)`,
          );
        }
        const after = new Map<string, SeriesInfo>();
        const appender = await conn.createAppender("bars");
        for (const { key, bars } of replace) {
          for (const bar of bars) appendBar(appender, key, bar);
          after.set(seriesId(key), {
            ...key,
            bars: bars.length,
            firstDate: bars[0].date,
            lastDate: bars[bars.length - 1].date,
            lastClose: bars[bars.length - 1].close,
          });
        }
        for (const { key, bars } of append) {
          const id = seriesId(key);
          const info = after.get(id) ?? before.get(id);
          let last = info?.lastDate ?? "";
          let added = 0;
          let lastClose = info?.lastClose ?? 0;
          for (const bar of bars) {
            // Appends only ever extend a series: a bar at or before its end would duplicate it.
            if (bar.date <= last) {
              throw new RangeError(
                `Cannot append bar ${bar.date} to ${id}: the series ends ${last}`,
              );
            }
            appendBar(appender, key, bar);
            last = bar.date;
            lastClose = bar.close;
            added++;
          }
          after.set(id, {
            ...key,
            bars: (info?.bars ?? 0) + added,
            firstDate: info?.firstDate ?? bars[0].date,
            lastDate: last,
            lastClose,
          });
        }
        appender.closeSync();
        await conn.run(
          `DELETE FROM series WHERE (symbol_type, code, adjust) IN (SELECT * FROM _touched)`,
        );
        await appendRows(conn, "series", [...after.values()], (a, info) => {
          a.appendVarchar(info.symbolType);
          a.appendVarchar(info.code);
          a.appendVarchar(info.adjust);
          a.appendBigInt(BigInt(info.bars));
          a.appendDate(dateValue(info.firstDate));
          a.appendDate(dateValue(info.lastDate));
          a.appendDouble(info.lastClose);
        });
      }
      const symbols = changes.symbols ?? [];
      if (symbols.length > 0) {
        await conn.run("DELETE FROM _symbols");
        await appendRows(conn, "_symbols", symbols, (a, s) => {
          a.appendVarchar(s.symbolType);
          a.appendVarchar(s.code);
          a.appendVarchar(s.name);
        });
        await conn.run(
          "DELETE FROM symbols WHERE (symbol_type, code) IN (SELECT symbol_type, code FROM _symbols)",
        );
        await conn.run(
          "INSERT INTO symbols SELECT DISTINCT ON (symbol_type, code) symbol_type, code, name, NULL FROM _symbols",
        );
      }
      for (const g of changes.gone ?? []) {
        await conn.run(
          "UPDATE symbols SET gone_since = CAST($3 AS DATE) WHERE symbol_type = $1 AND code = $2 AND gone_since IS NULL",
          [g.symbolType, g.code, g.date],
        );
      }
      const raw = changes.raw ?? [];
      if (raw.length > 0) {
        await conn.run("DELETE FROM _raw");
        await appendRows(conn, "_raw", raw, (a, r) => {
          a.appendVarchar(r.symbolType);
          a.appendVarchar(r.code);
          a.appendDate(dateValue(r.bar.date));
          a.appendDouble(r.bar.open);
          a.appendDouble(r.bar.high);
          a.appendDouble(r.bar.low);
          a.appendDouble(r.bar.close);
        });
        // The newest bar wins, whichever was learned first.
        await conn.run(
          "INSERT INTO _raw SELECT * FROM raw_last WHERE (symbol_type, code) IN (SELECT symbol_type, code FROM _raw)",
        );
        await conn.run(
          "DELETE FROM raw_last WHERE (symbol_type, code) IN (SELECT symbol_type, code FROM _raw)",
        );
        await conn.run(
          "INSERT INTO raw_last SELECT DISTINCT ON (symbol_type, code) * FROM _raw ORDER BY symbol_type, code, date DESC",
        );
      }
      const days = changes.calendar ?? [];
      if (days.length > 0) {
        await conn.run("DELETE FROM _days");
        await appendRows(conn, "_days", days, (a, d) => {
          a.appendDate(dateValue(d));
        });
        await conn.run(
          "INSERT INTO calendar SELECT DISTINCT date FROM _days WHERE date NOT IN (SELECT date FROM calendar)",
        );
      }
      const written = replace.reduce((n, r) => n + r.bars.length, 0) +
        append.reduce((n, a) => n + a.bars.length, 0);
      if (written > 0) await this.#addUnsorted(written);
      for (const [key, value] of Object.entries(changes.meta ?? {})) {
        await conn.run("DELETE FROM meta WHERE key = $1", [key]);
        await conn.run("INSERT INTO meta VALUES ($1, $2)", [key, value]);
      }
      await conn.run("COMMIT");
    } catch (error) {
      await conn.run("ROLLBACK").catch(() => {});
      throw error;
    }
  }

  /** Counts bars written since the table was last sorted, inside the caller's transaction. */
  async #addUnsorted(bars: number): Promise<void> {
    const rows = (await this.#conn.runAndReadAll(
      "SELECT value FROM meta WHERE key = 'unsorted_bars'",
    )).getRows();
    const before = rows.length > 0 ? Number(rows.at(-1)![0]) : 0;
    await this.#conn.run("DELETE FROM meta WHERE key = 'unsorted_bars'");
    await this.#conn.run("INSERT INTO meta VALUES ('unsorted_bars', $1)", [
      String(before + bars),
    ]);
  }

  /**
   * Sorts the bars table ({@linkcode compact}) once at least `threshold` bars were written since
   * it was last sorted; returns whether it did. Bars land in write order: a first fill in the order
   * series arrive, each day's bars one per series at the end. Past about one DuckDB row group
   * (122,880 rows) of such bars, every one-series read scans them all, since each of those row
   * groups spans every code.
   */
  async compactIfScattered(threshold = 122_880): Promise<boolean> {
    if (this.#readOnly) return false;
    await this.#writing;
    const unsorted = Number(await this.meta("unsorted_bars") ?? 0);
    if (unsorted < threshold) return false;
    await this.compact();
    return true;
  }

  /**
   * Rewrites the bars table sorted by series and date, in one transaction, so that one series'
   * bars sit together and a read skips the rest (DuckDB prunes by each row group's min/max).
   */
  async compact(): Promise<void> {
    await this.#writing;
    await this.#reading;
    // Statements bound to the old table go with it.
    this.#forgetPrepared();
    const conn = this.#conn;
    // Written bars out of the write-ahead log first: the buffer pool can then evict them while
    // the sort runs within the memory limit.
    await conn.run("CHECKPOINT");
    await this.#sort();
    await conn.run("CHECKPOINT");
  }

  async #sort(): Promise<void> {
    const conn = this.#conn;
    await conn.run("BEGIN TRANSACTION");
    try {
      await conn.run(
        "CREATE OR REPLACE TABLE _bars_sorted AS SELECT * FROM bars ORDER BY symbol_type, adjust, code, date",
      );
      await conn.run("DROP TABLE bars");
      await conn.run("ALTER TABLE _bars_sorted RENAME TO bars");
      await conn.run("DELETE FROM meta WHERE key = 'unsorted_bars'");
      await conn.run("COMMIT");
    } catch (error) {
      await conn.run("ROLLBACK").catch(() => {});
      throw error;
    }
  }

  /**
   * Writes every table as files others read: `bars.parquet` (or `.csv`) sorted by kind,
   * adjustment, code and date, plus `symbols` and `calendar`. Returns the paths.
   */
  async export(format: "parquet" | "csv", dir: string): Promise<string[]> {
    await Deno.mkdir(dir, { recursive: true });
    const ext = format === "parquet" ? "parquet" : "csv";
    const options = format === "parquet"
      ? "(FORMAT parquet, COMPRESSION zstd)"
      : "(FORMAT csv, HEADER true)";
    const base = dir.replace(/\/+$/, "");
    const out: string[] = [];
    const queries: [string, string][] = [
      [
        "bars",
        "SELECT * FROM bars",
      ],
      ["symbols", "SELECT * FROM symbols ORDER BY symbol_type, code"],
      ["calendar", "SELECT DISTINCT date FROM calendar ORDER BY date"],
    ];
    for (const [name, query] of queries) {
      const path = `${base}/${name}.${ext}`;
      const temp = `${base}/.${name}.${crypto.randomUUID()}.${ext}`;
      await this.#conn.run(
        `COPY (${query}) TO '${sqlString(temp)}' ${options}`,
      );
      await Deno.rename(temp, path);
      out.push(path);
    }
    return out;
  }

  /** Closes the file (waits for a write in progress). */
  async close(): Promise<void> {
    await this.#writing;
    await this.#reading;
    this.#forgetPrepared();
    this.#conn.closeSync();
    this.#instance.closeSync();
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

  #forgetPrepared(): void {
    for (const p of this.#prepared.values()) p.destroySync();
    this.#prepared.clear();
  }

  async #rows(sql: string, params: unknown[] = []): Promise<unknown[][]> {
    const reader = await this.#conn.runAndReadAll(
      sql,
      params.length > 0 ? params as string[] : undefined,
    );
    return reader.getRows() as unknown[][];
  }
}

const FIELDS = [
  "open",
  "high",
  "low",
  "close",
  "volume",
  "amount",
  "amplitude",
  "pct_change",
  "change",
  "turnover",
] as const;

/** Whether two bars agree on every field. */
export function sameBar(a: Bar, b: Bar): boolean {
  return a.date === b.date && FIELDS.every((f) => a[f] === b[f]);
}

/** The first field where two bars differ, for mismatch reports. */
export function barDifference(a: Bar, b: Bar): string | undefined {
  if (a.date !== b.date) return `date ${a.date} ≠ ${b.date}`;
  const f = FIELDS.find((f) => a[f] !== b[f]);
  return f === undefined ? undefined : `${a.date} ${f} ${a[f]} ≠ ${b[f]}`;
}

function barOf(r: unknown[]): Bar {
  const bar: Bar = {
    date: r[3] as string,
    open: r[4] as number,
    high: r[5] as number,
    low: r[6] as number,
    close: r[7] as number,
    volume: r[8] as number,
  };
  OPTIONAL.forEach((field, i) => {
    const value = r[9 + i];
    if (value !== null && value !== undefined) bar[field] = value as number;
  });
  return bar;
}

/** A chunk's bar columns: the dates as day numbers, then the ten numbers. */
interface Columns {
  days: Int32Array;
  values: DuckDBVector[];
}

function columnsOf(chunk: DuckDBDataChunk, first: number): Columns {
  const dates = chunk.getColumnVector(first) as unknown as {
    items: Int32Array;
  };
  const values: DuckDBVector[] = [];
  for (let i = 1; i <= FIELDS.length; i++) {
    values.push(chunk.getColumnVector(first + i));
  }
  return { days: dates.items, values };
}

function barAt({ days, values: v }: Columns, i: number): Bar {
  const bar: Bar = {
    date: dateOfDay(days[i]),
    open: v[0].getItem(i) as number,
    high: v[1].getItem(i) as number,
    low: v[2].getItem(i) as number,
    close: v[3].getItem(i) as number,
    volume: v[4].getItem(i) as number,
  };
  for (let f = 0; f < OPTIONAL.length; f++) {
    const value = v[5 + f].getItem(i);
    if (value !== null) bar[OPTIONAL[f]] = value as number;
  }
  return bar;
}

function appendBar(a: DuckDBAppender, key: SeriesKey, bar: Bar): void {
  a.appendVarchar(key.symbolType);
  a.appendVarchar(key.code);
  a.appendVarchar(key.adjust);
  a.appendDate(dateValue(bar.date));
  a.appendDouble(bar.open);
  a.appendDouble(bar.high);
  a.appendDouble(bar.low);
  a.appendDouble(bar.close);
  a.appendDouble(bar.volume);
  for (const field of OPTIONAL) {
    const value = bar[field];
    if (value === undefined) a.appendNull();
    else a.appendDouble(value);
  }
  a.endRow();
}

async function appendRows<T>(
  conn: DuckDBConnection,
  table: string,
  rows: readonly T[],
  fill: (a: DuckDBAppender, row: T) => void,
): Promise<void> {
  const appender = await conn.createAppender(table);
  for (const row of rows) {
    fill(appender, row);
    appender.endRow();
  }
  appender.closeSync();
}

function dateValue(text: string): DuckDBDateValue {
  return dayValue(dayNumber(date(text)));
}

function dayValue(day: number): DuckDBDateValue {
  return new duckdb!.DuckDBDateValue(day);
}

/** `text` when it is a `YYYY-MM-DD` date; a clear error otherwise. */
function date(text: string): string {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(text)) {
    throw new RangeError(
      `Invalid bar date ${JSON.stringify(text)}: expected YYYY-MM-DD`,
    );
  }
  return text;
}

function sqlString(text: string): string {
  return text.replaceAll("'", "''");
}
