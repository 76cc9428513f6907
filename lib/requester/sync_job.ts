/**
 * A sync: keeps a market store current through the workers, fetching only what is new.
 *
 * 1. The trading calendar: the Shanghai Composite's daily K-line (one request), so the latest
 *    closed trading day `T` and the day before are known, holidays included.
 * 2. One snapshot of each kind from the list API (`get_snapshot`, ~100 symbols a page), used
 *    only when it was updated after `T`'s close: a symbol whose last bar is the trading day before
 *    `T` gets `T`'s bar from it (a row showing `-`, a suspended symbol, adds nothing).
 * 3. A symbol whose snapshot previous close differs from its last unadjusted close went ex
 *    (dividend, split, rights): its qfq series is fetched whole again, its hfq series from its
 *    last bar; unadjusted bars only grow and come from the snapshot.
 * 4. Gaps (a missed day, a suspended symbol trading again) get one K-line fetch; new listings and
 *    series never filled (or whose history was empty) get their whole history.
 *
 * Every write is one store transaction, so a sync killed anywhere leaves a consistent store and
 * the next sync works out again, from the store alone, what is missing.
 *
 * @module
 */

import { shanghaiDate } from "../market/_dates.ts";
import type { SnapshotPage, SnapshotRow } from "../market/snapshot.ts";
import type { Adjust, Bar, SymbolType } from "../market/types.ts";
import { latestClosedDay, previousTradingDay } from "../store/calendar.ts";
import { deriveBar } from "../store/derive.ts";
import { sameBar } from "../store/rows.ts";
import type { MarketStore } from "../store/store.ts";
import {
  type RawLast,
  seriesId,
  type SeriesInfo,
  type SeriesKey,
  type StoreChanges,
} from "../store/types.ts";
import type { RequesterClient } from "./requester_client.ts";
import type { JobCounts } from "./progress.ts";
import type { SymbolKind, SymbolSpec } from "./symbols.ts";
import { listSymbols } from "./markets_job.ts";

/** Why a series is fetched: the report counts requests by reason. */
export type FetchReason =
  | "fill"
  | "new_listing"
  | "corporate_action"
  | "gap"
  | "hfq_unverified";

/** Options for {@linkcode runSync}. */
export interface SyncOptions {
  /** The store, opened for writing. */
  store: MarketStore;
  /** Whole kinds, listed by the snapshot (or `list_symbols` when it fails). */
  all?: readonly SymbolKind[];
  /** Symbols besides (or instead of) whole kinds. */
  symbols?: readonly SymbolSpec[];
  /** Adjustments kept. @default ["qfq"] */
  adjust?: readonly Adjust[];
  /** First date of a first fill, `YYYY-MM-DD`. @default the whole history */
  start?: string;
  /** Items per streamed batch (two run at once). @default 200 */
  batchSize?: number;
  /** Seconds a batch or request may take. @default 300 */
  timeout?: number;
  /** Use the snapshot for a kind with at least this many symbols to update. @default 20 */
  snapshotMin?: number;
  /** The time, for "has the session closed". @default Date.now */
  now?: () => number;
  /** Receives the counts whenever they change. */
  onProgress?: (counts: JobCounts) => void;
  /** Notes for the user (snapshot refused, lists used …). */
  log?: (line: string) => void;
  /** Stops the sync: items in flight are given up, the store stays consistent. */
  signal?: AbortSignal;
}

/** A series that did not make it. */
export interface SyncFailure {
  /** Instrument kind. */
  symbol_type: SymbolType;
  /** Code. */
  code: string;
  /** Adjustment. */
  adjust: Adjust;
  /** Machine-readable reason. */
  error_code: string;
  /** Why. */
  error: string;
}

/** What a sync did. */
export interface SyncReport {
  /** The latest closed trading day, when known. */
  day?: string;
  /** Symbols in the universe. */
  symbols: number;
  /** Series that got bars. */
  updated: number;
  /** Bars written (appended plus whole histories). */
  barsAdded: number;
  /** Series filled whole (first fill and never-filled series). */
  filled: number;
  /** New listings fetched whole. */
  newListings: number;
  /** Symbols whose snapshot showed an ex-date (qfq re-fetched whole). */
  corporateActions: number;
  /** Series fetched for a gap. */
  gaps: number;
  /** Symbols the snapshot shows suspended (no bar added). */
  suspended: number;
  /** Symbols no longer listed, marked (never deleted). */
  gone: number;
  /** Series that answered an empty history (stored as nothing; asked again next time). */
  empty: number;
  /** Series already up to date. */
  current: number;
  /** Upstream requests asked of the workers, by endpoint and reason. */
  requests: Record<string, number>;
  /** Per kind, whether the snapshot was used, and why not. */
  snapshots: Record<string, string>;
  /** Failures. */
  failed: SyncFailure[];
  /** Wall time, ms. */
  elapsedMs: number;
}

