/**
 * What the market store holds and takes, in the shapes its callers use: a series' key and
 * statistics, a symbol, the changes one commit writes, a `store status` row.
 *
 * @module
 */

import type { Adjust, Bar, SymbolType } from "../market/types.ts";

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

/** `${symbolType}|${code}|${adjust}`: the map key of a series. */
export function seriesId(key: SeriesKey): string {
  return `${key.symbolType}|${key.code}|${key.adjust}`;
}
