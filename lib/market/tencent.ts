/**
 * The Tencent provider (`web.ifzq.gtimg.cn/appstock/app/fqkline/get`), a fallback for when
 * Eastmoney refuses us. It returns at most 640 bars per call, so a history is fetched in pages,
 * newest first, until a page comes back empty.
 *
 * @module
 */

import { type Clock, systemClock } from "./clock.ts";
import { UnknownCodeError, UpstreamUnavailableError } from "./errors.ts";
import type { HostGate } from "./host_gate.ts";
import { secidFor } from "./secid.ts";
import { shanghaiDate } from "./_dates.ts";
import { BROWSER_USER_AGENT, numberOf } from "./_http.ts";
import type {
  Bar,
  MarketProvider,
  Period,
  Series,
  SeriesQuery,
} from "./types.ts";

/** Tencent's default base URL. */
export const TENCENT_URL = "https://web.ifzq.gtimg.cn";

const UNIT: Record<Period, string> = {
  daily: "day",
  weekly: "week",
  monthly: "month",
};
/** Years per page, so that a page stays under Tencent's 640-bar cap. */
const PAGE_YEARS: Record<Period, number> = {
  daily: 2,
  weekly: 12,
  monthly: 50,
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
  const [market] = secidFor(symbolType, code).split(".");
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
  const baseUrl = (options.baseUrl ?? TENCENT_URL).replace(/\/+$/, "");
  const host = new URL(baseUrl).host;
  const gate = options.gateFor(host);
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
    const unit = UNIT[query.period];
    const param = `${symbol},${unit},${from}-01-01,${to}-12-31,640,${fq}`;
    const first = to >= +shanghaiDate(clock.now()).slice(0, 4);
    const body = await gate.requestJson(
      `${baseUrl}/appstock/app/fqkline/get?param=${param}`,
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
    const span = PAGE_YEARS[query.period];
    const pages: Bar[][] = [];
    let name: string | undefined;
    for (
      let to = +shanghaiDate(clock.now()).slice(0, 4);
      to >= FIRST_YEAR;
      to -= span
    ) {
      const page = await fetchPage(
        symbol,
        query,
        Math.max(FIRST_YEAR, to - span + 1),
        to,
        signal,
      );
      name ??= page.name;
      if (
        pages.length === 0 && page.bars.length === 0 && !page.known &&
        name === undefined
      ) {
        throw new UnknownCodeError(
          `Unknown ${query.symbolType} code "${query.code}": Tencent has no data for "${symbol}"`,
        );
      }
      if (page.bars.length === 0) break;
      pages.unshift(page.bars);
    }
    const bars = pages.flat();
    if (bars.length > 0) hadData.add(symbol);
    return { name: name ?? query.code, source: "tencent", bars };
  }

  return { name: "tencent", host, fetchSeries };
}

/** Parses `[date, open, close, high, low, volume, ...]`. */
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
  return { date, open, high, low, close, volume };
}
