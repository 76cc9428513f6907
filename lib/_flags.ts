// Helpers shared by the entry programs' flag parsing.

/** A flag value that is not acceptable; the program prints it on one line and exits 2. */
export class FlagError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FlagError";
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

/** Whether to read console commands: `--no-console` wins, then `--console`, else a terminal. */
export function wantsConsole(
  values: { console?: boolean; "no-console"?: boolean },
): boolean {
  if (values["no-console"]) return false;
  return values.console ?? Deno.stdin.isTerminal();
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
  const url = flag ??
    `ws://${h.includes(":") ? `[${h}]` : h}:${
      portFlag("port", port, defaultPort)
    }`;
  if (!/^wss?:\/\//.test(url)) {
    throw new FlagError(
      `Invalid --url '${url}': expected ws://host:port or wss://host:port`,
    );
  }
  return url;
}
