/**
 * The series cache: whole histories keyed by (source, symbol_type, code, period, adjust), sliced
 * locally per request. An in-memory LRU bounded by entry count, optionally backed by a folder
 * of JSON files that survives restarts.
 *
 * Freshness: nothing changes until the next daily close (15:00 Shanghai). After a close, a `qfq`
 * entry is stale as a whole, because a new dividend rewrites every earlier forward-adjusted
 * price. Unadjusted and `hfq` bars never change once their day has closed, so such an entry
 * still serves any request that ends on or before the last day closed when it was fetched.
 * A series without any bar is kept only briefly, in memory, and never written to disk.
 *
 * @module
 */

import { lastCloseAt, shanghaiDate } from "./_dates.ts";
import type { Adjust, Bar, Period } from "./types.ts";

/** One cached series. */
export interface CacheEntry {
  /** The cache key. */
  key: string;
  /** Instrument name. */
  name: string;
  /** Provider that produced the bars. */
  source: string;
  /** Adjustment of the bars; decides expiry. */
  adjust: Adjust;
  /** Bar length; minute series expire like `qfq`. Absent in entries of older versions. */
  period?: Period;
  /** When the series was fetched, epoch ms. */
  fetchedAt: number;
  /** The whole history, ascending. */
  bars: Bar[];
}

/** The cache key of a series. */
export function cacheKey(
  source: string,
  symbolType: string,
  code: string,
  period: string,
  adjust: string,
): string {
  return [source, symbolType, code, period, adjust].join("_");
}

/**
 * Whether `entry` can answer a request ending on `endDate` at time `now` (see the module doc).
 * An entry without bars never is: a listed code always has bars, so an empty history is more
 * often a refusal in disguise than a fact, and it is asked for again.
 */
export function isEntryFresh(
  entry: CacheEntry,
  endDate: string,
  now: number,
): boolean {
  if (entry.bars.length === 0) return false;
  if (entry.fetchedAt >= lastCloseAt(now)) return true;
  // A minute series is a sliding window: after a close its oldest day has gone upstream.
  if (entry.adjust === "qfq" || entry.period?.endsWith("m")) return false;
  return endDate <= shanghaiDate(lastCloseAt(entry.fetchedAt));
}

/** Options for {@linkcode SeriesCache}. */
export interface SeriesCacheOptions {
  /** Entries kept in memory; the least recently used go first. @default 256 */
  entries?: number;
  /** A folder for JSON copies of the entries; none when unset. */
  dir?: string;
}

/** LRU memory cache with an optional on-disk copy. */
export class SeriesCache {
  #max: number;
  #dir: string | undefined;
  #memory = new Map<string, CacheEntry>();
  #dirReady: Promise<void> | undefined;

  constructor(options: SeriesCacheOptions = {}) {
    this.#max = options.entries ?? 256;
    if (!(this.#max >= 1)) {
      throw new RangeError(
        `Invalid cache size ${this.#max}: expected 1 or more entries`,
      );
    }
    this.#dir = options.dir?.replace(/\/+$/, "");
  }

  /** Entries in memory now. */
  get size(): number {
    return this.#memory.size;
  }

  /** The entry for `key` from memory, else from disk, else `undefined`. */
  async get(key: string): Promise<CacheEntry | undefined> {
    const entry = this.#memory.get(key);
    if (entry !== undefined) {
      this.#memory.delete(key);
      this.#memory.set(key, entry);
      return entry;
    }
    if (this.#dir === undefined) return undefined;
    let stored: CacheEntry;
    try {
      stored = JSON.parse(await Deno.readTextFile(this.#path(key)));
    } catch {
      return undefined; // absent or half-written by a crashed older version: a miss either way
    }
    if (stored?.key !== key || !Array.isArray(stored.bars)) return undefined;
    this.#remember(stored);
    return stored;
  }

  /** Stores `entry` in memory and, when a folder is set, on disk (atomically). */
  async set(entry: CacheEntry): Promise<void> {
    this.#remember(entry);
    if (this.#dir === undefined || entry.bars.length === 0) return;
    this.#dirReady ??= Deno.mkdir(this.#dir, { recursive: true });
    await this.#dirReady;
    const path = this.#path(entry.key);
    const temp = `${path}.${crypto.randomUUID()}.tmp`;
    try {
      await Deno.writeTextFile(temp, JSON.stringify(entry));
      await Deno.rename(temp, path); // readers never see a half-written file
    } catch (error) {
      await Deno.remove(temp).catch(() => {});
      throw error;
    }
  }

  #remember(entry: CacheEntry): void {
    this.#memory.delete(entry.key);
    this.#memory.set(entry.key, entry);
    while (this.#memory.size > this.#max) {
      this.#memory.delete(this.#memory.keys().next().value!);
    }
  }

  #path(key: string): string {
    return `${this.#dir}/${key.replace(/[^A-Za-z0-9_-]/g, "-")}.json`;
  }
}
