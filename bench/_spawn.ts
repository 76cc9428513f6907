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

/** Runs `script` (a file next to this module) with `args`; resolves once it reports ready. */
export async function spawnHelper(
  script: string,
  args: string[] = [],
  readyTimeoutMs = 30_000,
): Promise<Helper> {
  const path = new URL(script, import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", path, ...args],
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

/** Resident memory of process `pid` in MiB, from `/proc/<pid>/status`; NaN when unreadable. */
export function rssMiB(pid: number): number {
  try {
    const text = Deno.readTextFileSync(`/proc/${pid}/status`);
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(text);
    return match ? Number(match[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}
