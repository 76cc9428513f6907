/**
 * The Tencent provider (`appstock/app/newfqkline/get`, the endpoint akshare's
 * `stock_zh_a_hist_tx` calls), a fallback for when Eastmoney refuses us. It returns at most 640
 * bars per call, so a history is fetched in pages, newest first, until the listing day.
 *
 * @module
 */

import { type Clock, systemClock } from "./clock.ts";
import {
  UnknownCodeError,
  UpstreamBlockedError,
  UpstreamUnavailableError,
} from "./errors.ts";
import type { HostGate } from "./host_gate.ts";
import { secidCandidates } from "./secid.ts";
import { shanghaiDate } from "./_dates.ts";
import { BROWSER_USER_AGENT, numberOf, upstream } from "./_http.ts";
import type {
  Bar,
  DayPeriod,
  MarketProvider,
  Series,
  SeriesQuery,
} from "./types.ts";

/** Tencent's default base URL: the proxy in front of `web.ifzq.gtimg.cn` that akshare uses. */
export const TENCENT_URL = "https://proxy.finance.qq.com/ifzqgtimg";

/** Per period: Tencent's unit, and the years per page that keep a page under its 640-bar cap. */
const PERIODS: Record<DayPeriod, { unit: string; pageYears: number }> = {
  daily: { unit: "day", pageYears: 2 },
  weekly: { unit: "week", pageYears: 12 },
  monthly: { unit: "month", pageYears: 50 },
};
const FIRST_YEAR = 1990;

/** Options for {@linkcode createTencentProvider}. */
export interface TencentProviderOptions {
  /** Base URL; tests point it at a fake server. @default "https://web.ifzq.gtimg.cn" */
  baseUrl?: string;
  /** Builds the gate that every request of this provider goes through. */
  gateFor: (host: string) => HostGate;
  /** Decides the current year, where paging starts. @default systemClock */
  clock?: Clock;
}

/** The Tencent symbol of a code: `sh510300`, `sz159915`, `bj430047`. */
export function tencentSymbol(
  symbolType: SeriesQuery["symbolType"],
  code: string,
): string {
  const [market] = secidCandidates(symbolType, code)[0].split(".");
  if (market === "1") return `sh${code}`;
  if (market === "0") {
    const beijing = symbolType === "stock"
      ? /^[48]|^92/.test(code)
      : code.startsWith("899");
    return `${beijing ? "bj" : "sz"}${code}`;
  }
  throw new UnknownCodeError(
    `Unknown ${symbolType} code "${code}": Tencent has no CSI indexes`,
  );
}

