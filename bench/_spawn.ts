/**
 * Starts a bench helper script as a `deno run -A` subprocess and waits for the JSON line it
 * prints once ready (`{"ready": true, ...}`).
 *
 * @module
 */

/** A running helper subprocess. */
export interface Helper {
  /** The subprocess's pid (the Deno process itself). */
  pid: number;
  /** The fields of its ready line. */
  info: Record<string, unknown>;
  /** Resolves with the exit status. */
  status: Promise<Deno.CommandStatus>;
  /** Sends `signal` (default SIGTERM) unless it has exited; then waits for the exit. */
  stop(signal?: Deno.Signal): Promise<void>;
}

/** Set `BENCH_VERBOSE=1` to see the helpers' stderr (their logs). */
const verbose = Deno.env.get("BENCH_VERBOSE") === "1";
/** Extra `deno run` flags for every helper, e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`. */
const extraFlags = (Deno.env.get("BENCH_DENO_FLAGS") ?? "").split(" ").filter(
  Boolean,
);

/** Runs `script` (a file next to this module) with `args`; resolves once it reports ready. */
export async function spawnHelper(
  script: string,
  args: string[] = [],
  readyTimeoutMs = 30_000,
): Promise<Helper> {
  const path = new URL(script, import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...extraFlags, path, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: verbose ? "inherit" : "null",
  }).spawn();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  const deadline = AbortSignal.timeout(readyTimeoutMs);
  let info: Record<string, unknown> | undefined;
  try {
    while (!info) {
      const chunk = await Promise.race([
        lines.read(),
        new Promise<never>((_, reject) =>
          deadline.addEventListener("abort", () => reject(deadline.reason), {
            once: true,
          })
        ),
      ]);
      if (chunk.done) throw new Error(`${script} exited before it was ready`);
      buffer += chunk.value;
      let nl: number;
      while (!info && (nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.startsWith('{"ready":true')) info = JSON.parse(line);
      }
    }
  } catch (error) {
    if (!exited) child.kill("SIGKILL");
    await status;
    throw error;
  }
  // Keep draining stdout so the helper never blocks on a full pipe.
  (async () => {
    try {
      while (!(await lines.read()).done);
    } catch { /* the process went away */ }
  })();
  return {
    pid: child.pid,
    info,
    status,
    async stop(signal: Deno.Signal = "SIGTERM") {
      if (!exited) {
        try {
          child.kill(signal);
        } catch { /* already gone */ }
      }
      await status;
    },
  };
}

/**
 * Resident memory of process `pid` in MiB (VmRSS from `/proc/<pid>/status`); NaN when
 * unreadable. Read through `cat`: Deno allows reading another process's `/proc` entry only
 * with `--allow-all`, and the bench task runs with `--allow-run` instead.
 */
export async function rssMiB(pid: number): Promise<number> {
  try {
    const { stdout, success } = await new Deno.Command("cat", {
      args: [`/proc/${pid}/status`],
      stderr: "null",
    }).output();
    if (!success) return NaN;
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(
      new TextDecoder().decode(stdout),
    );
    return match ? Number(match[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

async function cpuTimes(): Promise<{ busy: number; total: number }> {
  const { stdout } = await new Deno.Command("cat", { args: ["/proc/stat"] })
    .output();
  const fields = new TextDecoder().decode(stdout).split("\n")[0].trim().split(
    /\s+/,
  ).slice(1).map(Number);
  const total = fields.reduce((s, n) => s + n, 0);
  const idle = fields[3] + (fields[4] ?? 0);
  return { busy: total - idle, total };
}

/**
 * How busy the whole machine is over `ms`, as a percentage of all cores (0-100); NaN when
 * `/proc/stat` is unreadable. Other programs' load skews every number the bench prints.
 */
export async function machineBusy(ms = 1000): Promise<number> {
  try {
    const a = await cpuTimes();
    await new Promise((resolve) => setTimeout(resolve, ms));
    const b = await cpuTimes();
    return (b.busy - a.busy) / (b.total - a.total) * 100;
  } catch {
    return NaN;
  }
}

/** CPU seconds (user + system) used so far by each of `pids`, from `/proc/<pid>/stat`. */
export async function cpuSeconds(pids: number[]): Promise<number[]> {
  try {
    const { stdout } = await new Deno.Command("cat", {
      args: pids.map((pid) => `/proc/${pid}/stat`),
      stderr: "null",
    }).output();
    const lines = new TextDecoder().decode(stdout).trim().split("\n");
    return pids.map((_, i) => {
      // Fields after the `(comm)`: state is 0, utime 11, stime 12, in clock ticks (100 Hz).
      const f = (lines[i] ?? "").split(") ")[1]?.split(" ") ?? [];
      return (Number(f[11]) + Number(f[12])) / 100;
    });
  } catch {
    return pids.map(() => NaN);
  }
}

/**
 * Sets the CPU affinity of every thread of process `pid` (`taskset -a -p -c`); `cpus` such as
 * `"0"` or `"0-1"`. Resolves false when `taskset` is missing or refuses.
 */
export async function pinProcess(pid: number, cpus: string): Promise<boolean> {
  try {
    const { success } = await new Deno.Command("taskset", {
      args: ["-a", "-p", "-c", cpus, String(pid)],
      stdout: "null",
      stderr: "null",
    }).output();
    return success;
  } catch {
    return false;
  }
}

/** A running `nats-server`. */
export interface NatsServer {
  pid: number;
  url: string;
  stop(): Promise<void>;
}

/**
 * Starts `nats-server` (from PATH) on 127.0.0.1 and a free port; resolves `undefined` when it
 * is not installed, so the NATS rows are skipped rather than failing the bench.
 */
export async function startNatsServer(
  readyTimeoutMs = 10_000,
): Promise<NatsServer | undefined> {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("nats-server", {
      args: ["-a", "127.0.0.1", "-p", String(port)],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
  const status = child.status;
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    await status;
  };
  const until = Date.now() + readyTimeoutMs;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      break;
    } catch {
      if (Date.now() > until) {
        await stop();
        throw new Error(`nats-server did not listen on port ${port}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return { pid: child.pid, url: `nats://127.0.0.1:${port}`, stop };
}
