/**
 * The store in front of the workers (`server.ts --store PATH`): a `get_market` item is answered
 * from the store when it holds the asked range up to the last close (`source: "store"`); any
 * other goes to the workers, and what they bring back is written into the store.
 *
 * The server opens the file only while it answers or writes, so a sync can run between requests;
 * while a sync holds it, requests go to the workers and their answers are not kept.
 *
 * @module
 */

import { getLogger } from "npm:@logtape/logtape@2.4.2";
import { isWeekend, shanghaiDate } from "../market/_dates.ts";
import { aggregateBars } from "../market/aggregate.ts";
import type {
  Adjust,
  Bar,
  MarketSuccess,
  Period,
  SymbolType,
} from "../market/types.ts";
import type { MarketFront } from "../broker/market_front.ts";
import { closeOf } from "./calendar.ts";
import { StoreLockedError } from "./database.ts";
import { sameBar } from "./rows.ts";
import { MarketStore } from "./store.ts";
import {
  seriesId,
  type SeriesInfo,
  type SeriesKey,
  type StoreChanges,
} from "./types.ts";

const logger = getLogger(["switchyard", "store"]);

/** Options for {@linkcode createStoreFront}. */
export interface StoreFrontOptions {
  /** `adjust` when an item omits it (as the workers' default). @default "qfq" */
  defaultAdjust?: Adjust;
  /** The time, for "the last close". @default Date.now */
  now?: () => number;
}

/** A {@linkcode MarketFront} over a store file, with a `close()` that waits for its writes. */
export interface StoreFront extends MarketFront {
  /** Waits for pending writes and closes the file. */
  close(): Promise<void>;
}

interface Ask {
  key: SeriesKey;
  period: Period;
  start: string;
  end: string;
  /** Whether the item asks for the whole history (its answer may replace a series). */
  whole: boolean;
}

const TYPES: readonly string[] = ["etf", "stock", "index"];
const ADJUSTS: readonly string[] = ["none", "qfq", "hfq"];
const PERIODS: readonly string[] = ["daily", "weekly", "monthly"];

/** Creates the front over the store at `path` (created on the first write when missing). */
export function createStoreFront(
  path: string,
  options: StoreFrontOptions = {},
): StoreFront {
  const now = options.now ?? Date.now;
  const defaultAdjust = options.defaultAdjust ?? "qfq";
  let open: Promise<MarketStore | undefined> | undefined;
  let users = 0;
  let writes: Promise<void> = Promise.resolve();

  /** Runs `fn` with the store open (shared by overlapping calls), or with `undefined`. */
  async function withStore<T>(
    fn: (store: MarketStore | undefined) => Promise<T>,
  ): Promise<T> {
    users++;
    open ??= MarketStore.open(path).catch((error) => {
      if (!(error instanceof StoreLockedError)) {
        logger.warn("Cannot open store {path}: {error}", { path, error });
      }
      return undefined;
    });
    const current = open;
    try {
      return await fn(await current);
    } finally {
      if (--users === 0 && open === current) {
        open = undefined;
        const store = await current;
        await store?.close();
      }
    }
  }

  function parse(item: unknown): Ask | undefined {
    if (typeof item !== "object" || item === null || Array.isArray(item)) {
      return undefined;
    }
    const p = item as Record<string, unknown>;
    const symbolType = p.symbol_type ?? "etf";
    const adjust = p.adjust ?? defaultAdjust;
    const period = p.period ?? "daily";
    if (
      !TYPES.includes(symbolType as string) ||
      typeof p.code !== "string" || !/^\d{6}$/.test(p.code) ||
      !ADJUSTS.includes(adjust as string) || !PERIODS.includes(period as string)
    ) return undefined;
    const start = dateOf(p.start_date, "1990-01-01");
    const end = dateOf(p.end_date, shanghaiDate(now()));
    if (start === undefined || end === undefined) return undefined;
    return {
      key: {
        symbolType: symbolType as SymbolType,
        code: p.code,
        adjust: adjust as Adjust,
      },
      period: period as Period,
      start,
      end,
      whole: start <= "1990-01-01",
    };
  }

  async function lookup(items: readonly unknown[]) {
    try {
      return await held(items);
    } catch (error) {
      // The store is a shortcut, never a reason to fail: the workers answer instead.
      logger.warn("Cannot read store {path}: {error}", { path, error });
      return undefined;
    }
  }

  async function held(items: readonly unknown[]) {
    const asks = items.map(parse);
    if (asks.length === 0 || asks.some((a) => a === undefined)) {
      return undefined;
    }
    return await withStore(async (store) => {
      if (store === undefined) return undefined;
      const [series, symbols, calendar, fillStart] = await Promise.all([
        store.seriesInfo(),
        store.symbols(),
        store.calendar(),
        store.meta("fill_start"),
      ]);
      const lastClose = lastCloseDay(calendar, now());
      const out: MarketSuccess[] = [];
      for (const ask of asks as Ask[]) {
        const info = series.get(seriesId(ask.key));
        if (!holds(info, ask, lastClose, fillStart)) return undefined;
        const daily = await store.readSeries(ask.key);
        const bars =
          (ask.period === "daily" ? daily : aggregateBars(daily, ask.period))
            .filter((b) => b.date >= ask.start && b.date <= ask.end);
        out.push({
          success: true,
          code: ask.key.code,
          name: symbols.get(`${ask.key.symbolType}|${ask.key.code}`)?.name ??
            ask.key.code,
          symbol_type: ask.key.symbolType,
          period: ask.period,
          adjust: ask.key.adjust,
          source: "store",
          cached: false,
          data: bars,
        });
      }
      return out;
    });
  }

  function keep(item: unknown, result: unknown): void {
    const ask = parse(item);
    const r = result as
      | { success?: boolean; data?: Bar[]; source?: string; name?: string }
      | null;
    if (
      ask === undefined || ask.period !== "daily" || r?.success !== true ||
      !Array.isArray(r.data) || r.data.length === 0 || r.source === "store"
    ) return;
    const bars = r.data;
    writes = writes.then(() =>
      withStore(async (store) => {
        if (store === undefined) return;
        const info = (await store.seriesInfo(ask.key.symbolType)).get(
          seriesId(ask.key),
        );
        const last = info === undefined
          ? undefined
          : (await store.readSeries(ask.key, info.lastDate, info.lastDate))[0];
        const changes = changesOf(ask, info, last, bars);
        if (changes === undefined) return;
        if (info === undefined || changes.replace) {
          changes.symbols = [{
            symbolType: ask.key.symbolType,
            code: ask.key.code,
            name: r.name ?? ask.key.code,
          }];
        }
        if (ask.key.adjust !== "hfq") {
          const last = bars[bars.length - 1];
          changes.raw = [{
            symbolType: ask.key.symbolType,
            code: ask.key.code,
            bar: last,
          }];
        }
        await store.commit(changes);
      })
    ).catch((error) => {
      logger.warn("Cannot keep {code} in store {path}: {error}", {
        code: ask.key.code,
        path,
        error,
      });
    });
  }

  return {
    lookup,
    keep,
    async close() {
      await writes;
      const store = await open;
      open = undefined;
      await store?.close();
    },
  };
}

