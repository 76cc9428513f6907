/**
 * Operator consoles: the server's (`list`, `send`, `broadcast`, `stats`) and the worker's
 * (`request`, `status`). Each command takes a line and a `write` function, so a console is
 * testable without a terminal.
 *
 * @module
 */

import process from "node:process";
import { createInterface } from "node:readline";
import type { Broker } from "./broker/broker.ts";
import type { WorkerInfo } from "./broker/registry.ts";
import type { Worker } from "./worker/worker_client.ts";
import { printLogsAbovePrompt, writeLogLine } from "./log.ts";

/** Carriage return and erase the line: where the prompt was. */
const CLEAR_LINE = new TextEncoder().encode("\r\x1b[2K");

/** What a console command asks of the program. */
export type ConsoleResult = "continue" | "quit";

/** Splits `word word {json…}`: the first `count` words, then the rest parsed as JSON. */
export function splitCommand(
  line: string,
  count: number,
): { words: string[]; json: unknown; error?: string } {
  const words: string[] = [];
  let rest = line.trim();
  while (words.length < count && rest !== "") {
    const match = /^(\S+)\s*/.exec(rest)!;
    words.push(match[1]);
    rest = rest.slice(match[0].length);
  }
  if (rest === "") return { words, json: {} };
  try {
    return { words, json: JSON.parse(rest) };
  } catch (error) {
    return {
      words,
      json: undefined,
      error: `Cannot parse params as JSON: ${(error as Error).message}`,
    };
  }
}

function pretty(value: unknown): string {
  return JSON.stringify(value, null, 2);
}

const SERVER_HELP = [
  "Commands:",
  "  help                                 this text",
  "  list                                 connected workers",
  "  send <client_id> <action> [json]     run an action on one worker",
  "  run <action> [json]                  run a server action here (get_time, get_client_info, calculate)",
  "  broadcast <message>                  notify every worker",
  "  stats                                counters",
  "  quit                                 drain and stop the server",
].join("\n");

/** Runs one server console line. */
export async function serverCommand(
  broker: Broker,
  line: string,
  write: (text: string) => void,
): Promise<ConsoleResult> {
  return await runLine(line, SERVER_HELP, write, {
    list: () => write(workerList(broker.workers())),
    stats: () => write(pretty(broker.stats())),
    broadcast: () => {
      const message = line.trim().slice("broadcast".length).trim();
      write(
        message === ""
          ? "Usage: broadcast <message>"
          : `Sent to ${broker.broadcast(message)} workers`,
      );
    },
    send: async () => {
      const { words, json, error } = splitCommand(line, 3);
      if (words.length < 3 || error) {
        write(error ?? "Usage: send <client_id> <action> [json params]");
        return;
      }
      const [, clientId, action] = words;
      const outcome = await broker.send(clientId, action, json);
      write(
        outcome.ok
          ? pretty(outcome.result)
          : `Error (${outcome.error.code}): ${outcome.error.message}`,
      );
    },
    run: () =>
      actionCommand(
        line,
        write,
        (action, params) => broker.runAction(action, params),
      ),
  });
}

/** The `list` table; in a cluster, every server's workers, each with its server. */
function workerList(workers: WorkerInfo[]): string {
  if (workers.length === 0) return "No workers connected";
  const clustered = workers.some((w) => w.server !== undefined);
  return formatTable(
    [
      "CLIENT_ID",
      "NAME",
      ...(clustered ? ["SERVER"] : []),
      "ADDRESS",
      "WEIGHT",
      "IN_FLIGHT",
      "SERVED",
      "FAILURES",
      "LATENCY_MS",
      "STATE",
    ],
    workers.map((w) => [
      w.client_id,
      w.name,
      ...(clustered ? [w.server ?? "-"] : []),
      w.address,
      String(w.weight),
      `${w.in_flight}/${w.max_concurrency}`,
      String(w.served),
      String(w.failures),
      w.latency_ms === null ? "-" : String(w.latency_ms),
      [w.healthy ? "healthy" : "UNHEALTHY", w.draining ? "draining" : ""]
        .filter(Boolean).join(","),
    ]),
  );
}

const WORKER_HELP = [
  "Commands:",
  "  help                      this text",
  "  request <action> [json]   run a server action (get_time, get_client_info, calculate)",
  "  status                    connection and counters",
  "  quit                      finish in-flight work and stop",
].join("\n");

/** Runs one worker console line. */
export async function workerCommand(
  worker: Worker,
  line: string,
  write: (text: string) => void,
): Promise<ConsoleResult> {
  return await runLine(line, WORKER_HELP, write, {
    status: () => write(pretty(worker.status())),
    request: () =>
      actionCommand(
        line,
        write,
        (action, params) => worker.request(action, params),
      ),
  });
}

/** A console's own commands, by the line's first word; each writes what it has to say. */
type Commands = Record<string, () => void | Promise<void>>;

/**
 * Runs `line` with one of `commands`, or what both consoles do alike: nothing for a blank line,
 * `help`, `quit`/`exit`, and a clear word for an unknown command.
 */
