/**
 * One page of the day's quotes of every listed symbol of a kind, from Eastmoney's list API
 * (`push2.eastmoney.com/api/qt/clist/get`, the one behind akshare's `stock_zh_a_spot_em` and
 * `fund_etf_spot_em`): open `f17`, high `f15`, low `f16`, latest `f2` (the close once the market
 * has closed), previous close `f18`, volume `f5` (lots), amount `f6`, turnover `f8`, update time
 * `f124` (epoch seconds). A suspended symbol shows `-` in the price fields.
 *
 * After the close the real-time host often drops connections; `push2delay.eastmoney.com` serves
 * the same API, so a page that fails on the first host is asked of the second. Both hosts go
 * through their own gate, with the same politeness as `list_symbols`.
 *
 * @module
 */

import { numberOf } from "./_http.ts";
import { UpstreamBlockedError, UpstreamUnavailableError } from "./errors.ts";
import type { HostGate } from "./host_gate.ts";
import {
  EASTMONEY_LIST_URL,
  LIST_PAGE_SIZE,
  requestListPage,
} from "./symbols.ts";
import type { SymbolType } from "./types.ts";

/** The delayed mirror of the list API, which keeps answering after the close. */
export const EASTMONEY_LIST_DELAY_URL = "https://push2delay.eastmoney.com";

/** The list API's quote fields a snapshot asks for. */
export const SNAPSHOT_FIELDS =
  "f2,f3,f4,f5,f6,f7,f8,f12,f13,f14,f15,f16,f17,f18,f124";

/** One symbol's quote of the day; price fields are absent when Eastmoney shows `-`. */
export interface SnapshotRow {
  /** Six-digit code (`f12`). */
  code: string;
  /** Name (`f14`). */
  name: string;
  /** Eastmoney market number (`f13`). */
  market?: number;
  /** Open (`f17`). */
  open?: number;
  /** High (`f15`). */
  high?: number;
  /** Low (`f16`). */
  low?: number;
  /** Latest price; the close once the session has closed (`f2`). */
  close?: number;
  /** Previous close, the exchange's reference price after an ex-date (`f18`). */
  prev_close?: number;
  /** Volume in lots (`f5`). */
  volume?: number;
  /** Amount in CNY (`f6`). */
  amount?: number;
  /** Turnover rate in percent (`f8`). */
  turnover?: number;
  /** Percent change against `prev_close` (`f3`). */
  pct_change?: number;
  /** Change against `prev_close` (`f4`). */
  change?: number;
  /** Amplitude in percent (`f7`). */
  amplitude?: number;
  /** When the quote last changed, epoch ms (`f124` is in seconds). */
  updated_at?: number;
}

/** A `get_snapshot` page. */
export interface SnapshotPage {
  /** Always `true`. */
  success: true;
  /** Instrument kind. */
  symbol_type: SymbolType;
  /** The page, from 1. */
  page: number;
  /** Rows per page. */
  page_size: number;
  /** Symbols listed in all (so pages = ⌈total / page_size⌉). */
  total: number;
  /** The host that answered (`push2…` or `push2delay…`). */
  host: string;
  /** Always `"eastmoney"`. */
  source: string;
  /** The page's rows, in Eastmoney's order (by code). */
  rows: SnapshotRow[];
}

/** Options for {@linkcode createSnapshotFetcher}. */
export interface SnapshotFetcherOptions {
  /** The list API. @default "https://push2.eastmoney.com" */
  baseUrl?: string;
  /**
   * Asked when `baseUrl` fails (unavailable or blocked); `null` for none.
   * @default "https://push2delay.eastmoney.com" when `baseUrl` is the default, else none
   */
  fallbackUrl?: string | null;
  /** Builds the gate of each host. */
  gateFor: (host: string) => HostGate;
}

/** Fetches snapshot pages. */
export interface SnapshotFetcher {
  /** One page of `symbolType`'s quotes. Rejects with a market error. */
  page(
    symbolType: SymbolType,
    page: number,
    signal: AbortSignal,
  ): Promise<SnapshotPage>;
}

/** Creates a {@linkcode SnapshotFetcher}. */
export function createSnapshotFetcher(
  options: SnapshotFetcherOptions,
): SnapshotFetcher {
  const primary = (options.baseUrl ?? EASTMONEY_LIST_URL).replace(/\/+$/, "");
  const fallback = options.fallbackUrl === undefined
    ? (primary === EASTMONEY_LIST_URL ? EASTMONEY_LIST_DELAY_URL : undefined)
    : options.fallbackUrl?.replace(/\/+$/, "") ?? undefined;

  async function pageFrom(
    baseUrl: string,
    symbolType: SymbolType,
    n: number,
    signal: AbortSignal,
  ): Promise<SnapshotPage> {
    const host = new URL(baseUrl).host;
    const gate = options.gateFor(host);
    const { total, rows: diff } = await requestListPage(
      gate,
      baseUrl,
      symbolType,
      n,
      { fields: SNAPSHOT_FIELDS, what: "snapshot page", signal },
    );
    const expected = Math.max(
      0,
      Math.min(LIST_PAGE_SIZE, total - (n - 1) * LIST_PAGE_SIZE),
    );
    if (diff.length < expected) {
      // A short page would make the sync take listed symbols for gone ones.
      gate.reportHostile();
      throw new UpstreamBlockedError(
        host,
        `Eastmoney snapshot page ${n} for ${symbolType} is truncated: ${diff.length} of ${expected} rows`,
      );
    }
    const rows: SnapshotRow[] = [];
    for (const raw of diff) {
      const code = typeof raw?.f12 === "string" ? raw.f12 : String(raw?.f12);
      if (!/^\d{6}$/.test(code)) continue;
      const row: SnapshotRow = {
        code,
        name: typeof raw.f14 === "string" ? raw.f14 : code,
      };
      const set = (field: keyof SnapshotRow, key: string) => {
        const value = numberOf(raw[key]);
        if (value !== undefined) {
          (row as unknown as Record<string, number>)[field] = value;
        }
      };
      set("market", "f13");
      set("open", "f17");
      set("high", "f15");
      set("low", "f16");
      set("close", "f2");
      set("prev_close", "f18");
      set("volume", "f5");
      set("amount", "f6");
      set("turnover", "f8");
      set("pct_change", "f3");
      set("change", "f4");
      set("amplitude", "f7");
      const updated = numberOf(raw.f124);
      if (updated !== undefined && updated > 0) row.updated_at = updated * 1000;
      rows.push(row);
    }
    return {
      success: true,
      symbol_type: symbolType,
      page: n,
      page_size: LIST_PAGE_SIZE,
      total,
      host,
      source: "eastmoney",
      rows,
    };
  }

  return {
    async page(symbolType, n, signal) {
      try {
        return await pageFrom(primary, symbolType, n, signal);
      } catch (error) {
        if (
          fallback === undefined || signal.aborted ||
          !(error instanceof UpstreamUnavailableError ||
            error instanceof UpstreamBlockedError)
        ) {
          throw error;
        }
        return await pageFrom(fallback, symbolType, n, signal);
      }
    },
  };
}
