/**
 * The Eastmoney provider: `push2his.eastmoney.com/api/qt/stock/kline/get`, the endpoint behind
 * akshare's `fund_etf_hist_em` and `stock_zh_a_hist`.
 *
 * @module
 */

import { UnknownCodeError, UpstreamUnavailableError } from "./errors.ts";
import type { HostGate } from "./host_gate.ts";
import { secidCandidates } from "./secid.ts";
import { BROWSER_USER_AGENT, numberOf, upstream } from "./_http.ts";
import type {
  Adjust,
  Bar,
  MarketProvider,
  Period,
  Series,
  SeriesQuery,
} from "./types.ts";

/** Eastmoney's default base URL. */
export const EASTMONEY_URL = "https://push2his.eastmoney.com";

/** Eastmoney's `klt` per period. */
const KLT: Record<Period, string> = {
  daily: "101",
  weekly: "102",
  monthly: "103",
  "1m": "1",
  "5m": "5",
  "15m": "15",
  "30m": "30",
  "60m": "60",
};
/** Eastmoney's `fqt` per adjustment. */
const FQT: Record<Adjust, string> = { none: "0", qfq: "1", hfq: "2" };

/**
 * The fields a K-line line ends with after date, open, close, high, low and volume, in
 * Eastmoney's order: the upstream's wire format, whatever order bars are written out in.
 */
const KLINE_TAIL = [
  "amount",
  "amplitude",
  "pct_change",
  "change",
  "turnover",
] as const satisfies readonly (keyof Bar)[];

/** Options for {@linkcode createEastmoneyProvider}. */
export interface EastmoneyProviderOptions {
  /** Base URL; tests point it at a fake server. @default "https://push2his.eastmoney.com" */
  baseUrl?: string;
  /** Builds the gate that every request of this provider goes through. */
  gateFor: (host: string) => HostGate;
  /** Index code → resolved `secid`, shared with the symbol list. @default a new map */
  resolvedSecids?: Map<string, string>;
}

/** Creates the Eastmoney provider. Its series are whole histories, `beg=19900101` to 2050. */
export function createEastmoneyProvider(
  options: EastmoneyProviderOptions,
): MarketProvider {
  const { baseUrl, host, gate } = upstream(
    options.baseUrl ?? EASTMONEY_URL,
    options.gateFor,
  );
  // Codes that answered with bars once: an empty answer for them later is a ban, not a fact.
  const hadData = new Set<string>();
  // Index code → the secid that answered, so the market fallback runs once per code.
  const resolved = options.resolvedSecids ?? new Map<string, string>();

  async function fetchOne(
    secid: string,
    query: SeriesQuery,
    signal: AbortSignal,
  ): Promise<{ name?: unknown; klines?: unknown; dktotal?: unknown } | null> {
    const url = new URL(`${baseUrl}/api/qt/stock/kline/get`);
    url.search = new URLSearchParams({
      secid,
      klt: KLT[query.period],
      fqt: FQT[query.adjust],
      beg: "19900101",
      end: "20500101",
      fields1: "f1,f2,f3,f4,f5,f6",
      fields2: "f51,f52,f53,f54,f55,f56,f57,f58,f59,f60,f61",
      ut: "7eea3edcaed734bea9cbfc24409ed989",
    }).toString();
    const body = await gate.requestJson(url.href, {
      signal,
      headers: {
        "User-Agent": BROWSER_USER_AGENT,
        "Referer": "https://quote.eastmoney.com/",
        "Accept": "application/json, text/plain, */*",
      },
      suspicious: (answer) => {
        const data =
          (answer as { data?: { klines?: unknown; dktotal?: unknown } })?.data;
        if (!data || !Array.isArray(data.klines) || data.klines.length > 0) {
          return false;
        }
        return hadData.has(secid) || (numberOf(data.dktotal) ?? 0) > 0;
      },
    });
    const data = (body as { data?: unknown })?.data;
    if (data === null || data === undefined) return null;
    return data as { name?: unknown; klines?: unknown; dktotal?: unknown };
  }

  async function fetchSeries(
    query: SeriesQuery,
    signal: AbortSignal,
  ): Promise<Series> {
    const known = query.symbolType === "index"
      ? resolved.get(query.code)
      : undefined;
    const candidates = known === undefined
      ? secidCandidates(query.symbolType, query.code)
      : [known];
    let secid = candidates[0];
    let data: Awaited<ReturnType<typeof fetchOne>> = null;
    for (secid of candidates) {
      data = await fetchOne(secid, query, signal);
      if (data !== null) break;
    }
    if (data === null) {
      throw new UnknownCodeError(
        `Unknown ${query.symbolType} code "${query.code}": Eastmoney has no data for secid ${
          candidates.map((c) => `"${c}"`).join(", ")
        }`,
      );
    }
    if (query.symbolType === "index") resolved.set(query.code, secid);
    if (!Array.isArray(data.klines)) {
      throw new UpstreamUnavailableError(
        host,
        `Cannot read Eastmoney answer: no klines list`,
      );
    }
    const bars = data.klines.map((line) => parseKline(host, line));
    // A full daily history must hold every bar Eastmoney counts; fewer is a cut-off answer.
    const total = numberOf(data.dktotal);
    if (
      query.period === "daily" && total !== undefined && bars.length < total
    ) {
      throw new UpstreamUnavailableError(
        host,
        `Eastmoney answer for "${secid}" is truncated: ${bars.length} of ${total} bars`,
      );
    }
    if (bars.length > 0) hadData.add(secid);
    return {
      name: typeof data.name === "string" ? data.name : query.code,
      source: "eastmoney",
      bars,
    };
  }

  return {
    name: "eastmoney",
    host,
    periods: Object.keys(KLT) as Period[],
    fetchSeries,
  };
}

/** Parses `date,open,close,high,low,volume,amount,amplitude,pct_change,change,turnover`. */
function parseKline(host: string, line: unknown): Bar {
  const fields = typeof line === "string" ? line.split(",") : [];
  const [date, open, close, high, low, volume] = fields.slice(0, 6).map((
    f,
    i,
  ) => i === 0 ? f : numberOf(f)) as [string, ...(number | undefined)[]];
  if (
    !/^\d{4}-\d{2}-\d{2}( \d{2}:\d{2})?$/.test(date ?? "") ||
    open === undefined ||
    close === undefined ||
    high === undefined || low === undefined || volume === undefined
  ) {
    throw new UpstreamUnavailableError(
      host,
      `Cannot read Eastmoney kline ${
        JSON.stringify(line)
      }: expected date and 5 numbers first`,
    );
  }
  const bar: Bar = { date, open, high, low, close, volume };
  KLINE_TAIL.forEach((field, i) => {
    const value = numberOf(fields[6 + i]);
    if (value !== undefined) bar[field] = value;
  });
  return bar;
}
