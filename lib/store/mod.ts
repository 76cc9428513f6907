/**
 * The market store: a local DuckDB file of daily bars kept current by `requester.ts sync`.
 *
 * @module
 */

export {
  DEFAULT_STORE_PATH,
  MarketStore,
  seriesId,
  StoreLockedError,
} from "./store.ts";
export type {
  MarketStoreOptions,
  RawLast,
  SeriesInfo,
  SeriesKey,
  StoreChanges,
  StoreStatusRow,
  SymbolInfo,
} from "./store.ts";
export {
  CALENDAR_INDEX,
  closeOf,
  holidaysBetween,
  latestClosedDay,
  previousTradingDay,
} from "./calendar.ts";
