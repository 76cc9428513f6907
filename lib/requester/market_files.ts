/**
 * Market series to files: CSV (English or akshare's Chinese headers), JSON lines or JSON, one
 * file per symbol, written atomically so that a file under its final name is always complete.
 *
 * @module
 */

import { stringify } from "npm:csv-stringify@6.9.0/sync";
import { BAR_FIELDS } from "../market/types.ts";

export { BAR_FIELDS };

/** File formats of a market job. */
export type MarketFileFormat = "csv" | "jsonl" | "json";

/** Column naming: English, or akshare's Chinese headers (so pandas code written for akshare works). */
export type ColumnStyle = "english" | "akshare";

/**
 * akshare's columns: each bar field with its header, in akshare's order (the close before the
 * high and the low).
 */
const AKSHARE_COLUMNS: readonly (readonly [field: string, header: string])[] = [
  ["date", "日期"],
  ["open", "开盘"],
  ["close", "收盘"],
  ["high", "最高"],
  ["low", "最低"],
  ["volume", "成交量"],
  ["amount", "成交额"],
  ["amplitude", "振幅"],
  ["pct_change", "涨跌幅"],
  ["change", "涨跌额"],
  ["turnover", "换手率"],
];

const AKSHARE = {
  fields: AKSHARE_COLUMNS.map(([field]) => field),
  names: AKSHARE_COLUMNS.map(([, header]) => header),
};

/**
 * The bar fields in the order a column style writes them, with their names: English names in
 * the one order every English writer uses (`BAR_FIELDS`), akshare's names in akshare's order.
 */
export function columnsOf(
  style: ColumnStyle,
): { fields: readonly string[]; names: readonly string[] } {
  return style === "akshare"
    ? AKSHARE
    : { fields: BAR_FIELDS, names: BAR_FIELDS };
}

/** The file name of one symbol's series: kind, code, period and adjustment, so runs never clash. */
export function marketFileName(
  symbol: { symbol_type: string; code: string },
  params: { period?: string; adjust?: string },
  format: MarketFileFormat,
): string {
  const adjust = params.adjust === undefined
    ? "qfq"
    : params.adjust === ""
    ? "none"
    : params.adjust;
  return `${symbol.symbol_type}_${symbol.code}_${
    params.period ?? "daily"
  }_${adjust}.${format}`;
}

type Bar = Record<string, unknown>;

/**
 * Renders one successful `get_market` result. CSV and JSON lines hold the bars only (a missing
 * optional field is an empty cell, or absent); JSON holds the whole result, bars included.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderMarketFile } from "./market_files.ts";
 * const result = { success: true, code: "510300", data: [{ date: "2025-01-02", open: 1, high: 2, low: 0.5, close: 1.5, volume: 10 }] };
 * assert.equal(
 *   renderMarketFile(result, "csv"),
 *   "date,open,high,low,close,volume,amount,amplitude,pct_change,change,turnover\n2025-01-02,1,2,0.5,1.5,10,,,,,\n",
 * );
 * assert.equal(
 *   renderMarketFile(result, "csv", "akshare"),
 *   "日期,开盘,收盘,最高,最低,成交量,成交额,振幅,涨跌幅,涨跌额,换手率\n2025-01-02,1,1.5,2,0.5,10,,,,,\n",
 * );
 * ```
 */
export function renderMarketFile(
  result: { data?: unknown; code?: unknown; symbol_type?: unknown },
  format: MarketFileFormat,
  columns: ColumnStyle = "english",
  options: RenderOptions = {},
): string {
  const bars = (Array.isArray(result.data) ? result.data : []) as Bar[];
  if (format === "json") return JSON.stringify(result) + "\n";
  const { fields, names } = columnsOf(columns);
  const symbol = options.symbol;
  if (format === "jsonl") {
    let out = "";
    for (const bar of bars) {
      const row: Record<string, unknown> = symbol
        ? { symbol_type: symbol.symbol_type, code: symbol.code }
        : {};
      fields.forEach((field, i) => {
        if (bar[field] !== undefined) row[names[i]] = bar[field];
      });
      out += JSON.stringify(row) + "\n";
    }
    return out;
  }
  const lead = symbol ? [symbol.symbol_type, symbol.code] : [];
  return stringify(
    bars.map((
      bar,
    ) => [...lead, ...fields.map((field) => bar[field] ?? "")]),
    {
      header: options.header ?? true,
      columns: [...(symbol ? ["symbol_type", "code"] : []), ...names],
    },
  );
}

/** Choices of {@linkcode renderMarketFile} for many series in one stream (stdout). */
export interface RenderOptions {
  /** Prefix each row with the symbol's kind and code. @default none */
  symbol?: { symbol_type: string; code: string };
  /** Write the CSV header line. @default true */
  header?: boolean;
}

let tempCounter = 0;

/**
 * Writes `text` to `path` through a temporary file in the same folder and a rename, so readers
 * (and `--resume`) never see half a file. The temporary name starts with `.` and ends `.tmp`.
 */
export async function writeFileAtomic(
  path: string,
  text: string | Uint8Array,
): Promise<void> {
  const slash = path.lastIndexOf("/");
  const dir = slash >= 0 ? path.slice(0, slash + 1) : "";
  const base = path.slice(slash + 1);
  const temp = `${dir}.${base}.${Deno.pid}-${++tempCounter}.tmp`;
  try {
    if (typeof text === "string") await Deno.writeTextFile(temp, text);
    else await Deno.writeFile(temp, text);
    await Deno.rename(temp, path);
  } catch (error) {
    await Deno.remove(temp).catch(() => {});
    throw error;
  }
}

/** Removes temporary files an interrupted run left in `dir`; returns how many. */
export async function removeStaleTemps(dir: string): Promise<number> {
  let n = 0;
  for await (const entry of Deno.readDir(dir)) {
    if (
      entry.isFile && entry.name.startsWith(".") &&
      /\.\d+-\d+\.tmp$/.test(entry.name)
    ) {
      const pid = Number(/\.(\d+)-\d+\.tmp$/.exec(entry.name)![1]);
      if (pid === Deno.pid) continue;
      await Deno.remove(`${dir}/${entry.name}`).catch(() => {});
      n++;
    }
  }
  return n;
}
