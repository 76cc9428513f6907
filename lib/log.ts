/**
 * Logging set-up for the programs: human-readable lines or JSON lines, always on stderr so that
 * a program's own output (the requester's answers) stays clean on stdout.
 *
 * @module
 */

import {
  configureSync,
  getLogger,
  getTextFormatter,
  type Logger,
  type LogLevel,
  type LogRecord,
  parseLogLevel,
  resetSync,
} from "npm:@logtape/logtape@2.4.2";

/** Options for {@linkcode setupLogging}. */
export interface LoggingOptions {
  /** Lowest level written: `trace`, `debug`, `info`, `warning`, `error`, `fatal`. @default "info" */
  level?: string;
  /** `text` for people, `json` for log collectors. @default "text" */
  format?: "text" | "json";
  /** Where lines go. @default a writer to stderr */
  write?: (line: string) => void;
}

const encoder = new TextEncoder();

function writeStderr(line: string): void {
  if (aboveThePrompt) return aboveThePrompt(line);
  Deno.stderr.writeSync(encoder.encode(line));
}

let aboveThePrompt: ((line: string) => void) | undefined;

/**
 * While a console waits at its prompt on a terminal, log lines go through `print`, which clears
 * the prompt line, writes the log line and draws the prompt and the typed text again, so that a
 * log line never lands in the middle of what is being typed. `undefined` restores plain stderr.
 */
export function printLogsAbovePrompt(
  print: ((line: string) => void) | undefined,
): void {
  aboveThePrompt = print;
}

/** Writes `line` to stderr as is (for {@linkcode printLogsAbovePrompt}'s printer). */
export function writeLogLine(line: string): void {
  Deno.stderr.writeSync(encoder.encode(line));
}

/** Parses a `--log-level` value, with a clear error for an unknown one. */
export function parseLevel(text: string): LogLevel {
  const aliases: Record<string, string> = { warn: "warning", err: "error" };
  const name = aliases[text.toLowerCase()] ?? text.toLowerCase();
  try {
    return parseLogLevel(name);
  } catch {
    throw new RangeError(
      `Unknown log level '${text}': expected trace, debug, info, warning, error or fatal`,
    );
  }
}

/** A value in a message: strings as they are, anything else as JSON. */
function renderValue(value: unknown): string {
  if (typeof value === "string") return value;
  if (value instanceof Error) return value.message;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/**
 * One JSON line per record, with the fields of logtape's JSON Lines formatter (`@timestamp`,
 * `level`, `message`, `logger`, `properties`). Its rendered message quotes string values
 * (`Connected to "ws://…"`); this one keeps them as they are, so a message reads the same as in
 * the text format and the values stay typed under `properties`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatJsonLine } from "./log.ts";
 * const line = formatJsonLine({
 *   category: ["switchyard", "worker"],
 *   level: "info",
 *   message: ["Connected to ", "ws://h:8765", " as ", 7, ""],
 *   rawMessage: "Connected to {url} as {id}",
 *   timestamp: 0,
 *   properties: { url: "ws://h:8765", id: 7 },
 * });
 * assert.deepEqual(JSON.parse(line), {
 *   "@timestamp": "1970-01-01T00:00:00.000Z",
 *   level: "INFO",
 *   message: "Connected to ws://h:8765 as 7",
 *   logger: "switchyard.worker",
 *   properties: { url: "ws://h:8765", id: 7 },
 * });
 * ```
 */
export function formatJsonLine(record: LogRecord): string {
  let message = "";
  for (let i = 0; i < record.message.length; i++) {
    const part = record.message[i];
    message += i % 2 === 0 ? String(part) : renderValue(part);
  }
  const levels: Record<string, string> = { warning: "WARN" };
  return JSON.stringify(
    {
      "@timestamp": new Date(record.timestamp).toISOString(),
      level: levels[record.level] ?? record.level.toUpperCase(),
      message,
      logger: record.category.join("."),
      properties: record.properties,
    },
    (_key, value) =>
      typeof value === "bigint"
        ? String(value)
        : value instanceof Error
        ? { name: value.name, message: value.message }
        : value,
  ) + "\n";
}

/** Configures the `switchyard` log categories; call once per program. */
export function setupLogging(options: LoggingOptions = {}): void {
  const level = parseLevel(options.level ?? "info");
  const write = options.write ?? writeStderr;
  const format = options.format === "json" ? formatJsonLine : getTextFormatter({
    timestamp: "date-time-timezone",
    category: ".",
    // Strings as they are: `ws://host:port`, not `"ws"://"host"`.
    value: (v: unknown) =>
      typeof v === "string" ? v : Deno.inspect(v, { colors: false }),
  });
  resetSync();
  configureSync({
    reset: true,
    sinks: { main: (record: LogRecord) => write(format(record)) },
    loggers: [
      { category: ["switchyard"], lowestLevel: level, sinks: ["main"] },
      {
        category: ["logtape", "meta"],
        lowestLevel: "warning",
        sinks: ["main"],
      },
    ],
  });
}

/** A logger under the `switchyard` category. */
export function logger(...category: string[]): Logger {
  return getLogger(["switchyard", ...category]);
}
