// The programs as a new user meets them: flags, consoles on a real terminal (a pseudo-terminal
// from util-linux `script`), background jobs, the wrong port.
import assert from "node:assert/strict";
import {
  Program,
  runProgram,
  SERVER_LOOPBACK_ARGS,
  startServerProgram,
} from "./_procs.ts";
import { startTestServer, startWorker, within } from "./_helpers.ts";
import { setupLogging, Worker } from "../lib/mod.ts";

setupLogging({ level: "error" });

const ROOT = new URL("../", import.meta.url).pathname;
const DENO = Deno.execPath();

function hasScript(): boolean {
  try {
    return new Deno.Command("script", { args: ["--version"] }).outputSync()
      .success;
  } catch {
    return false;
  }
}
const PTY = Deno.build.os === "linux" && hasScript();
const NO_PTY =
  "util-linux `script` (a pseudo-terminal) is not available here: terminal tests skipped";
if (!PTY) console.log(NO_PTY);

function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** `server.ts` on free loopback ports, as a shell command line. */
const SERVER_SHELL = [DENO, "run", "-A", "server.ts", ...SERVER_LOOPBACK_ARGS]
  .map(shellQuote).join(" ");

/** A command running on its own pseudo-terminal; what it prints is collected. */
class Terminal {
  readonly child: Deno.ChildProcess;
  output = "";
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #reading: Promise<void>;
  #changed = Promise.withResolvers<void>();

