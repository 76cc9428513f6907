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
  jsonLinesFormatter,
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

/** Configures the `switchyard` log categories; call once per program. */
export function setupLogging(options: LoggingOptions = {}): void {
  const level = parseLevel(options.level ?? "info");
  const write = options.write ?? writeStderr;
  const format = options.format === "json"
    ? jsonLinesFormatter
    : getTextFormatter({
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
