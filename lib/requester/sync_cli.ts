/**
 * `requester.ts sync` and `requester.ts store status|verify|export`: flags, the store and the
 * client wired to the sync job, progress, summary and exit codes.
 *
 * @module
 */

import { FlagError, numberFlag, parseFlags } from "../_flags.ts";
import type { Adjust, Bar } from "../market/types.ts";
import { latestClosedDay } from "../store/calendar.ts";
import { StoreLockedError } from "../store/database.ts";
import { barDifference } from "../store/rows.ts";
import { DEFAULT_STORE_PATH, MarketStore } from "../store/store.ts";
import type { SeriesInfo } from "../store/types.ts";
import {
  batchSizeFlag,
  dateFlag,
  requesterConnection,
  timeoutFlag,
} from "./_job_flags.ts";
import { RequesterExit } from "./exit_codes.ts";
import { barProgress, plainProgress, type ProgressView } from "./progress.ts";
import { RequesterClient } from "./requester_client.ts";
import { runSync, syncSummary } from "./sync_job.ts";
import {
  parseSymbolList,
  symbolCode,
  type SymbolKind,
  symbolKind,
  type SymbolSpec,
  uniqueSymbols,
} from "./symbols.ts";

/** Where the commands' text goes. */
export interface SyncIo {
  /** Results (status tables, verify reports). */
  stdout: (text: string) => void;
  /** Progress, notes, errors. */
  stderr: (text: string) => void;
  /** Stops the command (SIGINT/SIGTERM). */
  signal?: AbortSignal;
}

/** Exit code when another process holds the store. */
export const STORE_LOCKED_EXIT = 6;

const SYNC_USAGE =
  `Usage: deno task requester [HOST PORT] sync [CODE...] [options]

Keeps a local market store current through the server's workers. The first run fills whole
histories (streamed, resumable: run it again after an interruption); later runs fetch only what is
new: one snapshot of the list API (~70 requests for all A-shares and ETFs) gives each symbol the
day's bar, ex-dates re-fetch qfq series, gaps and new listings get K-line fetches.

Examples:
  deno task requester sync --all etf,stock,index
  deno task requester sync 510300 159915 --adjust none,qfq --store data/etf.duckdb
  deno task requester sync --all etf --every-day 15:40

Options:
  --store PATH       the DuckDB file (default ${DEFAULT_STORE_PATH})
  --all T[,T…]       every listed symbol of these types (etf, stock, index)
  --file FILE        symbol list (one code a line, or CSV with code and type columns)
  --type T           etf | stock | index, for codes without a type (default etf)
  --adjust A[,A…]    any of none, qfq, hfq (default qfq)
  --start DATE       first date of a first fill (default: the whole history)
  --every-day HH:MM  keep running; sync once per trading day at HH:MM Shanghai time
  --batch-size N     series per streamed batch, two at a time (default 200)
  --timeout S        seconds each batch may take (default 300)
  --quiet            no progress
  --url URL, --token T, --ca FILE   as for the requester

Exit codes: 0 done, 1 some series failed, 2 bad flags, 3 server unreachable,
${STORE_LOCKED_EXIT} the store is locked by another sync, 130 interrupted.
`;

const STORE_USAGE =
  `Usage: deno task requester store status|verify|export [options]

  status                    per type and adjustment: series, bars, last day, how many behind
  verify --sample N         re-fetch N random series whole through the workers, compare bar for
                            bar, print and repair every mismatch (needs a server)
  export --format parquet|csv --out DIR
                            bars, symbols and calendar as files pandas, polars and duckdb read

Options:
  --store PATH       the DuckDB file (default ${DEFAULT_STORE_PATH})
  --url URL, --token T, --ca FILE, --timeout S   for verify, as for the requester
`;