interface Fetch {
  key: SeriesKey;
  reason: FetchReason;
  /** From this date (a gap), or whole when undefined. */
  from?: string;
}

interface Snapshot {
  rows: Map<string, SnapshotRow>;
  complete: boolean;
}

const CALENDAR_CODE = "000001";

/** Runs one sync over `client` (connected). Throws when the calendar cannot be read. */
export async function runSync(
  client: RequesterClient,
  options: SyncOptions,
): Promise<SyncReport> {
  const started = Date.now();
  const now = options.now ?? Date.now;
  const store = options.store;
  const adjusts: Adjust[] = [...new Set(options.adjust ?? ["qfq" as const])];
  const log = options.log ?? (() => {});
  const timeout = options.timeout ?? 300;
  const report: SyncReport = {
    symbols: 0,
    updated: 0,
    barsAdded: 0,
    filled: 0,
    newListings: 0,
    corporateActions: 0,
    gaps: 0,
    suspended: 0,
    gone: 0,
    empty: 0,
    current: 0,
    requests: {},
    snapshots: {},
    failed: [],
    elapsedMs: 0,
  };
  const count = (endpoint: string) =>
    report.requests[endpoint] = (report.requests[endpoint] ?? 0) + 1;

  // 1. The calendar.
  const known = await store.calendar();
  count("kline calendar");
  const calendarAnswer = await client.request("get_market", {
    symbol_type: "index",
    code: CALENDAR_CODE,
    adjust: "none",
    period: "daily",
    start_date: known.at(-1) ?? "1990-01-01",
  }, { timeout, signal: options.signal });
  const calendarResult = calendarAnswer.data as
    | { success?: boolean; data?: Bar[]; error?: string }
    | undefined;
  if (
    !calendarAnswer.success || calendarResult?.success !== true ||
    !Array.isArray(calendarResult.data) || calendarResult.data.length === 0
  ) {
    throw new Error(
      `Cannot read the trading calendar (index ${CALENDAR_CODE}): ${
        calendarResult?.error ?? calendarAnswer.error ?? "no bars"
      }`,
    );
  }
  const fresh = calendarResult.data.map((b) => b.date).filter((d) =>
    /^\d{4}-\d{2}-\d{2}$/.test(d)
  );
  const days = [...new Set([...known, ...fresh])].sort();
  const day = latestClosedDay(days, now());
  if (fresh.some((d) => !known.includes(d))) {
    // Only closed days: an intraday bar of today is not a trading day's close yet.
    await store.commit({
      calendar: fresh.filter((d) => day !== undefined && d <= day),
    });
  }
  if (day === undefined) {
    report.elapsedMs = Date.now() - started;
    return report;
  }
  report.day = day;
  const dayBefore = previousTradingDay(days, day);

  if (
    options.start !== undefined && await store.meta("fill_start") === undefined
  ) {
    // Served ranges before it are not held (the store front asks the workers for them).
    await store.commit({ meta: { fill_start: options.start } });
  }

  // 2. The universe and the snapshots.
  const seriesInfo = await store.seriesInfo();
  const symbolsKnown = await store.symbols();
  const lastBars = await store.lastBars();
  const universe = new Map<string, SymbolSpec>();
  for (const s of options.symbols ?? []) {
    universe.set(`${s.symbol_type}|${s.code}`, s);
  }
  const kinds = new Set<SymbolKind>(options.all ?? []);
  for (const s of universe.values()) kinds.add(s.symbol_type);
  const snapshots = new Map<SymbolKind, Snapshot>();
  const listedNames: StoreChanges["symbols"] = [];
  for (const kind of kinds) {
    const wanted = options.all?.includes(kind)
      ? Infinity
      : [...universe.values()].filter((s) => s.symbol_type === kind).length;
    if (wanted < (options.snapshotMin ?? 20)) {
      report.snapshots[kind] = `not asked (${wanted} symbols)`;
      continue;
    }
    const snapshot = await takeSnapshot(client, kind, timeout, count, options);
    snapshots.set(kind, snapshot.snapshot);
    report.snapshots[kind] = snapshot.note;
    if (options.all?.includes(kind)) {
      if (snapshot.snapshot.complete) {
        for (const row of snapshot.snapshot.rows.values()) {
          universe.set(`${kind}|${row.code}`, {
            code: row.code,
            symbol_type: kind,
          });
          listedNames.push({
            symbolType: kind,
            code: row.code,
            name: row.name,
          });
        }
      } else {
        log(
          `${kind}: snapshot incomplete; listing symbols through list_symbols`,
        );
        count("clist list_symbols");
        for (const s of await listSymbols(client, kind, timeout)) {
          universe.set(`${kind}|${s.code}`, s);
        }
      }
    }
  }
  report.symbols = universe.size;

  // Whether each snapshot may add bars at all.
  const usable = new Map<SymbolKind, boolean>();
  for (const [kind, snapshot] of snapshots) {
    if (!snapshot.complete) {
      usable.set(kind, false);
      continue;
    }
    const latest = Math.max(
      0,
      ...[...snapshot.rows.values()].map((r) => r.updated_at ?? 0),
    );
    const closeOfDay = Date.parse(`${day}T07:00:00Z`);
    let note: string | undefined;
    if (latest < closeOfDay) {
      note = latest > 0 && shanghaiDate(latest) === day
        ? `taken before the close of ${day} (updated ${
          new Date(latest + 8 * 3_600_000).toISOString().slice(11, 16)
        } Shanghai): adds nothing`
        : `older than the latest trading day ${day} (updated ${
          latest > 0 ? shanghaiDate(latest) : "never"
        }): adds nothing`;
    } else if (shanghaiDate(latest) !== day) {
      note = `from ${
        shanghaiDate(latest)
      }, a day the calendar does not hold yet: adds nothing`;
    }
    usable.set(kind, note === undefined);
    if (note !== undefined) {
      report.snapshots[kind] = `snapshot ${note}`;
      log(`${kind}: snapshot ${note}`);
    }
  }

  // Symbols gone from a complete list: marked, never deleted.
  const gone: StoreChanges["gone"] = [];
  for (const info of symbolsKnown.values()) {
    const snapshot = snapshots.get(info.symbolType as SymbolKind);
    if (
      options.all?.includes(info.symbolType as SymbolKind) &&
      snapshot?.complete && !snapshot.rows.has(info.code) &&
      info.goneSince === undefined
    ) {
      gone.push({ symbolType: info.symbolType, code: info.code, date: day });
    }
  }
  report.gone = gone.length;

  // 3. What each series needs.
  const append: NonNullable<StoreChanges["append"]> = [];
  const raw: NonNullable<StoreChanges["raw"]> = [];
  const fetches: Fetch[] = [];
  const firstSync = (await store.meta("last_sync_day")) === undefined;
  for (const spec of universe.values()) {
    const kind = spec.symbol_type;
    const row = snapshots.get(kind)?.rows.get(spec.code);
    const rowBar = usable.get(kind) && row ? barFromRow(row, day) : undefined;
    const known = symbolsKnown.get(`${kind}|${spec.code}`);
    const rawLast = known?.raw;
    const exDate = rowBar !== undefined && rawLast !== undefined &&
      rawLast.date === dayBefore &&
      row!.prev_close !== undefined && row!.prev_close !== rawLast.close;
    // The raw bar of the day comes from the snapshot whether or not a series takes it.
    if (rowBar !== undefined && (rawLast === undefined || rawLast.date < day)) {
      raw.push({ symbolType: kind, code: spec.code, bar: rowBar });
    }
    if (row !== undefined && usable.get(kind) && rowBar === undefined) {
      report.suspended++;
    }
    if (exDate) report.corporateActions++;
    for (const adjust of adjusts) {
      const key: SeriesKey = { symbolType: kind, code: spec.code, adjust };
      const info = seriesInfo.get(seriesId(key));
      if (info === undefined) {
        const isNew = !firstSync && known === undefined;
        fetches.push({ key, reason: isNew ? "new_listing" : "fill" });
        continue;
      }
      if (info.lastDate >= day) {
        report.current++;
        continue;
      }
      if (row !== undefined && usable.get(kind) && rowBar === undefined) {
        continue; // suspended today: nothing to add, nothing to ask
      }
      if (rowBar === undefined || info.lastDate !== dayBefore) {
        // No usable quote, or a gap: ask the K-line from the last bar (qfq: whole, since an
        // ex-date inside the gap changes its history).
        fetches.push({
          key,
          reason: "gap",
          from: adjust === "qfq" ? undefined : info.lastDate,
        });
        continue;
      }
      const last = lastBars.get(seriesId(key));
      if (rawLast === undefined || rawLast.date !== dayBefore || !last) {
        // The previous close cannot be checked: an ex-date would go unnoticed.
        fetches.push({
          key,
          reason: "gap",
          from: adjust === "qfq" ? undefined : info.lastDate,
        });
        continue;
      }
      if (exDate && adjust === "qfq") {
        fetches.push({ key, reason: "corporate_action" });
        continue;
      }
      if (exDate && adjust === "hfq") {
        fetches.push({ key, reason: "corporate_action", from: info.lastDate });
        continue;
      }
      if (adjust === "hfq") {
        const shift = pureShift(last, rawLast);
        if (shift === undefined) {
          fetches.push({ key, reason: "hfq_unverified", from: info.lastDate });
          continue;
        }
        append.push({ key, bars: [derive(shifted(rowBar, shift), info)] });
        continue;
      }
      // Unadjusted, or qfq on a day without an ex-date: the day's bar is the raw one.
      append.push({ key, bars: [derive(rowBar, info)] });
    }
  }

  // The snapshot's bars, names and marks land together.
  await store.commit({
    append,
    raw,
    symbols: listedNames,
    gone,
  });
  for (const a of append) {
    report.barsAdded += a.bars.length;
    report.updated++;
  }

  // 4. K-line fetches, streamed.
  let done = 0;
  const progress = () =>
    options.onProgress?.({
      done,
      failed: report.failed.length,
      total: fetches.length,
    });
  progress();
  const size = Math.max(1, options.batchSize ?? 200);
  const queue = [...fetches];
  const lane = async () => {
    while (queue.length > 0 && !options.signal?.aborted) {
      const batch = queue.splice(0, size);
      await fetchBatch(batch);
    }
  };
  const fetchBatch = async (batch: Fetch[]) => {
    const items = batch.map((f) => {
      count(`kline ${f.reason}`);
      const item: Record<string, unknown> = {
        symbol_type: f.key.symbolType,
        code: f.key.code,
        adjust: f.key.adjust,
        period: "daily",
      };
      const from = f.from ?? options.start;
      if (from !== undefined) item.start_date = from;
      return item;
    });
    const seen = new Set<number>();
    const stream = client.stream("get_markets", items, {
      timeout,
      signal: options.signal,
    });
    let lost: unknown;
    try {
      for await (const item of stream) {
        if (seen.has(item.index) || batch[item.index] === undefined) continue;
        seen.add(item.index);
        await settle(batch[item.index], item.result);
        done++;
        progress();
      }
      await stream.answer;
    } catch (error) {
      lost = error;
    }
    await flush();
    batch.forEach((f, i) => {
      if (seen.has(i)) return;
      fail(
        f,
        lost === undefined
          ? "WORKER_ERROR"
          : options.signal?.aborted
          ? "CANCELLED"
          : "CONNECTION_CLOSED",
        lost === undefined
          ? "The server finished the batch without this item"
          : (lost as Error).message,
      );
      done++;
    });
    progress();
  };
  const fail = (f: Fetch, code: string, error: string) =>
    report.failed.push({
      symbol_type: f.key.symbolType,
      code: f.key.code,
      adjust: f.key.adjust,
      error_code: code,
      error,
    });
  const settle = async (f: Fetch, result: unknown) => {
    const r = (result ?? {}) as {
      success?: boolean;
      data?: Bar[];
      name?: string;
      error?: string;
      error_code?: string;
      empty_history?: boolean;
    };
    if (r.success !== true || !Array.isArray(r.data)) {
      fail(f, r.error_code ?? "WORKER_ERROR", r.error ?? "Bad answer");
      return;
    }
    const bars = r.data;
    const info = seriesInfo.get(seriesId(f.key));
    if (bars.length === 0 && f.from === undefined) {
      // Not "done": the next sync asks again.
      report.empty++;
      return;
    }
    const problem = checkBars(bars);
    if (problem !== undefined) {
      fail(f, "SUSPICIOUS", problem);
      return;
    }
    const changes: StoreChanges = {};
    if (f.from === undefined) {
      if (info !== undefined && bars.length < info.bars) {
        fail(
          f,
          "SUSPICIOUS",
          `The history shrank from ${info.bars} to ${bars.length} bars: not stored`,
        );
        return;
      }
      changes.replace = [{ key: f.key, bars }];
      if (f.reason === "new_listing") report.newListings++;
      else if (f.reason === "fill") report.filled++;
      else if (f.reason === "gap") report.gaps++;
      report.barsAdded += bars.length - (info?.bars ?? 0);
    } else {
      const last = lastBars.get(seriesId(f.key));
      const overlap = bars.find((b) => b.date === f.from);
      if (last !== undefined && (!overlap || !sameBar(overlap, last))) {
        // The stored end differs from the upstream's: fetch the whole series next time.
        fail(
          f,
          "SUSPICIOUS",
          `The bar of ${f.from} differs from the stored one: not appended`,
        );
        return;
      }
      const added = bars.filter((b) => b.date > f.from!);
      changes.append = [{ key: f.key, bars: added }];
      report.barsAdded += added.length;
      if (f.reason === "gap") report.gaps++;
    }
    const lastBar = bars.at(-1)!;
    if (f.key.adjust !== "hfq") {
      // qfq's latest bar is unadjusted by definition (it anchors on the latest price).
      const bar: RawLast = {
        date: lastBar.date,
        open: lastBar.open,
        high: lastBar.high,
        low: lastBar.low,
        close: lastBar.close,
      };
      changes.raw = [{ symbolType: f.key.symbolType, code: f.key.code, bar }];
    }
    if (r.name && !symbolsKnown.has(`${f.key.symbolType}|${f.key.code}`)) {
      changes.symbols = [{
        symbolType: f.key.symbolType,
        code: f.key.code,
        name: r.name,
      }];
    }
    pending.replace.push(...changes.replace ?? []);
    pending.append.push(...changes.append ?? []);
    pending.raw.push(...changes.raw ?? []);
    pending.symbols.push(...changes.symbols ?? []);
    pendingBars += bars.length;
    report.updated++;
    if (
      pending.replace.length + pending.append.length >= 64 ||
      pendingBars >= 200_000
    ) {
      await flush();
    }
  };
  // Fetched series are written in groups, each one transaction: a kill loses at most a group,
  // which the next sync fetches again.
  let pending = emptyChanges();
  let pendingBars = 0;
  const flush = async () => {
    const changes = pending;
    pending = emptyChanges();
    pendingBars = 0;
    if (changes.replace.length + changes.append.length > 0) {
      await store.commit(changes);
    }
  };
  await Promise.all([lane(), lane()]);
  for (const f of queue) fail(f, "CANCELLED", "Sync interrupted");

  if (report.failed.length === 0 && !options.signal?.aborted) {
    await store.commit({ meta: { last_sync_day: day } });
    // One series' bars together again once enough were written out of order (a first fill,
    // a few weeks of daily bars): reads of one series then touch one row group.
    try {
      await store.compactIfScattered();
    } catch {
      // Sorting is one transaction: when it fails (DuckDB out of its memory limit) the table
      // stays as it was, every bar in place, only reads stay slower; the next sync tries again.
    }
  }
  report.elapsedMs = Date.now() - started;
  return report;
}

