/**
 * The market store: daily bars of every symbol in one embedded DuckDB file, written only in
 * transactions, readable without our code (the DuckDB CLI, Python's duckdb, Parquet exports).
 *
 * One process writes a store at a time: DuckDB locks the file, and a second writer is refused
 * at once with a `StoreLockedError` (`database.ts`).
 *
 * {@linkcode MarketStore} is where the parts meet: the file and its tables (`database.ts`), the
 * reads (`reads.ts`), the writes (`commit.ts`) and the export (`export.ts`).
 *
 * @module
 */

import type { Adjust, Bar, SymbolType } from "../market/types.ts";
import { commitChanges, sortBars } from "./commit.ts";
import {
  type Database,
  type MarketStoreOptions,
  openDatabase,
} from "./database.ts";
import { exportTables } from "./export.ts";
import { StoreReads } from "./reads.ts";
import type {
  SeriesInfo,
  SeriesKey,
  StoreChanges,
  StoreStatusRow,
  SymbolInfo,
} from "./types.ts";

/** The default store path of `requester.ts sync` and `store`. */
export const DEFAULT_STORE_PATH = "data/switchyard.duckdb";

/** A daily-bar store in one DuckDB file. */
export class MarketStore {
  /** The file. */
  readonly path: string;
  #db: Database;
  #readOnly: boolean;
  #reads: StoreReads;
  #writing: Promise<void> = Promise.resolve();

  private constructor(path: string, db: Database, readOnly: boolean) {
    this.path = path;
    this.#db = db;
    this.#readOnly = readOnly;
    this.#reads = new StoreReads(db.conn);
  }

  /**
   * Opens (creating when missing, unless read-only) the store at `path`.
   *
   * @throws {Error} a `StoreLockedError` (`database.ts`) when another process holds the file.
   */
  static async open(
    path: string,
    options: MarketStoreOptions = {},
  ): Promise<MarketStore> {
    const db = await openDatabase(path, options);
    return new MarketStore(path, db, options.readOnly ?? false);
  }

  /** Every series held, by `seriesId`. */
  seriesInfo(symbolType?: SymbolType): Promise<Map<string, SeriesInfo>> {
    return this.#reads.seriesInfo(symbolType);
  }

  /** Every series' last bar, by `seriesId`. */
  lastBars(symbolType?: SymbolType): Promise<Map<string, Bar>> {
    return this.#reads.lastBars(symbolType);
  }

  /** Every symbol tracked, by `${symbolType}|${code}`. */
  symbols(symbolType?: SymbolType): Promise<Map<string, SymbolInfo>> {
    return this.#reads.symbols(symbolType);
  }

  /** Trading days learned, ascending. */
  calendar(): Promise<string[]> {
    return this.#reads.calendar();
  }

  /** A note written with `meta`. */
  meta(key: string): Promise<string | undefined> {
    return this.#reads.meta(key);
  }

  /** One series' bars, ascending, within `[start, end]` when given. */
  readSeries(key: SeriesKey, start?: string, end?: string): Promise<Bar[]> {
    return this.#reads.readSeries(key, start, end);
  }

  /** Every series whole, by `seriesId` (for comparisons and checks, not for serving). */
  readAll(): Promise<Map<string, Bar[]>> {
    return this.#reads.readAll();
  }

  /** Every symbol's bar of one day under one adjustment (of one kind, or of all), by kind and code. */
  crossSection(
    symbolType: SymbolType | undefined,
    adjust: Adjust,
    day: string,
  ): Promise<{ symbolType: SymbolType; code: string; bar: Bar }[]> {
    return this.#reads.crossSection(symbolType, adjust, day);
  }

  /** Several series of one kind and adjustment at once, by code (for checks over a universe). */
  readMany(
    symbolType: SymbolType,
    adjust: Adjust,
    codes: readonly string[],
  ): Promise<Map<string, Bar[]>> {
    return this.#reads.readMany(symbolType, adjust, codes);
  }

  /** Per kind and adjustment: series, bars, latest day and how many are behind it. */
  status(): Promise<StoreStatusRow[]> {
    return this.#reads.status();
  }

  /** Bars held in all. */
  barCount(): Promise<number> {
    return this.#reads.barCount();
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
    const run = this.#writing.then(() => commitChanges(this.#db.conn, changes));
    this.#writing = run.catch(() => {});
    return run;
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
    // Statements bound to the old table go with it.
    await this.#reads.reset();
    await sortBars(this.#db.conn);
  }

  /**
   * Writes every table as files others read: `bars.parquet` (or `.csv`), plus `symbols` and
   * `calendar`. Returns the paths. Bars go out in the table's stored order: by kind, adjustment,
   * code and date as of the last {@linkcode compact}, then the bars committed since.
   */
  export(format: "parquet" | "csv", dir: string): Promise<string[]> {
    return exportTables(this.#db.conn, format, dir);
  }

  /** Closes the file (waits for a write in progress). */
  async close(): Promise<void> {
    await this.#writing;
    await this.#reads.reset();
    this.#db.conn.closeSync();
    this.#db.instance.closeSync();
  }
}