async function runLine(
  line: string,
  help: string,
  write: (text: string) => void,
  commands: Commands,
): Promise<ConsoleResult> {
  const [command = ""] = line.trim().split(/\s+/);
  if (Object.hasOwn(commands, command)) {
    await commands[command]();
    return "continue";
  }
  if (command === "quit" || command === "exit") return "quit";
  if (command === "help") write(help);
  else if (command !== "") {
    write(`Unknown command '${command}': type 'help' for the list`);
  }
  return "continue";
}

/** `<command> <action> [json params]`: prints what `call` resolves with, or its error. */
async function actionCommand(
  line: string,
  write: (text: string) => void,
  call: (action: string, params: unknown) => Promise<unknown>,
): Promise<void> {
  const { words, json, error } = splitCommand(line, 2);
  if (words.length < 2 || error) {
    write(error ?? `Usage: ${words[0]} <action> [json params]`);
    return;
  }
  try {
    write(pretty(await call(words[1], json)));
  } catch (e) {
    write(`Error: ${(e as Error).message}`);
  }
}

/**
 * Rows as text columns padded to their widest cell, under a header; numbers align right.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatTable } from "./console.ts";
 * assert.equal(
 *   formatTable(["NAME", "SERVED"], [["a", "7"], ["bb", "12"]]),
 *   "NAME  SERVED\na          7\nbb        12",
 * );
 * ```
 */
export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) =>
    Math.max(h.length, ...rows.map((row) => (row[i] ?? "").length))
  );
  const numeric = header.map((_, i) =>
    rows.length > 0 &&
    rows.every((row) => /^-?[\d.]+(\/\d+)?$|^-$/.test(row[i] ?? ""))
  );
  const line = (cells: string[]) =>
    cells.map((cell, i) =>
      numeric[i]
        ? cell.padStart(widths[i])
        : i === cells.length - 1
        ? cell
        : cell.padEnd(widths[i])
    ).join("  ").trimEnd();
  return [header, ...rows].map(line).join("\n");
}

/** Yields the lines of a byte stream, such as `Deno.stdin.readable`. */
export async function* readLines(
  stream: ReadableStream<Uint8Array>,
): AsyncGenerator<string> {
  let buffer = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buffer += chunk;
    let newline: number;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      yield buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
    }
  }
  if (buffer !== "") yield buffer;
}

/**
 * Whether this process may read its terminal: false for a job started with `&` (or moved to the
 * background), which the kernel would stop with SIGTTIN on its first read. Linux tells through
 * `/proc/self/stat` (the process group against the terminal's foreground group); where that
 * cannot be read the answer is true, and `--no-console` is the way to background a program.
 */
export function inForeground(): boolean {
  try {
    const stat = Deno.readTextFileSync("/proc/self/stat");
    // Fields after the parenthesised command name: state ppid pgrp session tty_nr tpgid …
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const pgrp = Number(fields[2]);
    const tpgid = Number(fields[5]);
    return tpgid <= 0 || pgrp === tpgid;
  } catch {
    return true;
  }
}

/** Options for {@linkcode runStdinConsole}. */
export interface StdinConsoleOptions {
  /** Shown before each line on a terminal. @default "> " */
  prompt?: string;
  /** Printed once when the console starts. @default "Console ready: type 'help' for commands" */
  banner?: string;
}

/**
 * Reads commands from stdin until `quit` or end of input, printing to stdout. On a terminal the
 * line is editable, with history on the Up and Down arrows (`node:readline`); Ctrl-C stops the
 * program as SIGINT does.
 */
export async function runStdinConsole(
  run: (line: string, write: (text: string) => void) => Promise<ConsoleResult>,
  options: StdinConsoleOptions = {},
): Promise<void> {
  const terminal = Deno.stdin.isTerminal();
  const rl = createInterface({
    input: process.stdin,
    output: process.stdout,
    terminal,
    historySize: 500,
    removeHistoryDuplicates: true,
    prompt: options.prompt ?? "> ",
  });
  // Raw mode swallows Ctrl-C; hand it to the program's own SIGINT handling (drain, then exit).
  rl.on("SIGINT", () => Deno.kill(Deno.pid, "SIGINT"));
  const write = (text: string) => console.log(text);
  write(options.banner ?? "Console ready: type 'help' for commands");
  const prompt = () => {
    rl.prompt(true);
    // Only while the prompt shows: a command's own output is not interrupted.
    if (terminal) printLogsAbovePrompt(printAbove);
  };
  const printAbove = (line: string) => {
    Deno.stdout.writeSync(CLEAR_LINE);
    writeLogLine(line);
    rl.prompt(true);
  };
  try {
    if (terminal) prompt();
    for await (const line of rl) {
      printLogsAbovePrompt(undefined);
      if (await run(line, write) === "quit") return;
      if (terminal) prompt();
    }
  } finally {
    printLogsAbovePrompt(undefined);
    rl.close();
  }
}