function emptyChanges() {
  return {
    replace: [] as NonNullable<StoreChanges["replace"]>,
    append: [] as NonNullable<StoreChanges["append"]>,
    raw: [] as NonNullable<StoreChanges["raw"]>,
    symbols: [] as NonNullable<StoreChanges["symbols"]>,
  };
}

async function takeSnapshot(
  client: RequesterClient,
  kind: SymbolKind,
  timeout: number,
  count: (endpoint: string) => void,
  options: SyncOptions,
): Promise<{ snapshot: Snapshot; note: string }> {
  const rows = new Map<string, SnapshotRow>();
  const ask = async (page: number): Promise<SnapshotPage> => {
    count("clist snapshot");
    const answer = await client.request("get_snapshot", {
      symbol_type: kind,
      page,
    }, { timeout, signal: options.signal });
    const data = answer.data as SnapshotPage | { error?: string } | undefined;
    if (!answer.success || (data as SnapshotPage)?.success !== true) {
      throw new Error(
        (data as { error?: string })?.error ?? answer.error ?? "failed",
      );
    }
    return data as SnapshotPage;
  };
  try {
    const first = await ask(1);
    const pages = Math.ceil(first.total / first.page_size);
    const rest = await Promise.all(
      Array.from({ length: Math.max(0, pages - 1) }, (_, i) => ask(i + 2)),
    );
    for (const page of [first, ...rest]) {
      if (page.total !== first.total) {
        throw new Error(
          `the list changed while it was read (${first.total} then ${page.total})`,
        );
      }
      for (const row of page.rows) rows.set(row.code, row);
    }
    if (rows.size !== first.total) {
      throw new Error(`${rows.size} distinct codes of ${first.total}`);
    }
    return {
      snapshot: { rows, complete: true },
      note: `${pages} pages, ${rows.size} symbols`,
    };
  } catch (error) {
    if (options.signal?.aborted) throw error;
    options.log?.(
      `${kind}: snapshot not usable: ${(error as Error).message}`,
    );
    return {
      snapshot: { rows: new Map(), complete: false },
      note: `not usable: ${(error as Error).message}`,
    };
  }
}

