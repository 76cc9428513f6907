/**
 * `deno task requester` — send one command and print the answer, or open an interactive console.
 *
 * @module
 */

import { runStdinConsole, splitCommand } from "./lib/console.ts";
import {
  consoleMode,
  FlagError,
  looksLikeHost,
  numberFlag,
  parseFlags,
  serverUrl,
} from "./lib/_flags.ts";
import { setupLogging } from "./lib/log.ts";
import { RequesterClient } from "./lib/requester/requester_client.ts";
import {
  type MarketsCommand,
  marketsCommand,
  MarketsExit,
} from "./lib/requester/markets_cli.ts";
import { symbolKind } from "./lib/requester/symbols.ts";
import {
  batchSizeFlag,
  dateFlag,
  requesterConnection,
  requesterCredentials,
  timeoutFlag,
} from "./lib/requester/_job_flags.ts";
import {
  storeProgram,
  storeSubcommand,
  syncProgram,
} from "./lib/requester/sync_cli.ts";
import {
  answerFailed,
  EXIT_CODES_HELP,
  exitCodeOf,
  RequesterExit,
} from "./lib/requester/exit_codes.ts";
import { PERIODS } from "./lib/market/params.ts";

const USAGE =
  `Usage: deno task requester [HOST PORT] [command [json-data]] [options]

Sends a command to the server's requester port (default localhost 8766) and prints the answer as
JSON. Without a command, opens a console.

Examples:
  deno task requester get_time
  deno task requester localhost 8766 get_market '{"symbol_type":"etf","code":"510300"}'
  deno task requester get_markets '[{"symbol_type":"etf","code":"510300"},{"symbol_type":"etf","code":"159915"}]'
  deno task requester markets 510300 159915 --out data/     (see: requester markets --help)
  deno task requester sync --all etf,stock,index             (see: requester sync --help)
  deno task requester store status                           (see: requester store --help)

Options:
  --url URL          requester port URL instead of HOST PORT (ws:// or wss://); a cluster's
                     servers comma-separated: the requester moves to the next one if it drops
  --resubmit         after a dropped connection, send in-flight requests again (only for
                     commands that are safe to run twice)
  --timeout S        seconds the server may take (default: the server's, 30)
  --token T          requester token (or SWITCHYARD_REQUESTER_TOKEN)
  --ca FILE          CA certificate (PEM) to trust for wss://
  --progress         print progress frames of batches to stderr
  --compact          print the answer on one line
  -h, --help         this text

${EXIT_CODES_HELP}
`;

const MARKETS_USAGE =
  `Usage: deno task requester [HOST PORT] markets [CODE...] [options]

Fetches the K-line history of many symbols through the server's workers, streamed, and writes one
file per symbol as it arrives (atomically: a file under its final name is always complete).
Symbols come from the arguments, --file, --all, or stdin (one code a line, or CSV with code and
type columns, such as a failed.txt of an earlier run).

Examples:
  deno task requester markets 510300 159915 --start 2020-01-01 --out data/
  deno task requester markets --file etfs.txt --out data/ --resume
  deno task requester markets --all etf --out data/ --columns akshare
  deno task requester markets 000300 399006 --type index --format table

Options:
  --type T           etf | stock | index, for codes without a type (default etf)
  --file FILE        symbol list (one code a line, or CSV with code and type columns); - = stdin
  --all T            every listed symbol of that type (the workers' list_symbols action)
  --start DATE       first date, YYYY-MM-DD (default: the workers', 1990-01-01)
  --end DATE         last date (default: today)
  --period P         daily | weekly | monthly (default daily)
  --adjust A         qfq | hfq | none (default qfq)
  --out DIR          one file per symbol: DIR/<type>_<code>_<period>_<adjust>.<format>, and
                     DIR/failed.txt listing the failures (feed it back with --file)
  --format F         csv | jsonl | json | table (default csv with --out, table without)
  --columns C        english | akshare (日期, 开盘, 收盘, … as akshare names them; default english)
  --resume           skip symbols whose file in --out exists already
  --batch-size N     symbols per streamed batch, two batches at a time (default 200)
  --timeout S        seconds each batch may take (default: the server's; it caps them)
  --quiet            no progress
  --url URL, --token T, --ca FILE   as for the requester
  -h, --help         this text

Progress goes to stderr: a bar on a terminal, a line every 5 s otherwise. At the end a summary.

${EXIT_CODES_HELP}
`;

function oneOf<T extends string>(
  name: string,
  value: string | undefined,
  allowed: readonly T[],
): T | undefined {
  if (value === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(value)) {
    throw new FlagError(
      `Invalid --${name} '${value}': expected one of ${allowed.join(", ")}`,
    );
  }
  return value as T;
}