/** Creates the Tencent provider. */
export function createTencentProvider(
  options: TencentProviderOptions,
): MarketProvider {
  const { baseUrl, host, gate } = upstream(
    options.baseUrl ?? TENCENT_URL,
    options.gateFor,
  );
  const clock = options.clock ?? systemClock;
  const hadData = new Set<string>();

  async function fetchPage(
    symbol: string,
    query: SeriesQuery,
    from: number,
    to: number,
    signal: AbortSignal,
  ): Promise<{ name?: string; bars: Bar[]; known: boolean }> {
    const fq = query.adjust === "none" ? "" : query.adjust;
    const { unit } = PERIODS[query.period as DayPeriod];
    const param = `${symbol},${unit},${from}-01-01,${to}-12-31,640,${fq}`;
    const first = to >= +shanghaiDate(clock.now()).slice(0, 4);
    const body = await gate.requestJson(
      `${baseUrl}/appstock/app/newfqkline/get?param=${param}`,
      {
        signal,
        headers: {
          "User-Agent": BROWSER_USER_AGENT,
          "Referer": "https://gu.qq.com/",
        },
        suspicious: (answer) =>
          first && hadData.has(symbol) && rowsOf(answer).length === 0,
      },
    );
    const { code, msg, data } = body as {
      code?: unknown;
      msg?: unknown;
      data?: unknown;
    };
    if (code !== 0) {
      throw new UpstreamUnavailableError(
        host,
        `Tencent answered code ${code}: ${String(msg)}`,
      );
    }
    const entry = (data as Record<string, Record<string, unknown>> | undefined)
      ?.[symbol];
    if (typeof entry !== "object" || entry === null) {
      return { bars: [], known: false };
    }
    const quote = (entry.qt as Record<string, unknown> | undefined)?.[symbol];
    const name = Array.isArray(quote) && typeof quote[1] === "string"
      ? quote[1]
      : undefined;
    const bars = rowsOf(body).map((row) => parseRow(host, row));
    return { name, bars, known: true };

    function rowsOf(answer: unknown): unknown[] {
      const e = (answer as { data?: Record<string, Record<string, unknown>> })
        ?.data?.[symbol];
      const rows = e?.[`${fq}${unit}`] ?? e?.[unit];
      return Array.isArray(rows) ? rows : [];
    }
  }

  async function fetchSeries(
    query: SeriesQuery,
    signal: AbortSignal,
  ): Promise<Series> {
    const symbol = tencentSymbol(query.symbolType, query.code);
    const span = PERIODS[query.period as DayPeriod].pageYears;
    const inShares = sharesNotLots(query.symbolType, query.code);
    const pages: Bar[][] = [];
    let name: string | undefined;
    const page = async (to: number) => {
      const from = Math.max(FIRST_YEAR, to - span + 1);
      const got = await fetchPage(symbol, query, from, to, signal);
      name ??= got.name;
      return { from, ...got };
    };
    const thisYear = +shanghaiDate(clock.now()).slice(0, 4);
    for (let to = thisYear; to >= FIRST_YEAR; to -= span) {
      const current = await page(to);
      if (
        to === thisYear && current.bars.length === 0 && !current.known &&
        name === undefined
      ) {
        throw new UnknownCodeError(
          `Unknown ${query.symbolType} code "${query.code}": Tencent has no data for "${symbol}"`,
        );
      }
      if (current.bars.length > 0) {
        pages.unshift(current.bars);
        continue;
      }
      // An empty page ends the history only where the history really starts. A page whose
      // oldest bar lies well inside it shows the listing day; otherwise look one page further
      // back, because Tencent also answers empty rows when it is tired of us.
      const oldest = pages[0]?.[0]?.date;
      const listedInside = oldest !== undefined &&
        oldest > `${to + 1}-07-01`;
      if (listedInside || to - span < FIRST_YEAR) break;
      const older = await page(to - span);
      if (older.bars.length === 0) break;
      const again = await page(to);
      if (again.bars.length === 0) {
        gate.reportHostile();
        throw new UpstreamBlockedError(
          host,
          `Tencent answered an empty page for ${again.from}–${to} of "${symbol}" between pages with bars: not caching a cut-off history`,
        );
      }
      pages.unshift(older.bars, again.bars);
      to -= span;
    }
    const bars = pages.flat().map((bar) =>
      inShares ? { ...bar, volume: bar.volume / 100 } : bar
    );
    if (bars.length > 0) hadData.add(symbol);
    return { name: name ?? query.code, source: "tencent", bars };
  }

  return {
    name: "tencent",
    host,
    periods: Object.keys(PERIODS) as DayPeriod[],
    fetchSeries,
  };
}

/**
 * Whether Tencent reports volume in shares for this instrument: STAR Market stocks (688) and
 * indexes, as akshare's `stock_zh_a_hist_tx` notes; everything else comes in lots.
 */
function sharesNotLots(symbolType: SeriesQuery["symbolType"], code: string) {
  return symbolType === "index" ||
    (symbolType === "stock" && code.startsWith("688"));
}

/**
 * Parses `[date, open, close, high, low, volume, info, turnover %, amount in 10k CNY]` (the
 * `newfqkline` row; `info` is an object on dividend days). Older rows may stop after volume.
 */
function parseRow(host: string, row: unknown): Bar {
  const cells = Array.isArray(row) ? row : [];
  const [open, close, high, low, volume] = cells.slice(1, 6).map(numberOf);
  const date = cells[0];
  if (
    typeof date !== "string" || !/^\d{4}-\d{2}-\d{2}$/.test(date) ||
    open === undefined ||
    close === undefined || high === undefined || low === undefined ||
    volume === undefined
  ) {
    throw new UpstreamUnavailableError(
      host,
      `Cannot read Tencent bar ${
        JSON.stringify(row)
      }: expected date and 5 numbers`,
    );
  }
  const bar: Bar = { date, open, high, low, close, volume };
  const amount = numberOf(cells[8]);
  if (amount !== undefined) {
    bar.amount = Math.round(amount * 10_000 * 100) / 100;
  }
  const turnover = numberOf(cells[7]);
  if (turnover !== undefined) bar.turnover = turnover;
  return bar;
}
