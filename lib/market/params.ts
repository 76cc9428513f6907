/**
 * Validation of `get_market` params, one specific message per mistake.
 *
 * @module
 */

import { MarketParamsError } from "./errors.ts";
import { shanghaiDate } from "./_dates.ts";
import type { Adjust, MarketParams, Period, SymbolType } from "./types.ts";

/** The symbol kinds a market request may name. */
export const SYMBOL_TYPES: readonly SymbolType[] = ["etf", "stock", "index"];
/** The bar periods a market request may ask for. */
export const PERIODS: readonly Period[] = [
  "daily",
  "weekly",
  "monthly",
  "1m",
  "5m",
  "15m",
  "30m",
  "60m",
];

/** Options for {@linkcode validateMarketParams}. */
export interface ValidateMarketParamsOptions {
  /** The default `end_date`, `YYYY-MM-DD`. @default today in Asia/Shanghai */
  today?: string;
  /** The default `adjust` when the params omit it. @default "qfq" */
  defaultAdjust?: Adjust;
}

/**
 * Checks and normalises `get_market` params. Dates become `YYYY-MM-DD`; `adjust` `""` becomes
 * `"none"`; missing `period`, `start_date`, `end_date` and `adjust` get their defaults
 * (`daily`, `1990-01-01`, today, `qfq`). Unknown extra fields are ignored.
 *
 * @throws {MarketParamsError} with a message that names the field and quotes the value.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { validateMarketParams } from "./params.ts";
 * const p = validateMarketParams({ symbol_type: "etf", code: "510300", start_date: "20240102" });
 * assert.equal(p.start_date, "2024-01-02");
 * assert.equal(p.period, "daily");
 * assert.equal(p.adjust, "qfq");
 * ```
 */
export function validateMarketParams(
  params: unknown,
  options: ValidateMarketParamsOptions = {},
): MarketParams {
  if (typeof params !== "object" || params === null || Array.isArray(params)) {
    throw new MarketParamsError(
      `Invalid market params ${describe(params)}: expected an object`,
    );
  }
  const p = params as Record<string, unknown>;

  if (
    p.symbol_type === undefined || p.symbol_type === null ||
    p.symbol_type === ""
  ) {
    throw new MarketParamsError(
      `Missing symbol_type: expected one of etf, stock, index`,
    );
  }
  if (!SYMBOL_TYPES.includes(p.symbol_type as SymbolType)) {
    throw new MarketParamsError(
      `Invalid symbol_type ${
        describe(p.symbol_type)
      }: expected one of etf, stock, index`,
    );
  }
  const symbolType = p.symbol_type as SymbolType;

  if (p.code === undefined || p.code === null || p.code === "") {
    throw new MarketParamsError(
      `Missing code: expected a 6-digit string such as "510300"`,
    );
  }
  if (typeof p.code !== "string" || !/^\d{6}$/.test(p.code)) {
    throw new MarketParamsError(
      `Invalid code ${
        describe(p.code)
      }: expected a 6-digit string such as "510300"`,
    );
  }

  const period = p.period ?? "daily";
  if (!PERIODS.includes(period as Period)) {
    throw new MarketParamsError(
      `Invalid period ${describe(p.period)}: expected one of ${
        PERIODS.join(", ")
      }`,
    );
  }

  const start = parseDate("start_date", p.start_date) ?? "1990-01-01";
  const end = parseDate("end_date", p.end_date) ?? options.today ??
    shanghaiDate(Date.now());
  if (start > end) {
    throw new MarketParamsError(
      `Invalid date range: start_date "${start}" is after end_date "${end}"`,
    );
  }

  let adjust: Adjust;
  if (p.adjust === undefined || p.adjust === null) {
    adjust = options.defaultAdjust ?? "qfq";
  } else if (p.adjust === "" || p.adjust === "none") adjust = "none";
  else if (p.adjust === "qfq" || p.adjust === "hfq") adjust = p.adjust;
  else {
    throw new MarketParamsError(
      `Invalid adjust ${
        describe(p.adjust)
      }: expected one of "qfq", "hfq", "" or "none"`,
    );
  }

  return {
    symbol_type: symbolType,
    code: p.code,
    period: period as Period,
    start_date: start,
    end_date: end,
    adjust,
  };
}

function parseDate(field: string, value: unknown): string | undefined {
  if (value === undefined || value === null || value === "") return undefined;
  const match = typeof value === "string"
    ? /^(\d{4})-(\d{2})-(\d{2})$/.exec(value) ??
      /^(\d{4})(\d{2})(\d{2})$/.exec(value)
    : null;
  if (match === null) {
    throw new MarketParamsError(
      `Invalid ${field} ${describe(value)}: expected YYYY-MM-DD or YYYYMMDD`,
    );
  }
  const [, y, m, d] = match;
  const date = new Date(Date.UTC(+y, +m - 1, +d));
  if (
    date.getUTCFullYear() !== +y || date.getUTCMonth() !== +m - 1 ||
    date.getUTCDate() !== +d
  ) {
    throw new MarketParamsError(
      `Invalid ${field} ${describe(value)}: no such calendar date`,
    );
  }
  return `${y}-${m}-${d}`;
}

function describe(value: unknown): string {
  if (value === undefined) return "undefined";
  try {
    const text = JSON.stringify(value);
    return text.length > 60 ? `${text.slice(0, 57)}...` : text;
  } catch {
    return String(value);
  }
}