/** Whether a series holds `ask`'s range up to the last close. */
function holds(
  info: SeriesInfo | undefined,
  ask: Ask,
  lastClose: string,
  fillStart: string | undefined,
): boolean {
  if (info === undefined) return false;
  // Bars before a first fill's --start were never asked for: absence proves nothing there.
  if (fillStart !== undefined && ask.start < fillStart) return false;
  const needed = ask.end < lastClose ? ask.end : lastClose;
  return info.lastDate >= needed;
}

/**
 * The latest session that has closed at `now`: the last weekday whose 15:00 Shanghai has passed,
 * skipping holidays the calendar knows (weekdays inside it without a bar). A holiday the calendar
 * does not know yet counts as a trading day, which only sends a request to the workers.
 */
export function lastCloseDay(calendar: readonly string[], now: number): string {
  const known = new Set(calendar);
  const lastKnown = calendar.at(-1) ?? "";
  let t = Date.parse(`${shanghaiDate(now)}T00:00:00Z`);
  for (let i = 0; i < 60; i++, t -= 86_400_000) {
    const date = new Date(t).toISOString().slice(0, 10);
    if (isWeekend(date) || closeOf(date) > now) continue;
    if (date <= lastKnown && !known.has(date)) continue;
    return date;
  }
  return lastKnown;
}

/** What keeping a worker's daily bars changes, or `undefined` for nothing. */
function changesOf(
  ask: Ask,
  info: SeriesInfo | undefined,
  last: Bar | undefined,
  bars: Bar[],
): StoreChanges | undefined {
  for (let i = 1; i < bars.length; i++) {
    if (!(bars[i].date > bars[i - 1].date)) return undefined;
  }
  if (info === undefined) {
    return ask.whole ? { replace: [{ key: ask.key, bars }] } : undefined;
  }
  const newer = bars.filter((b) => b.date > info.lastDate);
  if (newer.length === 0) return undefined;
  const overlap = bars.find((b) => b.date === info.lastDate);
  if (overlap !== undefined && last !== undefined && sameBar(overlap, last)) {
    return { append: [{ key: ask.key, bars: newer }] };
  }
  // The stored end differs from the upstream's (qfq after an ex-date): whole or not at all.
  return ask.whole && bars.length >= info.bars
    ? { replace: [{ key: ask.key, bars }] }
    : undefined;
}

function dateOf(value: unknown, fallback: string): string | undefined {
  if (value === undefined || value === null || value === "") return fallback;
  if (typeof value !== "string") return undefined;
  const m = /^(\d{4})-?(\d{2})-?(\d{2})$/.exec(value);
  return m ? `${m[1]}-${m[2]}-${m[3]}` : undefined;
}
