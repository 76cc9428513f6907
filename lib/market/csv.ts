/**
 * The CSV provider: a folder of the user's own daily bars, one file per code.
 *
 * File names: `<code>.csv`, or `<symbol_type>_<code>[_...].csv` (akshare-style exports such as
 * `etf_510300_daily_qfq.csv`). When a name carries `qfq`, `hfq` or `none` after the code, the
 * file serves only that adjustment; otherwise it serves any. Columns are found by header name,
 * English (`date,open,high,low,close,volume,amount,...`) or akshare's Chinese
 * (`日期,开盘,收盘,最高,最低,成交量,成交额,振幅,涨跌幅,涨跌额,换手率`); others are ignored.
 *
 * @module
 */

// @ts-types="./_csv_parse_types.d.ts"
import { parse } from "npm:csv-parse@7.0.3/sync";
import { aggregateBars } from "./aggregate.ts";
import { UnknownCodeError, UpstreamUnavailableError } from "./errors.ts";
import { numberOf } from "./_http.ts";
import type { Bar, MarketProvider, Series, SeriesQuery } from "./types.ts";

/** Header names (English and akshare Chinese) per bar field. */
const COLUMNS: Record<keyof Bar, readonly string[]> = {
  date: ["date", "日期", "trade_date"],
  open: ["open", "开盘"],
  close: ["close", "收盘"],
  high: ["high", "最高"],
  low: ["low", "最低"],
  volume: ["volume", "成交量", "vol"],
  amount: ["amount", "成交额"],
  amplitude: ["amplitude", "振幅"],
  pct_change: ["pct_change", "涨跌幅", "pct_chg"],
  change: ["change", "涨跌额"],
  turnover: ["turnover", "换手率"],
};
const REQUIRED = ["date", "open", "close", "high", "low", "volume"] as const;
const ADJUST_TOKENS = new Set(["qfq", "hfq", "none"]);

/** Options for {@linkcode createCsvProvider}. */
export interface CsvProviderOptions {
  /** The folder holding the CSV files. */
  dir: string | URL;
}

/** Creates the CSV provider. Weekly and monthly bars are aggregated from the daily files. */
export function createCsvProvider(options: CsvProviderOptions): MarketProvider {
  const dir = options.dir;
  const label = dir instanceof URL ? dir.pathname : dir;

  async function fetchSeries(
    query: SeriesQuery,
    _signal: AbortSignal,
  ): Promise<Series> {
    const file = await findFile(dir, query);
    if (file === undefined) {
      throw new UnknownCodeError(
        `Unknown ${query.symbolType} code "${query.code}": no CSV file for adjust "${query.adjust}" in "${label}"`,
      );
    }
    const path = dir instanceof URL
      ? new URL(file, dir.href.endsWith("/") ? dir : `${dir.href}/`)
      : `${dir.replace(/\/+$/, "")}/${file}`;
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (error) {
      throw new UpstreamUnavailableError(
        label,
        `Cannot read CSV file "${file}": ${error}`,
        {
          cause: error,
        },
      );
    }
    const daily = parseCsvBars(text, file);
    return {
      name: query.code,
      source: "csv",
      bars: aggregateBars(daily, query.period),
    };
  }

  return { name: "csv", host: undefined, fetchSeries };
}

async function findFile(
  dir: string | URL,
  query: SeriesQuery,
): Promise<string | undefined> {
  let exact: string | undefined;
  let any: string | undefined;
  const pattern = new RegExp(
    `^(?:${query.symbolType}_)?${query.code}((?:_[^_.]+)*)\\.csv$`,
    "i",
  );
  try {
    for await (const entry of Deno.readDir(dir)) {
      const match = entry.isFile ? pattern.exec(entry.name) : null;
      if (match === null) continue;
      const tokens = match[1].toLowerCase().split("_").filter(Boolean);
      if (tokens.includes("weekly") || tokens.includes("monthly")) continue;
      const adjust = tokens.find((t) => ADJUST_TOKENS.has(t));
      if (adjust === query.adjust) exact ??= entry.name;
      else if (adjust === undefined) any ??= entry.name;
    }
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
  return exact ?? any;
}

/**
 * Parses CSV text into daily bars, ascending by date. Columns are matched by header name.
 *
 * @throws {UpstreamUnavailableError} when a required column is missing or a row is malformed.
 */
export function parseCsvBars(text: string, file = "<csv>"): Bar[] {
  let rows: string[][];
  try {
    // A real parser, because exports quote names and numbers that hold commas ("1,234.5").
    rows = parse(text, {
      bom: true,
      trim: true,
      skip_empty_lines: true,
      relax_column_count: true,
    });
  } catch (error) {
    throw new UpstreamUnavailableError(
      "csv",
      `Cannot read CSV file "${file}": ${(error as Error).message}`,
      { cause: error },
    );
  }
  const header = (rows[0] ?? []).map((h) => h.toLowerCase());
  const index = new Map<keyof Bar, number>();
  for (
    const [field, names] of Object.entries(COLUMNS) as [
      keyof Bar,
      readonly string[],
    ][]
  ) {
    const i = header.findIndex((h) => names.includes(h));
    if (i >= 0) index.set(field, i);
  }
  for (const field of REQUIRED) {
    if (!index.has(field)) {
      throw new UpstreamUnavailableError(
        "csv",
        `Cannot read CSV file "${file}": no "${field}" column in header ${
          JSON.stringify((rows[0] ?? []).join(","))
        }`,
      );
    }
  }
  const bars = new Map<string, Bar>();
  for (let n = 1; n < rows.length; n++) {
    const cells = rows[n];
    const date = normaliseDate(cells[index.get("date")!]);
    const bar: Partial<Bar> = { date };
    for (const [field, i] of index) {
      if (field !== "date") {
        const value = numberOf(cells[i]?.replaceAll(",", ""));
        if (value !== undefined) {
          (bar as Record<string, unknown>)[field] = value;
        }
      }
    }
    if (date === undefined || REQUIRED.some((f) => bar[f] === undefined)) {
      throw new UpstreamUnavailableError(
        "csv",
        `Cannot read CSV file "${file}": row ${n + 1} ${
          JSON.stringify(cells.join(","))
        } is incomplete`,
      );
    }
    bars.set(date, orderFields(bar as Bar));
  }
  return [...bars.values()].sort((a, b) =>
    a.date < b.date ? -1 : a.date > b.date ? 1 : 0
  );
}

function orderFields(bar: Bar): Bar {
  const { date, open, high, low, close, volume, ...rest } = bar;
  return { date, open, high, low, close, volume, ...rest };
}

function normaliseDate(text: string | undefined): string | undefined {
  const match = /^(\d{4})[-/]?(\d{1,2})[-/]?(\d{1,2})(?:[ T].*)?$/.exec(
    text ?? "",
  );
  if (match === null) return undefined;
  return `${match[1]}-${match[2].padStart(2, "0")}-${
    match[3].padStart(2, "0")
  }`;
}