  constructor(shellCommand: string) {
    this.child = new Deno.Command("script", {
      args: ["-qfec", shellCommand, "/dev/null"],
      cwd: ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", TERM: "xterm" },
    }).spawn();
    this.#writer = this.child.stdin.getWriter();
    const { stdout, stderr } = this.child;
    this.#reading = (async () => {
      const read = async (stream: ReadableStream<Uint8Array>) => {
        for await (
          const chunk of stream.pipeThrough(new TextDecoderStream())
        ) {
          this.output += chunk;
          this.#changed.resolve();
          this.#changed = Promise.withResolvers<void>();
        }
      };
      await Promise.all([read(stdout), read(stderr)]);
    })();
  }

  /** Waits until the output from offset `from` on matches `pattern`, at most `timeoutMs`. */
  async waitFor(
    pattern: RegExp,
    timeoutMs = 20_000,
    from = 0,
  ): Promise<RegExpMatchArray> {
    const until = Date.now() + timeoutMs;
    while (true) {
      const m = this.output.slice(from).match(pattern);
      if (m) return m;
      const left = until - Date.now();
      if (left <= 0) {
        throw new Error(
          `No output matching ${pattern} within ${timeoutMs} ms:\n${this.output}`,
        );
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.#changed.promise,
        new Promise((r) => timer = setTimeout(r, left)),
      ]);
      clearTimeout(timer);
    }
  }

  async type(text: string): Promise<void> {
    await this.#writer.write(new TextEncoder().encode(text));
  }

  async close(): Promise<Deno.CommandStatus> {
    try {
      await this.#writer.close();
    } catch {
      // Already closed.
    }
    try {
      this.child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    const status = await this.child.status;
    await this.#reading;
    return status;
  }

  /** Waits for the command to end on its own, at most `timeoutMs`. */
  async done(timeoutMs = 20_000): Promise<Deno.CommandStatus> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const status = await Promise.race([
      this.child.status,
      new Promise<null>((r) => timer = setTimeout(() => r(null), timeoutMs)),
    ]);
    clearTimeout(timer);
    if (status === null) {
      await this.close();
      throw new Error(`Still running after ${timeoutMs} ms:\n${this.output}`);
    }
    await this.#writer.close().catch(() => {});
    await this.#reading;
    return status;
  }

  /** Same as `close()`, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

Deno.test({
  name:
    "requester console - on a terminal, the Up arrow recalls the last command",
  ignore: !PTY,
  fn: async () => {
    await using server = startTestServer();
    await using _worker = await startWorker(server);
    await using term = new Terminal(
      [
        DENO,
        "run",
        "-A",
        "requester.ts",
        "--url",
        server.requesterUrl,
        "--compact",
      ]
        .map(shellQuote).join(" "),
    );
    await term.waitFor(/requester> /);
    await term.type("get_time\r");
    await term.waitFor(/"success":true[^]*requester> /);
    await term.type("\x1b[A\r");
    await term.waitFor(/"success":true[^]*"success":true[^]*requester> /);
    await term.type("quit\r");
    assert.equal((await term.done()).code, 0, term.output);
    assert.doesNotMatch(term.output, /\^\[\[A|Cannot parse|Unknown/);
  },
});

Deno.test({
  name:
    "server console - on a terminal, list prints a table with a header, quit stops the server",
  ignore: !PTY,
  fn: async () => {
    const term = new Terminal(SERVER_SHELL);
    let worker: Worker | undefined;
    try {
      const port =
        (await term.waitFor(/Worker port listening on ws:\/\/[^:]+:(\d+)/))[1];
      await term.waitFor(/server> /);
      await term.type("list\r");
      await term.waitFor(/No workers connected/);
      worker = new Worker({ url: `ws://127.0.0.1:${port}`, name: "table-row" });
      const running = worker.start();
      const id = await within(worker.ready(), "the worker to connect");
      // The worker's name arrives with its registration, just after the connection.
      let header = "", row = "";
      for (let tries = 0; !row.includes("table-row") && tries < 100; tries++) {
        const from = term.output.length;
        await term.type("list\r");
        [header, row] = (await term.waitFor(
          /(CLIENT_ID[^\r\n]*)\r?\n([^\r\n]*)\r?\n/,
          20_000,
          from,
        )).slice(1);
      }
      assert.match(
        header,
        /^CLIENT_ID +NAME +ADDRESS +WEIGHT +IN_FLIGHT +SERVED +FAILURES +LATENCY_MS +STATE$/,
      );
      assert.match(
        row,
        new RegExp(
          `^${id} +table-row +127\\.0\\.0\\.1:\\d+ +1 +0/\\d+ +0 +0 +- +healthy$`,
        ),
      );
      // Columns line up: a text cell starts under its header.
      assert.equal(row.indexOf("table-row"), header.indexOf("NAME"));
      await worker.stop();
      await running;
      worker = undefined;
      await term.type("quit\r");
      assert.equal((await term.done()).code, 0, term.output);
      assert.match(term.output, /Stopped/);
    } finally {
      await worker?.stop();
      await term.close();
    }
  },
});

Deno.test({
  name:
    "server console - on a terminal, a log line prints above the prompt, and the prompt and the typed text come back under it",
  ignore: !PTY,
  fn: async () => {
    await using term = new Terminal(SERVER_SHELL);
    const port =
      (await term.waitFor(/Worker port listening on ws:\/\/[^:]+:(\d+)/))[1];
    await term.waitFor(/server> /);
    // Half a command typed when the log line comes.
    await term.type("lis");
    // readline moves the cursor with escape sequences between the prompt and the text.
    // deno-lint-ignore no-control-regex
    await term.waitFor(/server> (?:\x1b\[\d+G)?lis/);
    const from = term.output.length;
    const worker = new Worker({
      url: `ws://127.0.0.1:${port}`,
      name: "log-above",
    });
    const running = worker.start();
    try {
      await within(worker.ready(), "the worker to connect");
      await term.waitFor(
        // deno-lint-ignore no-control-regex
        /connected from[^]*server> (?:\x1b\[\d+G)?lis/,
        20_000,
        from,
      );
      const after = term.output.slice(from);
      // The log line starts a line of its own: the prompt line was cleared first.
      assert.match(
        after,
        // deno-lint-ignore no-control-regex
        /(^|\r\x1b\[2K|\n)\d{4}-\d\d-\d\d [^\n]*connected from/,
      );
      assert.doesNotMatch(
        term.output,
        // deno-lint-ignore no-control-regex
        /server> (?:\x1b\[\d+G)?(?:lis)?\d{4}-\d\d-\d\d/,
      );
      await term.type("t\r");
      await term.waitFor(/CLIENT_ID/, 20_000, from);
    } finally {
      await worker.stop();
      await running;
    }
    await term.type("quit\r");
    assert.equal((await term.done()).code, 0, term.output);
  },
});

Deno.test({
  name:
    "server - started with & on a terminal, it takes no console and keeps serving",
  ignore: !PTY,
  fn: async () => {
    // `set -m` gives the background job its own process group, as an interactive shell does;
    // reading the terminal from there would stop the server with SIGTTIN.
    const term = new Terminal(`set -m; ${SERVER_SHELL} & echo "PID=$!"; wait`);
    let pid = 0;
    try {
      pid = Number((await term.waitFor(/PID=(\d+)/))[1]);
      const port = Number(
        (await term.waitFor(/Requester port listening on ws:\/\/[^:]+:(\d+)/))[
          1
        ],
      );
      await term.waitFor(/Started in the background: no console/);
      const health = await fetch(`http://127.0.0.1:${port}/health`, {
        signal: AbortSignal.timeout(10_000),
      });
      assert.equal(health.status, 200);
      await health.body?.cancel();
      // `ps` rather than /proc: Deno asks for --allow-all to read /proc/<pid>.
      const ps = await new Deno.Command("ps", {
        args: ["-o", "stat=", "-p", String(pid)],
        stdout: "piped",
      }).output();
      const state = new TextDecoder().decode(ps.stdout).trim()[0];
      assert.notEqual(state, "T", "the server was stopped by the terminal");
      assert.doesNotMatch(term.output, /Console ready/);
      Deno.kill(pid, "SIGTERM");
      assert.equal((await term.done()).code, 0, term.output);
      pid = 0;
    } finally {
      if (pid) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch {
          // Already gone.
        }
      }
      await term.close();
    }
  },
});

Deno.test("requester - on the worker port it exits at once with a message naming the requester port", async () => {
  const { program, workerPort } = await startServerProgram();
  try {
    const out = await runProgram("requester.ts", [
      "127.0.0.1",
      String(workerPort),
      "get_time",
    ]);
    assert.equal(out.code, 5, out.stderr);
    assert.match(
      out.stderr,
      /is the worker port: requesters connect to the requester port/,
    );
  } finally {
    await program.stop("SIGTERM");
  }
});

Deno.test("flags - mistakes get one clear line and exit 2, never a stack trace", async () => {
  const cases: [string, string[], RegExp][] = [
    [
      "requester.ts",
      ["127.0.0.1", "get_time"],
      /'127\.0\.0\.1' looks like a host but no PORT follows it/,
    ],
    [
      "requester.ts",
      ["localhost", "99999", "get_time"],
      /Invalid PORT '99999' after HOST 'localhost'/,
    ],
    ["worker.ts", ["localhost", "80a"], /Invalid PORT '80a'/],
    [
      "worker.ts",
      ["--log-level", "chatty"],
      /Invalid --log-level: Unknown log level 'chatty'/,
    ],
    ["server.ts", ["--log-level", "chatty"], /Unknown log level 'chatty'/],
  ];
  for (const [script, args, expected] of cases) {
    const out = await runProgram(script, args);
    assert.equal(out.code, 2, `${script} ${args.join(" ")}: ${out.stderr}`);
    assert.match(out.stderr, expected);
    assert.doesNotMatch(out.stderr, /\n\s+at /, "no stack trace");
  }
});

Deno.test("flags - a token given as a flag works and warns that the environment is safer", async () => {
  const { program, requesterPort } = await startServerProgram([
    "--requester-token",
    "s3cret",
  ]);
  try {
    await program.waitFor(
      /--requester-token on the command line is visible.*SWITCHYARD_REQUESTER_TOKEN/,
    );
    const out = await runProgram("requester.ts", [
      "127.0.0.1",
      String(requesterPort),
      "--token",
      "s3cret",
      "get_market",
    ]);
    assert.match(
      out.stderr,
      /--token on the command line.*SWITCHYARD_REQUESTER_TOKEN/,
    );
    assert.doesNotMatch(out.stderr + program.lines.join("\n"), /s3cret/);
    // No worker: the answer fails, but it got past the token check.
    assert.match(out.stdout, /No available workers/);
  } finally {
    await program.stop("SIGTERM");
  }
});

Deno.test("worker - a wrong token logs 'check --token' and waits the longest backoff", async () => {
  const { program, workerPort } = await startServerProgram([
    "--worker-token",
    "right",
  ]);
  try {
    await using worker = new Program("worker.ts", [
      "127.0.0.1",
      String(workerPort),
      "--max-backoff",
      "0.2",
      "--provider",
      "demo",
      "--no-console",
    ], { SWITCHYARD_WORKER_TOKEN: "wrong" });
    await worker.waitFor(
      /unauthorized \(missing or wrong token\): check --token/,
    );
    // Every retry after a refusal waits the whole --max-backoff, not a short jittered delay.
    const refusals = () =>
      worker.lines.filter((l) => /check --token/.test(l)).length;
    for (let i = 0; refusals() < 2 && i < 400; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(refusals() >= 2, worker.lines.join("\n"));
    assert.ok(
      worker.lines.filter((l) => /Reconnecting/.test(l)).every((l) =>
        / in 200 ms/.test(l)
      ),
      worker.lines.join("\n"),
    );
    // One line per interval sums up the refusals, naming the address.
    await program.waitFor(
      /Refused \d+ connections with a missing or invalid token.*127\.0\.0\.1/,
    );
  } finally {
    await program.stop("SIGTERM");
  }
});

Deno.test("requester - ws:// against a TLS port or wss:// against a plain one says which to use", async () => {
  const { program, requesterPort } = await startServerProgram();
  try {
    const out = await runProgram("requester.ts", [
      "--url",
      `wss://127.0.0.1:${requesterPort}`,
      "get_time",
    ]);
    assert.equal(out.code, 3);
    assert.match(
      out.stderr,
      new RegExp(
        `the server does not speak TLS: use ws://127\\.0\\.0\\.1:${requesterPort}`,
      ),
    );
  } finally {
    await program.stop("SIGTERM");
  }
});

Deno.test("server - a port already taken is named in the error", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const out = await runProgram("server.ts", [
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "--requester-port",
      String(taken.addr.port),
      "--no-console",
    ]);
    assert.equal(out.code, 1, out.stderr);
    assert.match(
      out.stderr,
      new RegExp(
        `^server: Cannot listen on 127\\.0\\.0\\.1:${taken.addr.port} \\(requester port\\): .*in use`,
        "m",
      ),
    );
  } finally {
    taken.close();
  }
});

Deno.test("server - --log-format json writes one object per line, values unquoted in the message", async () => {
  const { program, workerPort } = await startServerProgram([
    "--log-format",
    "json",
  ]);
  try {
    const line = program.lines.find((l) =>
      l.includes("Worker port listening")
    )!;
    const record = JSON.parse(line);
    assert.equal(record.level, "INFO");
    assert.equal(record.logger, "switchyard.server");
    assert.equal(
      record.message,
      `Worker port listening on ws://127.0.0.1:${workerPort}`,
    );
    assert.deepEqual(record.properties, {
      scheme: "ws",
      host: "127.0.0.1",
      port: workerPort,
    });
    assert.ok(!Number.isNaN(Date.parse(record["@timestamp"])));
  } finally {
    await program.stop("SIGTERM");
  }
});
