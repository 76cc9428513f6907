/**
 * Latency statistics and plain-text tables for the bench.
 *
 * @module
 */

/** Summary of one measured load. */
export interface LoadSummary {
  /** Answers received inside the measured window. */
  count: number;
  /** Answers per second inside the measured window. */
  rps: number;
  /** Latency percentiles in ms. */
  p50: number;
  p90: number;
  p99: number;
  /** Largest latency in ms. */
  max: number;
}

/** The `q`-quantile (0..1) of ascending `sorted`, nearest-rank; NaN when empty. */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil(q * sorted.length) - 1;
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank))];
}

/** Summarises latencies (ms) gathered over `elapsedMs`. */
export function summarize(latencies: number[], elapsedMs: number): LoadSummary {
  const sorted = Float64Array.from(latencies).sort();
  return {
    count: sorted.length,
    rps: elapsedMs > 0 ? sorted.length / (elapsedMs / 1000) : 0,
    p50: quantile(sorted, 0.5),
    p90: quantile(sorted, 0.9),
    p99: quantile(sorted, 0.99),
    max: sorted.length ? sorted[sorted.length - 1] : NaN,
  };
}

/** A number with `digits` decimals, or `-` for NaN/undefined. */
export function fixed(value: number | undefined, digits = 2): string {
  return value === undefined || Number.isNaN(value)
    ? "-"
    : value.toFixed(digits);
}

/** Renders rows as an aligned text table; numeric-looking cells are right-aligned. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) =>
    Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length))
  );
  const numeric = /^[-+]?[\d.,]+[x%]?$|^-$/;
  const line = (cells: string[]) =>
    cells.map((c, i) =>
      i > 0 && numeric.test(c) ? c.padStart(widths[i]) : c.padEnd(widths[i])
    ).join("  ").trimEnd();
  return [
    line(header),
    widths.map((w) => "-".repeat(w)).join("  "),
    ...rows.map(line),
  ].join("\n");
}

/** A target check for the PASS/FAIL lines. */
export interface Check {
  name: string;
  pass: boolean;
  detail: string;
}

/** `PASS name: detail` / `FAIL name: detail`. */
export function checkLine(check: Check): string {
  return `${check.pass ? "PASS" : "FAIL"} ${check.name}: ${check.detail}`;
}
