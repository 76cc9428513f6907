/**
 * The store's DuckDB file: loading DuckDB, opening the file (a lock held elsewhere becomes
 * {@linkcode StoreLockedError}), its tables, and running statements in one transaction.
 *
 * @module
 */

import type {
  DuckDBConnection,
  DuckDBDateValue,
  DuckDBInstance,
} from "npm:@duckdb/node-api@1.5.6-r.1";
import { type Bar, REQUIRED_BAR_FIELDS } from "../market/types.ts";

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

/** Options for `MarketStore.open`: how DuckDB opens the file. */
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

/**
 * A bar's fields besides its date, in the bars table's column order after the series key and the
 * date. The order is the store file's format (files written before hold their columns in it), so
 * it is its own: reordering the order bars are written out in (`BAR_FIELDS`) leaves it alone.
 * Writes, reads and decoders follow this list by name.
 */
export const STORE_BAR_FIELDS = [
  ...["open", "high", "low", "close", "volume"] as const,
  ...["amount", "amplitude", "pct_change", "change", "turnover"] as const,
] as const satisfies readonly (keyof Bar)[];

/** The bars table's field columns: the fields every bar has are NOT NULL. */
function barFieldColumns(): string {
  const required = new Set<string>(REQUIRED_BAR_FIELDS);
  return STORE_BAR_FIELDS.map((field) =>
    `${field} DOUBLE${required.has(field) ? " NOT NULL" : ""}`
  ).join(", ");
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS bars (
  symbol_type VARCHAR NOT NULL, code VARCHAR NOT NULL, adjust VARCHAR NOT NULL, date DATE NOT NULL,
  ${barFieldColumns()});
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

/** Scratch tables of a writing connection (see {@linkcode openDatabase}). */
const SCRATCH = `
CREATE TEMP TABLE _touched (symbol_type VARCHAR, code VARCHAR, adjust VARCHAR);
CREATE TEMP TABLE _replaced (symbol_type VARCHAR, code VARCHAR, adjust VARCHAR);
CREATE TEMP TABLE _symbols (symbol_type VARCHAR, code VARCHAR, name VARCHAR);
CREATE TEMP TABLE _raw AS SELECT * FROM raw_last LIMIT 0;
CREATE TEMP TABLE _days (date DATE);`;

/** An open store file and the one connection the store uses. */
export interface Database {
  /** The DuckDB instance (closing it releases the file's lock). */
  instance: DuckDBInstance;
  /** The connection every statement runs on. */
  conn: DuckDBConnection;
}

/**
 * Opens (creating when missing, unless read-only) the DuckDB file at `path`, with the store's
 * tables when writing.
 *
 * @throws {StoreLockedError} when another process holds the file.
 */
export async function openDatabase(
  path: string,
  options: MarketStoreOptions = {},
): Promise<Database> {
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
  let conn: DuckDBConnection | undefined;
  try {
    conn = await instance.connect();
    if (!readOnly) {
      await conn.run(SCHEMA);
      // Scratch tables of this connection, made once: catalog changes inside every commit
      // would cost more than the rows.
      await conn.run(SCRATCH);
    }
  } catch (error) {
    // Nothing keeps a half-opened file: closing the instance releases its lock.
    conn?.closeSync();
    instance.closeSync();
    throw error;
  }
  return { instance, conn };
}

/**
 * Runs `work` in one transaction: all of it lands, or (on any error, or a kill) none.
 */
export async function inTransaction(
  conn: DuckDBConnection,
  work: () => Promise<void>,
): Promise<void> {
  await conn.run("BEGIN TRANSACTION");
  try {
    await work();
    await conn.run("COMMIT");
  } catch (error) {
    await conn.run("ROLLBACK").catch(() => {});
    throw error;
  }
}

/** A DuckDB DATE of a day number (days since 1970-01-01). */
export function dayValue(day: number): DuckDBDateValue {
  return new duckdb!.DuckDBDateValue(day);
}
