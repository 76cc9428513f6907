/**
 * Eastmoney's `secid`: `<market>.<code>`, where the market number depends on the exchange and,
 * for codes that exist twice (000001 is Ping An Bank and the Shanghai Composite), on the kind.
 *
 * @module
 */

import { UnknownCodeError } from "./errors.ts";
import type { SymbolType } from "./types.ts";

/**
 * The Eastmoney `secid` of a code: market `1` for Shanghai, `0` for Shenzhen and Beijing, `2`
 * for CSI indexes (93xxxx, 95xxxx).
 *
 * @throws {UnknownCodeError} when no exchange issues codes of that shape for that kind.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { secidFor } from "./secid.ts";
 * assert.equal(secidFor("stock", "000001"), "0.000001"); // Ping An Bank
 * assert.equal(secidFor("index", "000001"), "1.000001"); // Shanghai Composite
 * ```
 */
export function secidFor(symbolType: SymbolType, code: string): string {
  const market = marketOf(symbolType, code);
  if (market === undefined) {
    throw new UnknownCodeError(
      `Unknown ${symbolType} code "${code}": no exchange uses it`,
    );
  }
  return `${market}.${code}`;
}

function marketOf(symbolType: SymbolType, code: string): number | undefined {
  if (!/^\d{6}$/.test(code)) return undefined;
  switch (symbolType) {
    case "etf":
      if (code.startsWith("5")) return 1; // Shanghai funds 51/56/58
      if (code.startsWith("1")) return 0; // Shenzhen funds 15/16
      return undefined;
    case "stock":
      if (code.startsWith("6") || code.startsWith("900")) return 1; // Shanghai A and B
      if (/^[0234]|^8|^92/.test(code)) return 0; // Shenzhen 0/2/3, Beijing 4/8/920
      return undefined;
    case "index":
      if (code.startsWith("000")) return 1; // SSE indexes
      if (code.startsWith("399")) return 0; // SZSE indexes
      if (code.startsWith("899")) return 0; // BSE indexes
      if (code.startsWith("93") || code.startsWith("95")) return 2; // CSI indexes
      return undefined;
  }
}

/** The markets Eastmoney files indexes under, in akshare's fallback order. */
const INDEX_MARKETS = [1, 0, 2, 47] as const;

/**
 * The `secid`s to try for a code, best guess first. For indexes that is the guess from
 * {@linkcode secidFor} (when the prefix tells), then akshare's fallback order 1 → 0 → 2 → 47:
 * CSI-only indexes such as 000859 live under market 2, CNI's 98xxxx under 0. A market is skipped
 * when a stock or fund holds the same code there (0.000859 is a Shenzhen stock), so a fallback
 * can never answer with another instrument's bars. Other kinds have exactly one `secid`.
 *
 * @throws {UnknownCodeError} when no exchange issues codes of that shape for that kind.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { secidCandidates } from "./secid.ts";
 * assert.equal(secidCandidates("index", "000859").join(), "1.000859,2.000859,47.000859");
 * assert.equal(secidCandidates("index", "980017")[0], "0.980017");
 * ```
 */
export function secidCandidates(
  symbolType: SymbolType,
  code: string,
): string[] {
  if (symbolType !== "index" || !/^\d{6}$/.test(code)) {
    return [secidFor(symbolType, code)];
  }
  const guess = marketOf("index", code) ??
    (code.startsWith("98") ? 0 : undefined);
  const markets = INDEX_MARKETS.filter((m) =>
    m !== guess && !heldByStockOrFund(m, code)
  );
  const all = guess === undefined ? markets : [guess, ...markets];
  if (all.length === 0) {
    throw new UnknownCodeError(
      `Unknown index code "${code}": no exchange uses it`,
    );
  }
  return all.map((m) => `${m}.${code}`);
}

/** Whether a stock or fund uses `code` under Eastmoney market `market`. */
function heldByStockOrFund(market: number, code: string): boolean {
  if (market === 1) {
    return marketOf("stock", code) === 1 || marketOf("etf", code) === 1;
  }
  if (market === 0) {
    return !/^399|^899/.test(code) &&
      (marketOf("stock", code) === 0 || marketOf("etf", code) === 0);
  }
  return false;
}