/** The day's bar from a snapshot row, or `undefined` when a field shows `-` or it is stale. */
function barFromRow(row: SnapshotRow, day: string): Bar | undefined {
  const { open, high, low, close, volume, updated_at } = row;
  if (
    open === undefined || high === undefined || low === undefined ||
    close === undefined || volume === undefined || updated_at === undefined ||
    shanghaiDate(updated_at) !== day ||
    updated_at < Date.parse(`${day}T07:00:00Z`)
  ) return undefined;
  if (!(low <= Math.min(open, close) && high >= Math.max(open, close))) {
    return undefined;
  }
  const bar: Bar = { date: day, open, high, low, close, volume };
  if (row.amount !== undefined) bar.amount = row.amount;
  if (row.turnover !== undefined) bar.turnover = row.turnover;
  return bar;
}

/** `bar` with amplitude, change and pct computed against the series' last close. */
function derive(bar: Bar, info: SeriesInfo): Bar {
  return deriveBar(bar, info.lastClose);
}

/** hfq − raw when it is one shift over open, high, low and close; else `undefined`. */
function pureShift(hfq: Bar, raw: RawLast): number | undefined {
  if (hfq.date !== raw.date) return undefined;
  const shift = round(hfq.close - raw.close, 4);
  for (const field of ["open", "high", "low"] as const) {
    if (round(hfq[field] - raw[field], 4) !== shift) return undefined;
  }
  return shift;
}

