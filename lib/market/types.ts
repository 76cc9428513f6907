/**
 * The shapes shared by every part of the market library: parameters, bars, series, results.
 *
 * @module
 */

/** What kind of instrument a code names; decides Eastmoney's market prefix on collisions. */
export type SymbolType = "etf" | "stock" | "index";

/** Bar lengths of a day or more. */
export type DayPeriod = "daily" | "weekly" | "monthly";

/** Intraday bar lengths; Eastmoney keeps only a recent window of them (docs/market.md). */
export type MinutePeriod = "1m" | "5m" | "15m" | "30m" | "60m";

/** Bar length. */
export type Period = DayPeriod | MinutePeriod;

/** Price adjustment: forward (`qfq`), backward (`hfq`) or none. */
export type Adjust = "qfq" | "hfq" | "none";

/** `get_market` params after validation: every field present and normalised. */
export interface MarketParams {
  /** Instrument kind. */
  symbol_type: SymbolType;
  /** Six-digit exchange code, e.g. `"510300"`. */
  code: string;
  /** Bar length. */
  period: Period;
  /** First date wanted, `YYYY-MM-DD`, inclusive. */
  start_date: string;
  /** Last date wanted, `YYYY-MM-DD`, inclusive. */
  end_date: string;
  /** Price adjustment. */
  adjust: Adjust;
}

/**
 * One K-line bar. Volume is in lots (手, 100 shares) and amount in CNY, as Eastmoney reports
 * them. Optional fields are omitted, never null, when the provider does not know them.
 */
export interface Bar {
  /**
   * Trading day (for weekly/monthly: the period's last trading day), `YYYY-MM-DD`; for minute
   * bars the bar's end time in Shanghai, `YYYY-MM-DD HH:MM`.
   */
  date: string;
  /** Opening price. */
  open: number;
  /** Highest price. */
  high: number;
  /** Lowest price. */
  low: number;
  /** Closing price. */
  close: number;
  /** Traded volume in lots. */
  volume: number;
  /** Traded value in CNY. */
  amount?: number;
  /** (high − low) / previous close, in percent. */
  amplitude?: number;
  /** Change of the close against the previous close, in percent. */
  pct_change?: number;
  /** Change of the close against the previous close. */
  change?: number;
  /** Turnover rate, in percent. */
  turnover?: number;
}

/** The bar fields every bar has besides its date: the prices as OHLC, then volume. */
export const REQUIRED_BAR_FIELDS = [
  "open",
  "high",
  "low",
  "close",
  "volume",
] as const;

/** The bar fields a source may not give, in the column order of bars written out in English. */
export const OPTIONAL_BAR_FIELDS = [
  "amount",
  "amplitude",
  "pct_change",
  "change",
  "turnover",
] as const;

/**
 * The bar fields in their one column order, for every writer of bars in English (HTTP CSV,
 * market files, JSON lines): the date, the required fields, the optional ones. Formats we do not
 * choose keep their own order: the store's file (`STORE_BAR_FIELDS`), Eastmoney's K-line lines.
 */
export const BAR_FIELDS: readonly (keyof Bar)[] = [
  "date",
  ...REQUIRED_BAR_FIELDS,
  ...OPTIONAL_BAR_FIELDS,
];

/** What a provider returns: a whole series from one source, oldest bar first. */
export interface Series {
  /** Instrument name as the provider knows it. */
  name: string;
  /** Provider name that produced every bar of the series. */
  source: string;
  /** Bars, ascending by date. */
  bars: Bar[];
}

/** What a provider is asked for: the whole history of one series. */
export interface SeriesQuery {
  /** Instrument kind. */
  symbolType: SymbolType;
  /** Six-digit code. */
  code: string;
  /** Bar length. */
  period: Period;
  /** Price adjustment. */
  adjust: Adjust;
}

/** A source of K-lines: Eastmoney, Tencent, a CSV folder, synthetic demo data. */
export interface MarketProvider {
  /** The provider's name, used as the bars' `source`. */
  readonly name: string;
  /** The upstream host name, or `undefined` for local providers that cannot be blocked. */
  readonly host: string | undefined;
  /** The periods it serves. @default daily, weekly and monthly */
  readonly periods?: readonly Period[];
  /** Loads the whole history of a series. Rejects with one of the market error classes. */
  fetchSeries(query: SeriesQuery, signal: AbortSignal): Promise<Series>;
}

/** Error codes of a failed `get_market` item. */
export type MarketErrorCode =
  | "INVALID_PARAMS"
  | "UNKNOWN_CODE"
  | "UPSTREAM_BLOCKED"
  | "UPSTREAM_UNAVAILABLE"
  | "INTERNAL_ERROR";

/** A successful `get_market` answer (SPEC §4). */
export interface MarketSuccess {
  /** Always `true`. */
  success: true;
  /** The requested code. */
  code: string;
  /** Instrument name from the provider. */
  name: string;
  /** Instrument kind. */
  symbol_type: SymbolType;
  /** Bar length. */
  period: Period;
  /** Price adjustment. */
  adjust: Adjust;
  /** Provider that produced the series. */
  source: string;
  /** Whether the series came from the cache. */
  cached: boolean;
  /** Bars within the requested range; empty when the range holds no trading day. */
  data: Bar[];
  /**
   * Present (`true`) when the provider has no bar at all for the code, not just none in the
   * range. Such an answer is never cached: it may be a refusal in disguise.
   */
  empty_history?: true;
}

/** A failed `get_market` item: tells the broker whether another worker may do better. */
export interface MarketFailure {
  /** Always `false`. */
  success: false;
  /** The requested code as given (empty when none was given). */
  code: string;
  /** A human-readable message. */
  error: string;
  /** Machine-readable reason. */
  error_code: MarketErrorCode;
  /** Whether retrying on another worker (another IP) may succeed. */
  retriable: boolean;
  /**
   * For `UPSTREAM_BLOCKED`: when this worker may call the host again (its cool-down ends or its
   * budget refills), epoch ms. Another worker may be able to fetch the item now.
   */
  retry_at?: number;
}

/** One `get_market` result. */
export type MarketResult = MarketSuccess | MarketFailure;
