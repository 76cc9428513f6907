/**
 * The fields Eastmoney derives from a bar and the previous close, computed the way its own
 * K-lines show them: checked on every bar of the real 510300 history (tests/store_fixtures_test.ts).
 *
 * @module
 */

import type { Bar } from "../market/types.ts";

/**
 * Rounds half away from zero on the decimal value, as Eastmoney does: (3.903 − 4) / 4 × 100 is
 * −2.425, which it shows as −2.43 (binary floating point makes it −2.42499…, and `Math.round`
 * would give −2.42).
 */
export function roundHalfAway(value: number, digits: number): number {
  const factor = 10 ** digits;
  const scaled = Math.abs(value) * factor;
  return Math.sign(value) * Math.round(scaled + 1e-7) / factor;
}

/**
 * `bar` with amplitude, pct change and change against `previousClose` (the previous bar's close
 * of the same series, as Eastmoney computes them, even on an ex-date).
 */
export function deriveBar(bar: Bar, previousClose: number): Bar {
  const out: Bar = {
    date: bar.date,
    open: bar.open,
    high: bar.high,
    low: bar.low,
    close: bar.close,
    volume: bar.volume,
  };
  if (bar.amount !== undefined) out.amount = bar.amount;
  if (previousClose !== 0) {
    out.amplitude = roundHalfAway(
      (bar.high - bar.low) / previousClose * 100,
      2,
    );
    out.pct_change = roundHalfAway(
      (bar.close - previousClose) / previousClose * 100,
      2,
    );
    out.change = roundHalfAway(bar.close - previousClose, 4);
  }
  if (bar.turnover !== undefined) out.turnover = bar.turnover;
  return out;
}
