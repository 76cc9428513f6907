/**
 * A market job: many symbols from one command into files. The symbols go out as streamed
 * batches, each item is written to its own file as it arrives (atomically), symbols whose file
 * exists are skipped on `resume`, and the failures end up in `failed.txt`, which can be fed back.
 *
 * @module
 */

import type { RequesterAnswer } from "../protocol.ts";
import type { RequesterClient } from "./requester_client.ts";
import {
  type ColumnStyle,
  type MarketFileFormat,
  marketFileName,
  removeStaleTemps,
  renderMarketFile,
  writeFileAtomic,
} from "./market_files.ts";
import { readItemBytes } from "./market_text.ts";
import type { JobCounts } from "./progress.ts";
import { symbolCode, type SymbolKind, type SymbolSpec } from "./symbols.ts";

/** What each symbol's `get_market` params share. */
export interface MarketRange {
  /** `daily`, `weekly`, `monthly` (or a minute period the workers know). @default "daily" */
  period?: string;
  /** First date, `YYYY-MM-DD`. @default the workers' (1990-01-01) */
  start_date?: string;
  /** Last date, `YYYY-MM-DD`. @default the workers' (today) */
  end_date?: string;
  /** `qfq`, `hfq` or `none`. @default "qfq" */
  adjust?: string;
}

/** Options for {@linkcode runMarketsJob}. */
export interface MarketsJobOptions extends MarketRange {
  /** The symbols, in order. */
  symbols: readonly SymbolSpec[];
  /** Folder for one file per symbol; without it, series go to `write`. */
  outDir?: string;
  /** File format; `table` prints a short view of each series to `write`. @default "csv" */
  format?: MarketFileFormat | "table";
  /** Column names of CSV and JSON lines. @default "english" */
  columns?: ColumnStyle;
  /** Skip symbols whose file already exists (files only appear complete). @default false */
  resume?: boolean;
  /** Items per streamed batch; two batches run at once so workers never wait between them. @default 200 */
  batchSize?: number;
  /** Seconds each batch may take (the server caps it at its `--max-timeout`). @default 300 */
  timeout?: number;
  /**
   * How long symbols refused for want of upstream capacity (every worker cooling down or out of
   * budget) keep being offered again while nothing else finishes, in ms. @default 600000
   */
  maxWaitMs?: number;
  /** Rows of each series in the `table` view (the latest ones). @default 5 */
  tableRows?: number;
  /** Receives the counts whenever they change. */
  onProgress?: (counts: JobCounts) => void;
  /** Where output without `outDir` goes. @default stdout */
  write?: (text: string) => void | Promise<void>;
  /** Stops sending batches; items in flight are given up. */
  signal?: AbortSignal;
}

/** A symbol that did not make it, with the reason. */
export interface FailedSymbol extends SymbolSpec {
  /** Why. */
  error: string;
  /** Machine-readable reason (`UPSTREAM_BLOCKED`, `UNKNOWN_CODE`, `TIMEOUT`…). */
  error_code: string;
  /** Whether running it again may succeed. */
  retriable: boolean;
}

/** What a job did. */
export interface MarketsJobReport {
  /** Symbols in the job. */
  total: number;
  /** Symbols fetched and written (or printed) now. */
  ok: number;
  /** Symbols skipped because their file was complete already. */
  skipped: number;
  /** Symbols that failed, in input order. */
  failed: FailedSymbol[];
  /** Bars written. */
  bars: number;
  /** Wall time, in ms. */
  elapsedMs: number;
  /** The files written, by symbol index (with `outDir`). */
  files: Map<number, string>;
  /** Where `failed.txt` went, when anything failed and `outDir` was given. */
  failedFile?: string;
}

// How often one symbol may be re-queued after the connection dropped under it.
const MAX_DROPS = 3;

/** The `error_code` in `failed.txt` of a symbol whose upstream answered no bar at all. */
export const EMPTY_HISTORY = "EMPTY_HISTORY";

/** The name of the failures file in the output folder. */
export const FAILED_FILE = "failed.txt";

const RETRIABLE = new Set([
  "UPSTREAM_BLOCKED",
  "UPSTREAM_UNAVAILABLE",
  "UPSTREAM_BUDGET",
  "TIMEOUT",
  "WORKER_LOST",
  "NO_WORKERS",
  "BUSY",
  "CANCELLED",
  "CONNECTION_CLOSED",
]);

/**
 * Runs a market job over `client` (connected). Never throws for item failures: they are in the
 * report. Throws when the output folder cannot be written.
 */