const COMMON_FLAGS = {
  url: { type: "string" },
  token: { type: "string" },
  ca: { type: "string" },
  store: { type: "string" },
  timeout: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** Which of these subcommands the arguments name, after an optional `HOST PORT`. */
export function storeSubcommand(
  args: readonly string[],
  valueFlags: ReadonlySet<string>,
): "sync" | "store" | undefined {
  const words: string[] = [];
  for (let i = 0; i < args.length && words.length < 3; i++) {
    if (args[i] === "--") break;
    if (args[i].startsWith("-")) {
      if (valueFlags.has(args[i]) || SYNC_VALUE_FLAGS.has(args[i])) i++;
      continue;
    }
    words.push(args[i]);
  }
  const word = /^\d+$/.test(words[1] ?? "") ? words[2] : words[0];
  return word === "sync" || word === "store" ? word : undefined;
}

const SYNC_VALUE_FLAGS = new Set([
  "--store",
  "--all",
  "--file",
  "--type",
  "--adjust",
  "--start",
  "--every-day",
  "--batch-size",
  "--sample",
  "--format",
  "--out",
]);

function adjustList(value: string | undefined): Adjust[] {
  if (value === undefined) return ["qfq"];
  const list = value.split(",").map((s) => s.trim()).filter(Boolean);
  for (const a of list) {
    if (!["none", "qfq", "hfq"].includes(a)) {
      throw new FlagError(
        `Invalid --adjust '${a}': expected any of none, qfq, hfq (comma-separated)`,
      );
    }
  }
  if (list.length === 0) throw new FlagError("Invalid --adjust '': empty");
  return [...new Set(list)] as Adjust[];
}

/** `HH:MM` to minutes after midnight. */
function timeFlag(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const m = /^(\d{1,2}):(\d{2})$/.exec(value);
  if (!m || +m[1] > 23 || +m[2] > 59) {
    throw new FlagError(
      `Invalid --every-day '${value}': expected HH:MM in Shanghai time, such as 15:40`,
    );
  }
  return +m[1] * 60 + +m[2];
}

async function openStore(
  path: string,
  io: SyncIo,
  name: string,
  readOnly = false,
): Promise<MarketStore | number> {
  try {
    return await MarketStore.open(path, { readOnly });
  } catch (error) {
    io.stderr(`requester ${name}: ${(error as Error).message}\n`);
    return error instanceof StoreLockedError
      ? STORE_LOCKED_EXIT
      : RequesterExit.USAGE;
  }
}

/** Opens the store read-only, prints what `read` makes of it, and closes it. */
async function printFromStore(
  path: string,
  io: SyncIo,
  read: (store: MarketStore) => Promise<string>,
): Promise<number> {
  const store = await openStore(path, io, "store", true);
  if (typeof store === "number") return store;
  try {
    io.stdout(await read(store));
    return RequesterExit.OK;
  } finally {
    await store.close();
  }
}

/** A client connected to the server, or the exit code after saying why it is not. */
async function connectClient(
  conn: { url: string; token?: string; ca?: string },
  io: SyncIo,
  name: string,
): Promise<RequesterClient | number> {
  const client = new RequesterClient(conn.url, {
    token: conn.token,
    ca: conn.ca,
  });
  try {
    await client.connect(io.signal);
    return client;
  } catch (error) {
    io.stderr(`requester ${name}: ${(error as Error).message}\n`);
    await client.close();
    return RequesterExit.UNREACHABLE;
  }
}

/** Runs `requester.ts sync`; resolves with the exit code. */
export async function syncProgram(
  args: string[],
  io: SyncIo,
): Promise<number> {
  let command;
  try {
    const { values, positionals } = parseFlags({
      args,
      allowPositionals: true,
      options: {
        ...COMMON_FLAGS,
        all: { type: "string" },
        file: { type: "string" },
        type: { type: "string" },
        adjust: { type: "string" },
        start: { type: "string" },
        "every-day": { type: "string" },
        "batch-size": { type: "string" },
        quiet: { type: "boolean" },
      },
    });
    if (values.help) {
      io.stdout(SYNC_USAGE);
      return RequesterExit.OK;
    }
    const conn = requesterConnection(values, positionals, "sync");
    const type = values.type === undefined
      ? "etf"
      : symbolKind(values.type, "--type");
    const symbols: SymbolSpec[] = conn.rest.map((c) => ({
      code: symbolCode(c),
      symbol_type: type,
    }));
    if (values.file !== undefined) {
      symbols.push(
        ...parseSymbolList(await Deno.readTextFile(values.file), type),
      );
    }
    const all = values.all === undefined ? [] : values.all.split(",").map((
      k,
    ) => symbolKind(k.trim(), "--all"));
    if (symbols.length === 0 && all.length === 0) {
      throw new FlagError(
        "no symbols: give codes, --file FILE or --all etf,stock,index",
      );
    }
    command = {
      ...conn,
      store: values.store ?? DEFAULT_STORE_PATH,
      symbols: uniqueSymbols(symbols),
      all: [...new Set(all)] as SymbolKind[],
      adjust: adjustList(values.adjust),
      start: dateFlag("start", values.start),
      everyDay: timeFlag(values["every-day"]),
      batchSize: batchSizeFlag(values["batch-size"]),
      timeout: timeoutFlag(values.timeout),
      progress: values.quiet
        ? "none"
        : Deno.stderr.isTerminal()
        ? "bar"
        : "lines",
    };
  } catch (error) {
    io.stderr(`requester sync: ${(error as Error).message}\n`);
    return RequesterExit.USAGE;
  }

  const once = async (): Promise<number> => {
    const store = await openStore(command.store, io, "sync");
    if (typeof store === "number") return store;
    const { url, token, ca } = command;
    const client = await connectClient({ url, token, ca }, io, "sync");
    if (typeof client === "number") {
      await store.close();
      return client;
    }
    try {
      let view: ProgressView | undefined;
      let last = { done: 0, failed: 0, total: 0 };
      try {
        const report = await runSync(client, {
          store,
          all: command.all,
          symbols: command.symbols,
          adjust: command.adjust,
          start: command.start,
          batchSize: command.batchSize,
          timeout: command.timeout,
          signal: io.signal,
          log: (line) => io.stderr(line + "\n"),
          onProgress: (counts) => {
            if (view === undefined && counts.total > 0) {
              view = command.progress === "bar"
                ? barProgress(counts.total)
                : command.progress === "lines"
                ? plainProgress({
                  write: (line) => io.stderr(line + "\n"),
                  intervalMs: 5000,
                })
                : undefined;
            }
            last = counts;
            view?.update(counts);
          },
        });
        view?.stop(last);
        io.stderr("\n" + syncSummary(report));
        if (io.signal?.aborted) return RequesterExit.INTERRUPTED;
        return report.failed.length === 0
          ? RequesterExit.OK
          : RequesterExit.FAILED;
      } catch (error) {
        view?.stop(last);
        if (io.signal?.aborted) return RequesterExit.INTERRUPTED;
        io.stderr(`requester sync: ${(error as Error).message}\n`);
        return client.connected
          ? RequesterExit.FAILED
          : RequesterExit.UNREACHABLE;
      }
    } finally {
      await client.close();
      await store.close();
    }
  };

  if (command.everyDay === undefined) return await once();
  // Once per day at HH:MM Shanghai; the sync itself knows (from the calendar) whether the day
  // traded, and a day already synced costs one calendar request.
  for (;;) {
    const wait = untilNext(command.everyDay, Date.now());
    io.stderr(
      `requester sync: next sync at ${
        new Date(Date.now() + wait + 8 * 3_600_000).toISOString().slice(0, 16)
          .replace("T", " ")
      } Shanghai\n`,
    );
    if (!await sleep(wait, io.signal)) return RequesterExit.INTERRUPTED;
    const code = await once();
    if (code === RequesterExit.INTERRUPTED || code === RequesterExit.USAGE) {
      return code;
    }
  }
}

/** Milliseconds from `now` to the next `minutes` after midnight, Shanghai time, on a weekday. */
export function untilNext(minutes: number, now: number): number {
  const shanghai = 8 * 3_600_000;
  const dayStart = Math.floor((now + shanghai) / 86_400_000) * 86_400_000 -
    shanghai;
  for (let d = 0; d < 8; d++) {
    const at = dayStart + d * 86_400_000 + minutes * 60_000;
    const weekday = new Date(at + shanghai).getUTCDay();
    if (at > now && weekday !== 0 && weekday !== 6) return at - now;
  }
  return 86_400_000;
}

function sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(false);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Runs `requester.ts store …`; resolves with the exit code. */
export async function storeProgram(
  args: string[],
  io: SyncIo,
): Promise<number> {
  let parsed;
  try {
    parsed = parseFlags({
      args,
      allowPositionals: true,
      options: {
        ...COMMON_FLAGS,
        sample: { type: "string" },
        format: { type: "string" },
        out: { type: "string" },
        adjust: { type: "string" },
      },
    });
  } catch (error) {
    io.stderr(`requester store: ${(error as Error).message}\n`);
    return RequesterExit.USAGE;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    io.stdout(STORE_USAGE);
    return RequesterExit.OK;
  }
  let conn;
  try {
    conn = requesterConnection(values, positionals, "store");
  } catch (error) {
    io.stderr(`requester store: ${(error as Error).message}\n`);
    return RequesterExit.USAGE;
  }
  const action = conn.rest[0];
  const path = values.store ?? DEFAULT_STORE_PATH;
  if (!["status", "verify", "export"].includes(action ?? "")) {
    io.stderr(
      `requester store: expected status, verify or export, got ${
        JSON.stringify(action ?? "")
      }\n`,
    );
    return RequesterExit.USAGE;
  }
  if (action !== "verify" && !(await exists(path))) {
    io.stderr(`requester store: no store at ${path}\n`);
    return RequesterExit.USAGE;
  }
  if (action === "export") {
    const format = values.format ?? "parquet";
    if (format !== "parquet" && format !== "csv") {
      io.stderr(
        `requester store: Invalid --format '${format}': expected parquet or csv\n`,
      );
      return RequesterExit.USAGE;
    }
    const out = values.out;
    if (out === undefined) {
      io.stderr("requester store: export needs --out DIR\n");
      return RequesterExit.USAGE;
    }
    return await printFromStore(
      path,
      io,
      async (store) => (await store.export(format, out)).join("\n") + "\n",
    );
  }
  if (action === "status") return await printFromStore(path, io, statusText);
  let sample: number;
  try {
    sample = numberFlag("sample", values.sample, 20, { min: 1, integer: true });
  } catch (error) {
    io.stderr(`requester store: ${(error as Error).message}\n`);
    return RequesterExit.USAGE;
  }
  const store = await openStore(path, io, "store");
  if (typeof store === "number") return store;
  const client = await connectClient(conn, io, "store");
  if (typeof client === "number") {
    await store.close();
    return client;
  }
  try {
    const result = await verifyStore(client, store, {
      sample,
      timeout: values.timeout === undefined ? 300 : Number(values.timeout),
      write: io.stdout,
    });
    return result.failed > 0 ? RequesterExit.FAILED : RequesterExit.OK;
  } finally {
    await client.close();
    await store.close();
  }
}

/** `store status` as text. */
export async function statusText(store: MarketStore): Promise<string> {
  const rows = await store.status();
  const synced = await store.meta("last_sync_day");
  const size = (await Deno.stat(store.path)).size;
  const lines = [
    `store       ${store.path} (${(size / 1_048_576).toFixed(1)} MB)`,
    `last sync   ${synced ?? "never completed"}`,
    `calendar    ${latestClosedDay(await store.calendar(), Date.now()) ?? "-"}`,
    "",
    "type    adjust  series  bars        last day    behind",
  ];
  for (const r of rows) {
    lines.push(
      `${r.symbolType.padEnd(8)}${r.adjust.padEnd(8)}${
        String(r.series).padEnd(8)
      }${String(r.bars).padEnd(12)}${
        (r.lastDate ?? "-").padEnd(12)
      }${r.behind}`,
    );
  }
  if (rows.length === 0) lines.push("(empty)");
  return lines.join("\n") + "\n";
}

/** What `store verify` found. */
export interface VerifyReport {
  /** Series compared. */
  checked: number;
  /** Series that differed (and were repaired). */
  mismatched: number;
  /** Series that could not be fetched. */
  failed: number;
}

/**
 * Re-fetches `sample` random series whole, compares them bar for bar with the store over the
 * stored range, writes each difference, and replaces a differing series with the fresh one.
 */
export async function verifyStore(
  client: RequesterClient,
  store: MarketStore,
  options: {
    sample: number;
    timeout?: number;
    write: (text: string) => void;
    random?: () => number;
  },
): Promise<VerifyReport> {
  const all = [...(await store.seriesInfo()).values()];
  const random = options.random ?? Math.random;
  for (let i = all.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [all[i], all[j]] = [all[j], all[i]];
  }
  const picked: SeriesInfo[] = all.slice(0, options.sample);
  const report: VerifyReport = { checked: 0, mismatched: 0, failed: 0 };
  if (picked.length === 0) {
    options.write("verify: the store holds no series\n");
    return report;
  }
  const items = picked.map((s) => ({
    symbol_type: s.symbolType,
    code: s.code,
    adjust: s.adjust,
    period: "daily",
    start_date: s.firstDate,
  }));
  const answer = await client.request("get_markets", items, {
    timeout: options.timeout ?? 300,
  });
  // A batch answers `{results, summary, distributed}` (a worker's own get_markets, a list).
  const data = answer.data as { results?: unknown } | unknown[] | null;
  const results =
    (Array.isArray(data)
      ? data
      : Array.isArray(data?.results)
      ? data.results
      : []) as {
        success?: boolean;
        data?: Bar[];
        error?: string;
      }[];
  for (let i = 0; i < picked.length; i++) {
    const s = picked[i];
    const label = `${s.symbolType} ${s.code} ${s.adjust}`;
    const r = results[i];
    if (r?.success !== true || !Array.isArray(r.data) || r.data.length === 0) {
      report.failed++;
      options.write(
        `${label}: cannot fetch: ${r?.error ?? answer.error ?? "no answer"}\n`,
      );
      continue;
    }
    report.checked++;
    const stored = await store.readSeries(s);
    // Bars after the store's last day are news, not differences.
    const fresh = r.data.filter((b) => b.date <= s.lastDate);
    const problems: string[] = [];
    if (fresh.length !== stored.length) {
      problems.push(`${stored.length} bars stored, ${fresh.length} upstream`);
    }
    for (let k = 0; k < Math.min(fresh.length, stored.length); k++) {
      const diff = barDifference(stored[k], fresh[k]);
      if (diff) problems.push(diff);
      if (problems.length >= 5) break;
    }
    if (problems.length === 0) {
      options.write(`${label}: ${stored.length} bars, equal\n`);
      continue;
    }
    report.mismatched++;
    options.write(`${label}: MISMATCH ${problems.join("; ")}; repaired\n`);
    await store.commit({ replace: [{ key: s, bars: r.data }] });
  }
  options.write(
    `verify: ${report.checked} series compared, ${report.mismatched} repaired, ${report.failed} not fetched\n`,
  );
  return report;
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}