function shifted(bar: Bar, shift: number): Bar {
  return {
    ...bar,
    open: round(bar.open + shift, 4),
    high: round(bar.high + shift, 4),
    low: round(bar.low + shift, 4),
    close: round(bar.close + shift, 4),
  };
}

/** Why a series must not be stored, or `undefined`. */
function checkBars(bars: readonly Bar[]): string | undefined {
  let previous = "";
  for (const bar of bars) {
    if (!/^\d{4}-\d{2}-\d{2}$/.test(bar.date ?? "")) {
      return `Bad bar date ${JSON.stringify(bar.date)}`;
    }
    if (bar.date <= previous) {
      return `Bars out of order at ${bar.date}`;
    }
    for (const f of ["open", "high", "low", "close", "volume"] as const) {
      if (typeof bar[f] !== "number" || !Number.isFinite(bar[f])) {
        return `Bad ${f} on ${bar.date}`;
      }
    }
    previous = bar.date;
  }
  return undefined;
}

function round(value: number, digits: number): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}

/** The summary a sync prints. */
export function syncSummary(report: SyncReport): string {
  const lines = [
    `day         ${report.day ?? "none closed yet"}`,
    `symbols     ${report.symbols}`,
    `updated     ${report.updated} series, ${report.barsAdded} bars added`,
    `filled      ${report.filled} whole histories, ${report.newListings} new listings`,
    `ex-dates    ${report.corporateActions} (qfq re-fetched whole)`,
    `gaps        ${report.gaps} filled`,
    `suspended   ${report.suspended}; gone ${report.gone}; empty ${report.empty}; current ${report.current}`,
    `failed      ${report.failed.length}`,
    `requests    ${
      Object.values(report.requests).reduce((a, b) => a + b, 0)
    } upstream: ${
      Object.entries(report.requests).sort().map(([k, v]) => `${k} ${v}`).join(
        ", ",
      )
    }`,
  ];
  for (const [kind, note] of Object.entries(report.snapshots)) {
    lines.push(`snapshot    ${kind}: ${note}`);
  }
  lines.push(`time        ${(report.elapsedMs / 1000).toFixed(1)} s`);
  for (const f of report.failed.slice(0, 20)) {
    lines.push(
      `  ${f.symbol_type} ${f.code} ${f.adjust} ${f.error_code} ${f.error}`,
    );
  }
  if (report.failed.length > 20) {
    lines.push(`  … and ${report.failed.length - 20} more`);
  }
  return lines.join("\n") + "\n";
}