export async function runMarketsJob(
  client: RequesterClient,
  options: MarketsJobOptions,
): Promise<MarketsJobReport> {
  const started = Date.now();
  const format = options.format ?? "csv";
  const fileFormat: MarketFileFormat = format === "table" ? "csv" : format;
  const symbols = options.symbols;
  const outDir = options.outDir?.replace(/\/+$/, "") || undefined;
  const write = options.write ??
    ((text: string) => {
      Deno.stdout.writeSync(new TextEncoder().encode(text));
    });
  const report: MarketsJobReport = {
    total: symbols.length,
    ok: 0,
    skipped: 0,
    failed: [],
    bars: 0,
    elapsedMs: 0,
    files: new Map(),
  };
  const failures = new Map<number, FailedSymbol>();
  // Items the server refused for want of upstream capacity (`UPSTREAM_BUDGET`): never tried, so
  // they go back in the queue rather than to failed.txt, unless nothing moves for `maxWaitMs`.
  const deferred = new Map<number, FailedSymbol>();
  let retryAt = Infinity;
  let lastProgress = Date.now();
  const counts = () => ({
    done: report.ok + report.skipped + failures.size,
    failed: failures.size,
    total: symbols.length,
  });
  const pathOf = (s: SymbolSpec) =>
    `${outDir}/${marketFileName(s, options, fileFormat)}`;

  let todo = symbols.map((_, i) => i);
  // On stdout, many series share one CSV: one header.
  let headerWritten = false;
  if (outDir) {
    await Deno.mkdir(outDir, { recursive: true });
    await removeStaleTemps(outDir);
    if (options.resume) {
      const left: number[] = [];
      for (const i of todo) {
        if (await isFile(pathOf(symbols[i]))) {
          report.skipped++;
          report.files.set(i, pathOf(symbols[i]));
        } else left.push(i);
      }
      todo = left;
    }
  }
  options.onProgress?.(counts());

  const fail = (i: number, error: string, code: string, retriable?: boolean) =>
    failures.set(i, {
      ...symbols[i],
      error,
      error_code: code,
      retriable: retriable ?? RETRIABLE.has(code),
    });

  const queue = [...todo];
  // Symbols re-queued after a dropped connection, and how often.
  const drops = new Map<number, number>();
  let reconnecting: Promise<boolean> | undefined;
  const reconnect = () =>
    reconnecting ??= (async () => {
      for (
        let attempt = 0;
        attempt < 5 && !options.signal?.aborted;
        attempt++
      ) {
        try {
          await client.connect(options.signal);
          return true;
        } catch {
          await sleep(500 * 2 ** attempt, options.signal);
        }
      }
      return false;
    })().finally(() => reconnecting = undefined);

  const runBatch = async (indexes: number[]): Promise<void> => {
    const items = indexes.map((i) => {
      const item: Record<string, unknown> = {
        symbol_type: symbols[i].symbol_type,
        code: symbols[i].code,
      };
      for (
        const key of ["period", "start_date", "end_date", "adjust"] as const
      ) {
        if (options[key] !== undefined) item[key] = options[key];
      }
      return item;
    });
    const seen = new Set<number>();
    const stream = client.stream("get_markets", items, {
      timeout: options.timeout ?? 300,
      signal: options.signal,
    });
    let answer: RequesterAnswer | undefined;
    let lost: Error | undefined;
    try {
      for await (const item of stream) {
        const { index } = item;
        const i = indexes[index];
        if (i === undefined || seen.has(index)) continue;
        seen.add(index);
        await settle(i, item);
        options.onProgress?.(counts());
      }
      answer = await stream.answer;
    } catch (error) {
      lost = error as Error;
    }
    const dropped = lost !== undefined && !options.signal?.aborted &&
      (lost as { code?: unknown }).code === "CONNECTION_CLOSED";
    const requeued = new Set<number>();
    if (dropped && await reconnect()) {
      // The line dropped, not the job: what did not arrive goes back in the queue, a few times.
      indexes.forEach((i, k) => {
        if (seen.has(k) || (drops.get(i) ?? 0) >= MAX_DROPS) return;
        drops.set(i, (drops.get(i) ?? 0) + 1);
        requeued.add(i);
      });
      queue.push(...requeued);
    }
    indexes.forEach((i, k) => {
      if (seen.has(k) || requeued.has(i)) return;
      if (lost) {
        const code = (lost as { code?: unknown }).code;
        fail(
          i,
          lost.message,
          options.signal?.aborted
            ? "CANCELLED"
            : typeof code === "string"
            ? code
            : "CONNECTION_CLOSED",
          true,
        );
      } else if (answer && !answer.success) {
        fail(
          i,
          answer.error ?? "Batch failed",
          answer.error_code ?? "WORKER_ERROR",
        );
      } else {
        fail(
          i,
          "The server finished the batch without this item",
          "WORKER_ERROR",
          true,
        );
      }
    });
    options.onProgress?.(counts());
  };

  const settle = async (
    i: number,
    item: { result: unknown; bytes?: Uint8Array },
  ): Promise<void> => {
    // CSV is written straight from the frame's bytes: no object per bar (see market_text.ts).
    const view = item.bytes !== undefined && fileFormat === "csv" &&
        format !== "table"
      ? readItemBytes(item.bytes)
      : undefined;
    const result = view ? view.result : item.result;
    const r =
      (typeof result === "object" && result !== null ? result : {}) as Record<
        string,
        unknown
      >;
    if (r.success !== true) {
      const code = typeof r.error_code === "string"
        ? r.error_code
        : "WORKER_ERROR";
      if (code === "UPSTREAM_BUDGET") {
        // Refused by the server before any upstream call: it goes back in the queue.
        deferred.set(i, {
          ...symbols[i],
          error: String(r.error ?? "Refused"),
          error_code: code,
          retriable: true,
        });
        if (typeof r.retry_at === "number") {
          retryAt = Math.min(retryAt, r.retry_at);
        }
        return;
      }
      fail(
        i,
        typeof r.error === "string"
          ? r.error
          : `Unexpected item ${JSON.stringify(result)?.slice(0, 80)}`,
        code,
        typeof r.retriable === "boolean"
          ? r.retriable || RETRIABLE.has(code)
          : undefined,
      );
      return;
    }
    lastProgress = Date.now();
    if (r.empty_history === true) {
      // Not a fact to keep: a throttled host answers an empty history too. No file, so that
      // `--resume` and `--file failed.txt` ask again.
      fail(
        i,
        "The upstream answered no bar at all for this code (a throttled host answers so too): no file written, ask again later",
        EMPTY_HISTORY,
        true,
      );
      return;
    }
    const bars = view ? view.bars : Array.isArray(r.data) ? r.data.length : 0;
    // The full parse, only when the text could not be rendered directly.
    const full = () => item.result as Record<string, unknown>;
    if (outDir) {
      const path = pathOf(symbols[i]);
      await writeFileAtomic(
        path,
        view?.csv(options.columns) ??
          renderMarketFile(full(), fileFormat, options.columns),
      );
      report.files.set(i, path);
    } else if (format === "table") {
      await write(tableView(symbols[i], r, options.tableRows ?? 5));
    } else {
      const choice = { symbol: symbols[i], header: !headerWritten };
      const bytes = view?.csv(options.columns, choice);
      await write(
        bytes
          ? new TextDecoder().decode(bytes)
          : renderMarketFile(full(), fileFormat, options.columns, choice),
      );
      headerWritten = true;
    }
    report.bars += bars;
    report.ok++;
  };

  const size = Math.max(1, options.batchSize ?? 200);
  const maxWaitMs = options.maxWaitMs ?? 600_000;
  const lane = async () => {
    while (queue.length > 0) {
      const batch = queue.splice(0, size);
      if (options.signal?.aborted) {
        for (const i of batch) fail(i, "Job interrupted", "CANCELLED", true);
        continue;
      }
      await runBatch(batch);
      const refused = batch.filter((i) => deferred.has(i));
      if (refused.length === 0) continue;
      const stalled = Date.now() - lastProgress;
      if (stalled > maxWaitMs || options.signal?.aborted) {
        // Nothing moved for too long: the workers' upstreams stay closed. Say so per symbol.
        for (const i of refused) {
          failures.set(i, deferred.get(i)!);
          deferred.delete(i);
        }
        options.onProgress?.(counts());
        continue;
      }
      if (refused.length === batch.length) {
        // Nothing of this batch could go: wait for a cool-down to end or capacity to free up.
        const wait = Math.min(
          Math.max(1000, (retryAt === Infinity ? 0 : retryAt) - Date.now()),
          60_000,
          Math.max(1000, maxWaitMs - stalled + 1000),
        );
        await sleep(wait, options.signal);
      }
      retryAt = Infinity;
      for (const i of refused) deferred.delete(i);
      queue.push(...refused);
    }
  };
  await Promise.all([lane(), lane()]);

  report.failed = [...failures.entries()].sort((a, b) => a[0] - b[0]).map((
    [, f],
  ) => f);
  if (outDir) {
    const failedPath = `${outDir}/${FAILED_FILE}`;
    if (report.failed.length > 0) {
      await writeFileAtomic(failedPath, failedList(report.failed));
      report.failedFile = failedPath;
    } else {
      // A failures file from an earlier run would now be a lie.
      await Deno.remove(failedPath).catch(() => {});
    }
  }
  report.elapsedMs = Date.now() - started;
  return report;
}

