/**
 * `requester.ts markets`: the pieces between parsed flags and a market job — where the symbols
 * come from, which progress view, the summary, and the exit code.
 *
 * @module
 */

import { RequesterClient } from "./requester_client.ts";
import { exitCodeOf, RequesterExit } from "./exit_codes.ts";
import type { ColumnStyle, MarketFileFormat } from "./market_files.ts";
import {
  listSymbols,
  type MarketRange,
  type MarketsJobReport,
  runMarketsJob,
  summaryTable,
} from "./markets_job.ts";
import { barProgress, plainProgress, type ProgressView } from "./progress.ts";
import {
  parseSymbolList,
  symbolCode,
  type SymbolKind,
  type SymbolSpec,
  uniqueSymbols,
} from "./symbols.ts";

/** Exit codes of `requester.ts markets`: the requester's, with "some symbols failed" named. */
export const MarketsExit = {
  ...RequesterExit,
  /** At least one symbol failed; `failed.txt` lists them. */
  SOME_FAILED: RequesterExit.FAILED,
} as const;

/** Everything `requester.ts markets` was told. */
export interface MarketsCommand extends MarketRange {
  /** Requester port URL. */
  url: string;
  /** Requester token. */
  token?: string;
  /** CA certificate (PEM text) for `wss://`. */
  ca?: string;
  /** Codes given as arguments. */
  codes: string[];
  /** A symbol file to read (`-` for stdin). */
  file?: string;
  /** Read symbols from stdin (no codes and no file, and stdin is not a terminal). */
  stdin?: boolean;
  /** Kind of the codes without one. */
  type: SymbolKind;
  /** A whole universe through `list_symbols`. */
  all?: SymbolKind;
  /** Output folder. */
  outDir?: string;
  /** Output format. */
  format: MarketFileFormat | "table";
  /** Column names. */
  columns: ColumnStyle;
  /** Skip symbols whose file is complete. */
  resume: boolean;
  /** Items per streamed batch. */
  batchSize?: number;
  /** Seconds each batch may take. */
  timeout?: number;
  /** `bar` on a terminal, `lines` otherwise, or `none`. */
  progress: "bar" | "lines" | "none";
  /** Seconds between plain progress lines. @default 5 */
  progressIntervalS?: number;
}

/** Where the command's text goes. */
export interface MarketsIo {
  /** Series output without `--out`. */
  stdout: (text: string) => void | Promise<void>;
  /** Progress, summary and errors. */
  stderr: (text: string) => void;
  /** Reads all of stdin. */
  readStdin: () => Promise<string>;
  /** Stops the job (SIGINT). */
  signal?: AbortSignal;
}

/** Reads the job's symbols from codes, a file, stdin or `list_symbols`. */
export async function collectSymbols(
  command: MarketsCommand,
  io: MarketsIo,
  client?: RequesterClient,
): Promise<SymbolSpec[]> {
  const symbols: SymbolSpec[] = command.codes.map((c) => ({
    code: symbolCode(c),
    symbol_type: command.type,
  }));
  if (command.file !== undefined) {
    const text = command.file === "-"
      ? await io.readStdin()
      : await Deno.readTextFile(command.file);
    symbols.push(...parseSymbolList(text, command.type));
  } else if (command.stdin && command.codes.length === 0 && !command.all) {
    symbols.push(...parseSymbolList(await io.readStdin(), command.type));
  }
  if (command.all && client) {
    symbols.push(...await listSymbols(client, command.all, command.timeout));
  }
  return uniqueSymbols(symbols);
}

/** Runs the command; resolves with the exit code (see {@linkcode MarketsExit}). */
export async function marketsCommand(
  command: MarketsCommand,
  io: MarketsIo,
): Promise<number> {
  let symbols: SymbolSpec[] = [];
  if (!command.all) {
    try {
      symbols = await collectSymbols(command, io);
    } catch (error) {
      io.stderr(`requester markets: ${(error as Error).message}\n`);
      return MarketsExit.USAGE;
    }
    if (symbols.length === 0) {
      io.stderr(
        "requester markets: no symbols: give codes, --file FILE, --all TYPE, or a list on stdin\n",
      );
      return MarketsExit.USAGE;
    }
  }
  const client = new RequesterClient(command.url, {
    token: command.token,
    ca: command.ca,
  });
  try {
    await client.connect(io.signal);
  } catch (error) {
    io.stderr(`requester markets: ${(error as Error).message}\n`);
    return io.signal?.aborted ? MarketsExit.INTERRUPTED : exitCodeOf(error);
  }
  try {
    if (command.all) {
      try {
        symbols = await collectSymbols(command, io, client);
      } catch (error) {
        io.stderr(`requester markets: ${(error as Error).message}\n`);
        // The list was asked for and the answer failed: a failed answer, not a usage error.
        return client.connected ? MarketsExit.FAILED : exitCodeOf(error);
      }
      io.stderr(`${symbols.length} ${command.all} symbols listed\n`);
    }
    let view: ProgressView | undefined;
    if (command.progress === "bar") view = barProgress(symbols.length);
    else if (command.progress === "lines") {
      view = plainProgress({
        write: (line) => io.stderr(line + "\n"),
        intervalMs: (command.progressIntervalS ?? 5) * 1000,
      });
    }
    let last = { done: 0, failed: 0, total: symbols.length };
    let report: MarketsJobReport;
    try {
      report = await runMarketsJob(client, {
        ...command,
        symbols,
        write: io.stdout,
        signal: io.signal,
        onProgress: (counts) => {
          last = counts;
          view?.update(counts);
        },
      });
    } finally {
      view?.stop(last);
    }
    io.stderr("\n" + summaryTable(report));
    if (io.signal?.aborted) return MarketsExit.INTERRUPTED;
    if (report.failed.length === 0) return MarketsExit.OK;
    const all = (code: string) =>
      report.failed.every((f) => f.error_code === code);
    if (all("WRONG_PORT")) return MarketsExit.WRONG_PORT;
    return all("CONNECTION_CLOSED") && !client.connected
      ? MarketsExit.UNREACHABLE
      : MarketsExit.SOME_FAILED;
  } finally {
    await client.close();
  }
}
