// Helpers shared by the entry programs' flag parsing.

import { parseArgs, type ParseArgsConfig } from "node:util";
import { inForeground } from "./console.ts";
import { parseLevel } from "./log.ts";

/** A flag value that is not acceptable; the program prints it on one line and exits 2. */
export class FlagError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FlagError";
  }
}

/** The edit distance between two words (insertions, deletions, substitutions, swaps). */
function distance(a: string, b: string): number {
  const d = Array.from(
    { length: a.length + 1 },
    (_, i) => Array.from({ length: b.length + 1 }, (_, j) => i === 0 ? j : i),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(
        d[i - 1][j] + 1,
        d[i][j - 1] + 1,
        d[i - 1][j - 1] + cost,
      );
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/** The known flag closest to `word`, when one is close enough to be what was meant. */
export function closestFlag(
  word: string,
  known: readonly string[],
): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const name of known) {
    const d = distance(word, name);
    if (d < bestDistance) [best, bestDistance] = [name, d];
  }
  return bestDistance <= Math.max(1, Math.floor(word.length / 3))
    ? best
    : undefined;
}

/**
 * `parseArgs` from `node:util`, with its mistakes as {@linkcode FlagError}s worded like ours: an
 * unknown flag names the closest known one.
 */
export function parseFlags<T extends ParseArgsConfig>(
  config: T,
): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (error) {
    const { code, message } = error as { code?: string; message: string };
    if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      const flag = /'(-[^']*)'/.exec(message)?.[1] ?? "";
      const name = flag.replace(/^-+/, "").split("=")[0];
      const near = closestFlag(name, Object.keys(config.options ?? {}));
      throw new FlagError(
        `Unknown option '${flag}'${
          near ? `: did you mean --${near}?` : ""
        } (see --help)`,
      );
    }
    throw new FlagError(message);
  }
}

/** Parses a number flag within bounds. */
export function numberFlag(
  name: string,
  value: string | undefined,
  fallback: number,
  { min = 0, integer = false }: { min?: number; integer?: boolean } = {},
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (
    value.trim() === "" || !Number.isFinite(n) || n < min ||
    (integer && !Number.isInteger(n))
  ) {
    throw new FlagError(
      `Invalid --${name} '${value}': expected ${
        integer ? "an integer" : "a number"
      } ≥ ${min}`,
    );
  }
  return n;
}

/** Parses a port number (0 picks a free port). */
export function portFlag(
  name: string,
  value: string | undefined,
  fallback: number,
): number {
  const port = numberFlag(name, value, fallback, { integer: true });
  if (port > 65535) {
    throw new FlagError(`Invalid --${name} '${value}': ports go up to 65535`);
  }
  return port;
}

/** Reads a file named by a flag, with the flag in the error. */
export function readFlagFile(
  name: string,
  path: string | undefined,
): string | undefined {
  if (path === undefined) return undefined;
  try {
    return Deno.readTextFileSync(path);
  } catch (error) {
    throw new FlagError(
      `Cannot read --${name} '${path}': ${(error as Error).message}`,
    );
  }
}

/** Reads an environment variable when permitted, else undefined. */
export function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

/** Flags every long-running program takes, for `parseArgs`. */
export const PROCESS_FLAGS = {
  grace: { type: "string" },
  console: { type: "boolean" },
  "no-console": { type: "boolean" },
  "log-level": { type: "string" },
  "log-format": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** Checks `--log-level` before anything starts, so a typo is a one-line error. */
export function logLevelFlag(value: string | undefined): string {
  const level = value ?? "info";
  try {
    parseLevel(level);
  } catch (error) {
    throw new FlagError(`Invalid --log-level: ${(error as Error).message}`);
  }
  return level;
}

/** Parses `--log-format`. */
export function logFormatFlag(value: string | undefined): "text" | "json" {
  const format = value ?? "text";
  if (format !== "text" && format !== "json") {
    throw new FlagError(
      `Invalid --log-format '${format}': expected text or json`,
    );
  }
  return format;
}

/**
 * Whether to read console commands: never with `--no-console`; on a terminal only in the
 * foreground (a job started with `&` would be stopped by SIGTTIN on its first read, and raw mode
 * by SIGTTOU), even with `--console`; off a terminal (a pipe, a file) only with `--console`.
 * `background` says the console is off because the terminal belongs to another job.
 */
export function consoleMode(
  values: { console?: boolean; "no-console"?: boolean },
): "on" | "off" | "background" {
  if (values["no-console"]) return "off";
  if (Deno.stdin.isTerminal()) return inForeground() ? "on" : "background";
  return values.console ? "on" : "off";
}

/** {@linkcode consoleMode} as a yes or no. */
export function wantsConsole(
  values: { console?: boolean; "no-console"?: boolean },
): boolean {
  return consoleMode(values) === "on";
}

/**
 * A secret from its flag or else its environment variable. A flag shows in `ps` to every user of
 * the machine, and `deno task` echoes it to the terminal: `warn` gets a line saying so.
 */
export function secretFlag(
  flag: string,
  value: string | undefined,
  variable: string,
  warn: (message: string) => void,
): string | undefined {
  if (value !== undefined) {
    warn(
      `--${flag} on the command line is visible to every user of this machine (ps) and ` +
        `echoed by deno task: prefer the environment variable ${variable}`,
    );
    return value || undefined;
  }
  return env(variable);
}

/** Calls `stop` on SIGINT or SIGTERM; a second signal exits at once. */
export function onStopSignal(stop: (signal: string) => Promise<void>): void {
  let stopping = false;
  const handle = (signal: Deno.Signal) => {
    if (stopping) Deno.exit(1);
    stopping = true;
    void stop(signal);
  };
  Deno.addSignalListener("SIGINT", () => handle("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => handle("SIGTERM"));
}

/**
 * The server URL from `--url` or positional `HOST PORT` (either, not both), checked for a
 * WebSocket scheme.
 */
export function serverUrl(
  flag: string | undefined,
  host: string | undefined,
  port: string | undefined,
  defaultPort: number,
): string {
  if (flag !== undefined && host !== undefined) {
    throw new FlagError("Give either --url or HOST PORT, not both");
  }
  const h = host ?? "localhost";
  let portNumber = defaultPort;
  if (port !== undefined) {
    const n = Number(port);
    if (!/^\d+$/.test(port) || n > 65535) {
      throw new FlagError(
        `Invalid PORT '${port}' after HOST '${h}': expected a port number 0–65535`,
      );
    }
    portNumber = n;
  }
  const url = flag ?? `ws://${h.includes(":") ? `[${h}]` : h}:${portNumber}`;
  // Several URLs, comma-separated, name the servers of a cluster.
  for (const one of url.split(",")) {
    if (!/^wss?:\/\/\S/.test(one.trim())) {
      throw new FlagError(
        `Invalid --url '${one}': expected ws://host:port or wss://host:port (several: comma-separated)`,
      );
    }
    try {
      new URL(one.trim());
    } catch {
      // `new URL` says only "Invalid URL"; the usual slip is a port past 65535.
      const port = /:(\d+)(?:[/?#]|$)/.exec(one.trim())?.[1];
      throw new FlagError(
        `Invalid --url '${one}': ${
          port !== undefined && Number(port) > 65535
            ? `port ${port} is past 65535`
            : "not a URL"
        }`,
      );
    }
  }
  return url;
}

/** Whether `word` reads as a host name or address rather than a command name. */
export function looksLikeHost(word: string): boolean {
  return word === "localhost" || /^[\d.]+$/.test(word) ||
    word.includes(":") || /^[a-z0-9-]+(\.[a-z0-9-]+)+$/i.test(word);
}