/** The failures as CSV with `code` and `type` columns, which `parseSymbolList` reads back. */
export function failedList(failed: readonly FailedSymbol[]): string {
  const quote = (s: string) =>
    /[",\n\r]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
  return "code,type,error_code,retriable,error\n" +
    failed.map((f) =>
      `${f.code},${f.symbol_type},${quote(f.error_code)},${f.retriable},${
        quote(f.error.replace(/\s+/g, " "))
      }\n`
    ).join("");
}

/**
 * Reads the symbols of a whole universe through the workers' `list_symbols` action: its
 * answer's `data` is a list of `{code, name}` (or an object holding one under `symbols` or
 * `data`).
 */
export async function listSymbols(
  client: RequesterClient,
  kind: SymbolKind,
  timeout?: number,
): Promise<SymbolSpec[]> {
  const answer = await client.request("list_symbols", { symbol_type: kind }, {
    timeout,
  });
  if (!answer.success) {
    throw new Error(`Cannot list ${kind} symbols: ${answer.error}`);
  }
  const inner = answer.data as { success?: unknown; error?: unknown } | null;
  if (inner && inner.success === false) {
    throw new Error(`Cannot list ${kind} symbols: ${inner.error}`);
  }
  let list: unknown = answer.data;
  for (const key of ["symbols", "data", "results"]) {
    if (!Array.isArray(list) && typeof list === "object" && list !== null) {
      list = (list as Record<string, unknown>)[key] ?? list;
    }
  }
  if (!Array.isArray(list)) {
    throw new Error(
      `Cannot list ${kind} symbols: expected a list of {code, name}, got ${
        JSON.stringify(answer.data)?.slice(0, 80)
      }`,
    );
  }
  const out: SymbolSpec[] = [];
  for (const entry of list) {
    const raw = typeof entry === "string"
      ? entry
      : (entry as { code?: unknown })?.code;
    if (typeof raw !== "string") continue;
    try {
      out.push({ code: symbolCode(raw), symbol_type: kind });
    } catch {
      // A code the market APIs cannot take is left out of the job, not fatal to it.
    }
  }
  return out;
}

/** A summary table of a report, for the terminal. */
export function summaryTable(report: MarketsJobReport, limit = 20): string {
  const lines = [
    `${pad("symbols", 10)}${report.total}`,
    `${pad("ok", 10)}${report.ok}${
      report.bars ? ` (${report.bars} bars)` : ""
    }`,
  ];
  if (report.skipped > 0) {
    lines.push(
      `${pad("skipped", 10)}${report.skipped} (file already complete)`,
    );
  }
  lines.push(`${pad("failed", 10)}${report.failed.length}`);
  lines.push(`${pad("time", 10)}${(report.elapsedMs / 1000).toFixed(1)} s`);
  if (report.failed.length > 0) {
    lines.push(
      "",
      `${pad("type", 7)}${pad("code", 8)}${pad("reason", 22)}error`,
    );
    for (const f of report.failed.slice(0, limit)) {
      lines.push(
        `${pad(f.symbol_type, 7)}${pad(f.code, 8)}${pad(f.error_code, 22)}${
          f.error.replace(/\s+/g, " ").slice(0, 100)
        }`,
      );
    }
    if (report.failed.length > limit) {
      lines.push(`… and ${report.failed.length - limit} more`);
    }
    if (report.failedFile) {
      lines.push(
        "",
        `Failed symbols are in ${report.failedFile}; run again with --file ${report.failedFile} (or --resume).`,
      );
    }
  }
  return lines.join("\n") + "\n";
}

function pad(text: string | number, width: number): string {
  const s = String(text);
  const columns = [...s].reduce(
    (n, ch) => n + (ch.charCodeAt(0) > 0x2e80 ? 2 : 1),
    0,
  );
  return s + " ".repeat(Math.max(1, width - columns));
}

function tableView(
  symbol: SymbolSpec,
  result: Record<string, unknown>,
  rows: number,
): string {
  const bars = (Array.isArray(result.data) ? result.data : []) as Record<
    string,
    unknown
  >[];
  const head = `${symbol.symbol_type} ${symbol.code} ${
    result.name ?? ""
  } — ${bars.length} bars${
    bars.length ? ` ${bars[0].date} … ${bars.at(-1)!.date}` : ""
  } (${result.source ?? "?"})`;
  const fields = ["date", "open", "high", "low", "close", "volume"];
  const lines = [head, "  " + fields.map((f) => pad(f, 12)).join("")];
  for (const bar of bars.slice(-rows)) {
    lines.push(
      "  " + fields.map((f) => pad(String(bar[f] ?? ""), 12)).join(""),
    );
  }
  return lines.join("\n") + "\n\n";
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}
