/**
 * The market store: a local DuckDB file of daily bars kept current by `requester.ts sync`.
 *
 * @module
 */

export { DEFAULT_STORE_PATH, MarketStore } from "./store.ts";
export { type MarketStoreOptions, StoreLockedError } from "./database.ts";
export * from "./types.ts";
export {
  CALENDAR_INDEX,
  closeOf,
  holidaysBetween,
  latestClosedDay,
  previousTradingDay,
} from "./calendar.ts";