function parseMarkets(args: string[]): MarketsCommand {
  const { values, positionals } = parseFlags({
    args,
    allowPositionals: true,
    options: {
      url: { type: "string" },
      token: { type: "string" },
      ca: { type: "string" },
      type: { type: "string" },
      file: { type: "string" },
      all: { type: "string" },
      start: { type: "string" },
      end: { type: "string" },
      period: { type: "string" },
      adjust: { type: "string" },
      out: { type: "string" },
      format: { type: "string" },
      columns: { type: "string" },
      resume: { type: "boolean" },
      "batch-size": { type: "string" },
      timeout: { type: "string" },
      quiet: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(MARKETS_USAGE);
    Deno.exit(0);
  }
  const { url, rest: codes, token, ca } = requesterConnection(
    values,
    positionals,
    "markets",
  );
  const kind = (v: string | undefined, name: string) => {
    try {
      return v === undefined ? undefined : symbolKind(v, `--${name}`);
    } catch (error) {
      throw new FlagError((error as Error).message);
    }
  };
  const format = oneOf(
    "format",
    values.format,
    [
      "csv",
      "jsonl",
      "json",
      "table",
    ] as const,
  ) ?? (values.out ? "csv" : "table");
  if (format === "table" && values.out) {
    throw new FlagError(
      "--format table prints to the terminal: use csv, jsonl or json with --out",
    );
  }
  if (values.resume && !values.out) {
    throw new FlagError("--resume needs --out DIR: it skips files found there");
  }
  const progressOn = !values.quiet;
  return {
    url,
    token,
    ca,
    codes,
    file: values.file,
    stdin: !Deno.stdin.isTerminal(),
    type: kind(values.type, "type") ?? "etf",
    all: kind(values.all, "all"),
    start_date: dateFlag("start", values.start),
    end_date: dateFlag("end", values.end),
    period: oneOf("period", values.period, PERIODS),
    adjust: oneOf("adjust", values.adjust, ["qfq", "hfq", "none"] as const),
    outDir: values.out,
    format,
    columns: oneOf(
      "columns",
      values.columns,
      [
        "english",
        "akshare",
      ] as const,
    ) ?? "english",
    resume: values.resume ?? false,
    batchSize: batchSizeFlag(values["batch-size"]),
    timeout: timeoutFlag(values.timeout),
    progress: !progressOn ? "none" : Deno.stderr.isTerminal() ? "bar" : "lines",
  };
}

/**
 * Runs a long command with a signal that SIGINT (and SIGTERM off Windows) aborts, so the command
 * can stop cleanly and still choose its exit code.
 */
async function untilInterrupted(
  run: (signal: AbortSignal) => Promise<number>,
): Promise<number> {
  const stop = new AbortController();
  const onSignal = () => stop.abort(new Error("Interrupted"));
  const signals: Deno.Signal[] = Deno.build.os === "windows"
    ? ["SIGINT"]
    : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, onSignal);
  try {
    return await run(stop.signal);
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onSignal);
  }
}

async function markets(args: string[]): Promise<number> {
  let command: MarketsCommand;
  try {
    command = parseMarkets(args);
  } catch (error) {
    console.error(`requester markets: ${(error as Error).message}`);
    return MarketsExit.USAGE;
  }
  setupLogging({ level: "warning" });
  const encoder = new TextEncoder();
  return await untilInterrupted((signal) =>
    marketsCommand(command, {
      stdout: async (text) => {
        const bytes = encoder.encode(text);
        let written = 0;
        while (written < bytes.length) {
          written += await Deno.stdout.write(bytes.subarray(written));
        }
      },
      stderr: (text) => Deno.stderr.writeSync(encoder.encode(text)),
      readStdin: () => new Response(Deno.stdin.readable).text(),
      signal,
    })
  );
}

/** Flags of the requester and of `markets` that take a value (the next word, without `=`). */
const VALUE_FLAGS = new Set([
  "--url",
  "--timeout",
  "--token",
  "--ca",
  "--type",
  "--file",
  "--all",
  "--start",
  "--end",
  "--period",
  "--adjust",
  "--out",
  "--format",
  "--columns",
  "--batch-size",
]);

/** Whether the arguments name the `markets` subcommand (after an optional HOST PORT). */
function isMarkets(args: string[]): boolean {
  const words: string[] = [];
  for (let i = 0; i < args.length && words.length < 3; i++) {
    if (args[i] === "--") break;
    if (args[i].startsWith("-")) {
      if (VALUE_FLAGS.has(args[i])) i++;
      continue;
    }
    words.push(args[i]);
  }
  return words[0] === "markets" ||
    (words[2] === "markets" && /^\d+$/.test(words[1]));
}

