// Real programs as subprocesses, for end-to-end tests.

const ROOT = new URL("../", import.meta.url);
const PERMISSIONS = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-sys",
];

/** A running program whose stderr is collected line by line. */
export class Program {
  readonly child: Deno.ChildProcess;
  readonly lines: string[] = [];
  readonly exited: Promise<Deno.CommandStatus>;
  #waiters = new Set<
    { pattern: RegExp; resolve: (m: RegExpMatchArray) => void }
  >();
  #drained: Promise<void>;

  constructor(
    script: string,
    args: string[],
    env: Record<string, string> = {},
  ) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", ...PERMISSIONS, new URL(script, ROOT).pathname, ...args],
      cwd: ROOT.pathname,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", ...env },
    }).spawn();
    this.#drained = Promise.all([
      this.#collect(this.child.stderr),
      this.#collect(this.child.stdout),
    ]).then(() => {});
    this.exited = this.child.status;
  }

  async #collect(stream: ReadableStream<Uint8Array>): Promise<void> {
    let buffer = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      buffer += chunk;
      let i: number;
      while ((i = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, i);
        buffer = buffer.slice(i + 1);
        this.lines.push(line);
        for (const w of this.#waiters) {
          const m = line.match(w.pattern);
          if (m) {
            this.#waiters.delete(w);
            w.resolve(m);
          }
        }
      }
    }
  }

  /** Resolves with the first line (past or future) matching `pattern`. */
  waitFor(pattern: RegExp, timeoutMs = 20_000): Promise<RegExpMatchArray> {
    for (const line of this.lines) {
      const m = line.match(pattern);
      if (m) return Promise.resolve(m);
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        pattern,
        resolve: (m: RegExpMatchArray) => {
          clearTimeout(timer);
          resolve(m);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter);
        reject(
          new Error(
            `No line matching ${pattern} within ${timeoutMs} ms:\n${
              this.lines.join("\n")
            }`,
          ),
        );
      }, timeoutMs);
      this.#waiters.add(waiter);
    });
  }

  kill(signal: Deno.Signal = "SIGTERM"): void {
    try {
      this.child.kill(signal);
    } catch {
      // Already gone.
    }
  }

  /** Waits for exit and for both output streams to end. */
  async done(): Promise<Deno.CommandStatus> {
    const status = await this.exited;
    await this.#drained;
    return status;
  }

  /** Kills (if needed) and waits. */
  async stop(signal: Deno.Signal = "SIGKILL"): Promise<Deno.CommandStatus> {
    this.kill(signal);
    return await this.done();
  }

  /** Same as `stop()`, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/**
 * Kills `child` (if needed) at the end of an `await using` scope, waits for it, and releases
 * the pipes nobody read: for programs spawned by hand rather than through {@linkcode Program}.
 */
export function reaped(child: Deno.ChildProcess): AsyncDisposable {
  return {
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch {
        // Already gone.
      }
      await child.status;
      // A pipe's getter throws when it was not piped; a locked one is its reader's to release.
      const pipe = <T>(get: () => T) => {
        try {
          return get();
        } catch {
          return undefined;
        }
      };
      const stdin = pipe(() => child.stdin);
      if (stdin && !stdin.locked) await stdin.abort().catch(() => {});
      for (const out of [pipe(() => child.stdout), pipe(() => child.stderr)]) {
        if (out && !out.locked) await out.cancel().catch(() => {});
      }
    },
  };
}

/** `count` `worker.ts` processes named `w0`… on `url`, fetching from `upstreamUrl` unthrottled. */
export function marketWorkers(
  url: string,
  upstreamUrl: string,
  count: number,
  extra: string[] = [],
): Program[] {
  return Array.from({ length: count }, (_, i) =>
    new Program("worker.ts", [
      "--url",
      url,
      "--name",
      `w${i}`,
      "--eastmoney-url",
      upstreamUrl,
      "--rate-limit",
      "0",
      ...extra,
      "--no-console",
    ]));
}

/** A running `server.ts` and its ports; `await using` kills it at the end of the scope. */
export interface ServerProgram extends AsyncDisposable {
  program: Program;
  workerPort: number;
  requesterPort: number;
}

/** `server.ts` flags for both its ports on free loopback ports. */
export const SERVER_LOOPBACK_ARGS: readonly string[] = [
  "--host",
  "127.0.0.1",
  "--port",
  "0",
  "--requester-port",
  "0",
];

/** Starts `server.ts` on free loopback ports and resolves with its ports once it listens. */
export async function startServerProgram(
  args: string[] = [],
): Promise<ServerProgram> {
  const program = new Program("server.ts", [
    ...SERVER_LOOPBACK_ARGS,
    "--no-console",
    ...args,
  ]);
  try {
    const w = await program.waitFor(
      /Worker port listening on wss?:\/\/[^:]+:(\d+)/,
    );
    const r = await program.waitFor(
      /Requester port listening on wss?:\/\/[^:]+:(\d+)/,
    );
    return {
      program,
      workerPort: Number(w[1]),
      requesterPort: Number(r[1]),
      [Symbol.asyncDispose]: () => program[Symbol.asyncDispose](),
    };
  } catch (error) {
    await program.stop();
    throw error;
  }
}

/**
 * Spawns `requester.ts` against `url` with its console on pipes (compact answers, one a line);
 * the caller writes commands to its stdin and reaps it.
 */
export function spawnRequesterConsole(url: string): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("requester.ts", ROOT).pathname,
      "--url",
      url,
      "--compact",
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
}

/** Runs a program to completion and returns its exit code and output. */
export async function runProgram(
  script: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...PERMISSIONS, new URL(script, ROOT).pathname, ...args],
    cwd: ROOT.pathname,
    stdin: "null",
    env: { NO_COLOR: "1" },
  }).output();
  const decoder = new TextDecoder();
  return {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
  };
}

/** Polls the server's `/health` until `predicate` holds. */
export async function waitForHealth(
  port: number,
  predicate: (health: Record<string, number | string>) => boolean,
  timeoutMs = 20_000,
): Promise<Record<string, number | string>> {
  const until = Date.now() + timeoutMs;
  let last: Record<string, number | string> = {};
  while (Date.now() < until) {
    const res = await fetch(`http://127.0.0.1:${port}/health`);
    last = await res.json();
    if (predicate(last)) return last;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`Health never matched: ${JSON.stringify(last)}`);
}
