/**
 * Job progress for people: a bar on a terminal (done/total, failures, rate, ETA), plain lines
 * every few seconds otherwise (logs, CI), so a pipe never fills with carriage returns.
 *
 * @module
 */

import process from "node:process";
import cliProgress from "npm:cli-progress@3.12.0";

/** Counts a job reports. */
export interface JobCounts {
  /** Items finished, failed ones and skipped ones included. */
  done: number;
  /** Items that failed. */
  failed: number;
  /** Items in the job. */
  total: number;
}

/** Something that shows a job's progress. */
export interface ProgressView {
  /** Shows the latest counts (called often; the view decides how often to draw). */
  update(counts: JobCounts): void;
  /** Draws the final counts and releases the terminal. */
  stop(counts: JobCounts): void;
}

/** Options for {@linkcode plainProgress}. */
export interface PlainProgressOptions {
  /** Where lines go. @default stderr */
  write?: (line: string) => void;
  /** The least time between two lines, in ms. @default 5000 */
  intervalMs?: number;
  /** @default Date.now */
  now?: () => number;
  /** A word before each line. @default "markets" */
  label?: string;
}

/** Seconds as `1h02m`, `3m05s` or `12s`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  if (h > 0) return `${h}h${String(m).padStart(2, "0")}m`;
  if (m > 0) return `${m}m${String(r).padStart(2, "0")}s`;
  return `${r}s`;
}

/** One progress line: counts, rate and ETA. */
export function progressLine(
  counts: JobCounts,
  elapsedMs: number,
  label = "markets",
): string {
  const rate = elapsedMs > 0 ? counts.done / (elapsedMs / 1000) : 0;
  const left = counts.total - counts.done;
  const eta = left === 0 ? "0s" : rate > 0 ? formatDuration(left / rate) : "?";
  return `${label}: ${counts.done}/${counts.total} done, ${counts.failed} failed, ${
    rate.toFixed(1)
  }/s, ETA ${eta}`;
}

/**
 * Plain lines at most every `intervalMs`, and always the last one.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { plainProgress } from "./progress.ts";
 * const lines: string[] = [];
 * let now = 0;
 * const view = plainProgress({ write: (l) => lines.push(l), now: () => now, intervalMs: 1000 });
 * now = 500; view.update({ done: 1, failed: 0, total: 4 });
 * now = 1000; view.update({ done: 2, failed: 0, total: 4 });
 * now = 2000; view.stop({ done: 4, failed: 1, total: 4 });
 * assert.equal(lines.length, 2);
 * assert.equal(lines[1], "markets: 4/4 done, 1 failed, 2.0/s, ETA 0s");
 * ```
 */
export function plainProgress(
  options: PlainProgressOptions = {},
): ProgressView {
  const now = options.now ?? Date.now;
  const write = options.write ?? ((line: string) => console.error(line));
  const interval = options.intervalMs ?? 5000;
  const label = options.label ?? "markets";
  const started = now();
  let last = started;
  let lastDone = -1;
  return {
    update(counts) {
      const t = now();
      if (t - last < interval || counts.done === lastDone) return;
      last = t;
      lastDone = counts.done;
      write(progressLine(counts, t - started, label));
    },
    stop(counts) {
      write(progressLine(counts, now() - started, label));
    },
  };
}

/** A progress bar on the terminal behind stderr (cli-progress). */
export function barProgress(total: number): ProgressView {
  const bar = new cliProgress.SingleBar({
    stream: process.stderr,
    format:
      "{bar} {value}/{total} | {failed} failed | {rate}/s | ETA {eta_formatted}",
    hideCursor: true,
    etaBuffer: 50,
    fps: 5,
  }, cliProgress.Presets.shades_classic);
  const started = Date.now();
  const payload = (counts: JobCounts) => ({
    failed: counts.failed,
    rate: (counts.done / Math.max(0.001, (Date.now() - started) / 1000))
      .toFixed(1),
  });
  bar.start(total, 0, payload({ done: 0, failed: 0, total }));
  return {
    update(counts) {
      bar.update(counts.done, payload(counts));
    },
    stop(counts) {
      bar.update(counts.done, payload(counts));
      bar.stop();
    },
  };
}