function parse(args: string[]) {
  const { values, positionals } = parseFlags({
    args,
    allowPositionals: true,
    options: {
      url: { type: "string" },
      timeout: { type: "string" },
      token: { type: "string" },
      ca: { type: "string" },
      progress: { type: "boolean" },
      compact: { type: "boolean" },
      resubmit: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  // `HOST PORT` is recognised by its numeric second word; everything after is the command.
  const hostPort = positionals.length >= 2 && /^\d+$/.test(positionals[1]);
  if (!hostPort && positionals.length >= 1 && looksLikeHost(positionals[0])) {
    throw new FlagError(
      `'${positionals[0]}' looks like a host but no PORT follows it: ` +
        `give HOST PORT (e.g. ${positionals[0]} 8766) or --url ws://${
          positionals[0]
        }:8766`,
    );
  }
  const url = serverUrl(
    values.url,
    hostPort ? positionals[0] : undefined,
    hostPort ? positionals[1] : undefined,
    8766,
  );
  const rest = hostPort ? positionals.slice(2) : positionals;
  let data: unknown = {};
  if (rest.length > 1) {
    const text = rest.slice(1).join(" ");
    try {
      data = JSON.parse(text);
    } catch (error) {
      throw new FlagError(
        `Cannot parse json-data: ${(error as Error).message}`,
      );
    }
  }
  return {
    url,
    command: rest[0] as string | undefined,
    data,
    timeout: values.timeout === undefined
      ? undefined
      : numberFlag("timeout", values.timeout, 30, { min: 0.001 }),
    ...requesterCredentials(values),
    progress: values.progress ?? false,
    compact: values.compact ?? false,
    resubmit: values.resubmit ?? false,
  };
}

/** A line on stderr that says what a failed answer means and what to try. */
function explain(answer: { success: boolean; available_commands?: unknown }) {
  const offered = answer.available_commands;
  if (!answer.success && Array.isArray(offered)) {
    console.error(
      `requester: ${
        offered.length > 0
          ? `available commands: ${offered.join(", ")}`
          : "no worker is connected"
      }`,
    );
  }
}

/** `sync` and `store …`: their flags and logic live in lib/requester/sync_cli.ts. */
async function storeCommands(which: "sync" | "store"): Promise<number> {
  setupLogging({ level: "warning" });
  const encoder = new TextEncoder();
  return await untilInterrupted((signal) => {
    const io = {
      stdout: (text: string) => Deno.stdout.writeSync(encoder.encode(text)),
      stderr: (text: string) => Deno.stderr.writeSync(encoder.encode(text)),
      signal,
    };
    return which === "sync"
      ? syncProgram(Deno.args, io)
      : storeProgram(Deno.args, io);
  });
}

async function main(): Promise<number> {
  if (isMarkets(Deno.args)) return await markets(Deno.args);
  const sub = storeSubcommand(Deno.args, VALUE_FLAGS);
  if (sub !== undefined) return await storeCommands(sub);
  let flags;
  try {
    flags = parse(Deno.args);
  } catch (error) {
    console.error(`requester: ${(error as Error).message}`);
    return RequesterExit.USAGE;
  }
  setupLogging({ level: "warning" });
  const client = new RequesterClient(flags.url, {
    token: flags.token,
    ca: flags.ca,
    timeout: flags.timeout,
    reconnect: flags.resubmit || flags.url.includes(","),
    resubmit: flags.resubmit,
  });
  try {
    await client.connect();
  } catch (error) {
    console.error(`requester: ${(error as Error).message}`);
    return exitCodeOf(error);
  }
  const print = (value: unknown) =>
    console.log(
      flags.compact ? JSON.stringify(value) : JSON.stringify(value, null, 2),
    );
  const onProgress = flags.progress
    ? (p: { done: number; total?: number }) =>
      console.error(`progress ${p.done}/${p.total ?? "?"}`)
    : undefined;
  try {
    if (flags.command !== undefined) {
      const answer = await client.request(flags.command, flags.data, {
        onProgress,
      });
      print(answer);
      explain(answer);
      return answerFailed(answer) ? RequesterExit.FAILED : RequesterExit.OK;
    }
    if (consoleMode({ console: true }) === "background") {
      console.error(
        "requester: no command given, and the terminal belongs to the foreground job: " +
          "give a command, or run the console in the foreground",
      );
      return RequesterExit.USAGE;
    }
    let status = 0;
    await runStdinConsole(async (line, write) => {
      const { words, json, error } = splitCommand(line, 1);
      const [command] = words;
      if (command === undefined) return "continue";
      if (command === "quit" || command === "exit") return "quit";
      if (command === "help") {
        write(
          "Type a command and optional JSON data, e.g.\n  get_time\n" +
            '  get_market {"symbol_type": "etf", "code": "510300"}\n  quit',
        );
        return "continue";
      }
      if (error) {
        write(`${error}: usage is <command> [json]`);
        return "continue";
      }
      try {
        const answer = await client.request(command, json, { onProgress });
        print(answer);
        explain(answer);
        // Commands piped in are a script: its exit code says whether any of them failed.
        if (answerFailed(answer)) status = RequesterExit.FAILED;
      } catch (e) {
        console.error(`requester: ${(e as Error).message}`);
        if (!client.connected) {
          status = exitCodeOf(e);
          return "quit";
        }
      }
      return "continue";
    }, {
      prompt: "requester> ",
      banner:
        `Connected to ${flags.url}: type '<command> [json]', 'help' or 'quit'`,
    });
    return status;
  } catch (error) {
    console.error(`requester: ${(error as Error).message}`);
    return exitCodeOf(error);
  } finally {
    await client.close();
  }
}

if (import.meta.main) Deno.exit(await main());
