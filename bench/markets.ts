/**
 * Markets section: the job users run — symbols × daily history into CSV files with
 * `requester.ts markets` — over 1, 3 and 6 worker processes, each with its own fake upstream in
 * a process of its own (its own "IP address", +75 ms per call) and a polite rate limit of 2
 * requests/s. Every process is real: the server, the workers, the upstreams and the requester.
 *
 * Configurations, interleaved in each run (the order reversed every other run):
 * - one batch (`--batch-size` = the symbols: one streamed `get_markets`, as a library caller
 *   sends it) of 40 symbols per worker, and the default flags (two batches of 200 at a time) on
 *   240 symbols (two batches, 200 and 40, that share the workers, then one alone);
 * - histories of one year and of ten years (≈ 250 and ≈ 2,500 bars, ≈ 60 KB and ≈ 600 KB a
 *   symbol on the wire: large items shrink a streamed batch's window).
 * The ideal time is what the rate limits allow: symbols ÷ (workers × rate). Each job's items/s
 * over its ten tenths shows where time goes: a slow start, a sag, a tail.
 *
 * On the 6-worker default ten-year cluster, after its clean job: the same job with `--resume`
 * and into a fresh folder (warm worker caches); and in another cluster, the same job with one
 * worker's upstream banning it (resetting every connection) half-way.
 *
 * @module
 */

import { cpuSeconds, rssMiB, spawnHelper } from "./_spawn.ts";
import { type Check, fixed, table } from "./_stats.ts";

/** Options for {@linkcode runMarketsBench}. */
export interface MarketsBenchOptions {
  /** Worker-process counts. @default [1, 3, 6] */
  workers?: number[];
  /** Symbols per worker in a one-batch job. @default 40 */
  oneBatchPerWorker?: number;
  /** Symbols in a default-flags job. @default 240 */
  defaultSymbols?: number;
  /** Upstream requests per second per worker. @default 2 */
  rateLimit?: number;
  /** Fake upstream latency per call, ms. @default 75 */
  latencyMs?: number;
  /** Interleaved runs. @default 3 */
  runs?: number;
  /** Also the ban, resume and warm jobs. @default true */
  resilience?: boolean;
  /** Progress lines (stderr). */
  log?: (line: string) => void;
}

/** How the job is cut into batches. */
export type Batching = "one batch" | "default";
/** History length asked for. */
export type History = "1y" | "10y";

/** One job. */
export interface MarketsRow {
  run: number;
  kind: "clean" | "ban" | "resume" | "warm";
  workers: number;
  batching: Batching;
  history: History;
  symbols: number;
  /** The job's own wall time (its summary line), s. */
  elapsedS: number;
  /** Symbols ÷ (workers × rate), s. */
  idealS: number;
  /** Items per second in each tenth of the job (files that appeared). */
  profile: number[];
  ok: number;
  failed: number;
  skipped: number;
  /** Symbols with no complete CSV file at the end. */
  lost: number;
  /** Requests the fake upstreams received during the job. */
  upstreamCalls: number;
  serverRssMiB: number;
  requesterRssMiB: number;
  /**
   * CPU seconds the job's processes used (server, workers, their upstreams, the requester):
   * against the wall time, it tells a job the CPU held back from one the schedule did.
   */
  cpuS: number;
  /** Failures by error code (from `failed.txt`). */
  failures: Record<string, number>;
  exitCode: number;
}

/** The section's outcome. */
export interface MarketsReport {
  workers: number[];
  rateLimit: number;
  latencyMs: number;
  runs: number;
  rows: MarketsRow[];
  checks: Check[];
}

const ROOT = new URL("../", import.meta.url).pathname;
const HISTORY_START: Record<History, string> = {
  // The fake's synthetic bars end 2026-03-20.
  "1y": "2025-03-21",
  "10y": "2016-03-21",
};

/** One fake upstream in a process of its own, with its ban switch and call counter. */
interface Upstream {
  pid: number;
  url: string;
  control: string;
  stop(): Promise<void>;
}

async function startUpstream(
  latencyMs: number,
  warm: number,
): Promise<Upstream> {
  const fake = await spawnHelper("_fake_upstreams.ts", [
    "--count",
    "1",
    "--latency-ms",
    String(latencyMs),
    "--warm",
    String(warm),
  ], 600_000);
  return {
    pid: fake.pid,
    url: (fake.info.urls as string[])[0],
    control: String(fake.info.control),
    stop: () => fake.stop("SIGKILL"),
  };
}

interface Cluster {
  serverPid: number;
  /** The server's, the workers' and their upstreams' processes. */
  pids: number[];
  requesterUrl: string;
  stop(): Promise<void>;
}

/** A server and `rateLimit`-limited workers, one per upstream. */
async function startCluster(
  upstreams: Upstream[],
  rateLimit: number,
): Promise<Cluster> {
  await Promise.all(
    upstreams.map((u) =>
      fetch(`${u.control}/unban`, { method: "POST" }).then((r) =>
        r.body?.cancel()
      )
    ),
  );
  // Only this job's workers: a worker of another program still retrying a port the system has
  // since handed to this server would otherwise join its pool.
  const token = crypto.randomUUID();
  const server = await spawnHelper("_server.ts", ["--worker-token", token]);
  const port = Number(server.info.port);
  const children = upstreams.map((upstream, i) =>
    new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${ROOT}worker.ts`,
        "--url",
        `ws://127.0.0.1:${port}`,
        "--name",
        `bench-${i}`,
        "--eastmoney-url",
        upstream.url,
        "--rate-limit",
        String(rateLimit),
        "--budget-hour",
        "0",
        "--budget-day",
        "0",
        "--token",
        token,
        "--no-console",
        "--log-level",
        "error",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn()
  );
  const stop = async () => {
    for (const c of children) {
      try {
        c.kill("SIGKILL");
      } catch { /* gone */ }
    }
    await Promise.all(children.map((c) => c.status));
    await server.stop("SIGKILL");
  };
  const until = Date.now() + 60_000;
  while (true) {
    const health = await fetch(`http://127.0.0.1:${port}/health`).then((r) =>
      r.json()
    ).catch(() => ({}));
    if (
      health.healthy_workers === upstreams.length ||
      health.workers === upstreams.length
    ) break;
    if (Date.now() > until) {
      await stop();
      throw new Error(
        `${upstreams.length} workers did not connect within 60 s: /health said ${
          JSON.stringify(health)
        }`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    serverPid: server.pid,
    pids: [
      server.pid,
      ...children.map((c) => c.pid),
      ...upstreams.map((u) => u.pid),
    ],
    requesterUrl: `ws://127.0.0.1:${server.info.requesterPort}`,
    stop,
  };
}

async function upstreamCalls(upstreams: Upstream[]): Promise<number> {
  let sum = 0;
  for (const u of upstreams) {
    const calls = await fetch(`${u.control}/calls`).then((r) =>
      r.json()
    ) as number[];
    sum += calls.reduce((s, n) => s + n, 0);
  }
  return sum;
}

function countCsv(dir: string): number {
  try {
    let n = 0;
    for (const e of Deno.readDirSync(dir)) {
      if (e.isFile && e.name.endsWith(".csv")) n++;
    }
    return n;
  } catch {
    return 0;
  }
}

/** Items/s in each tenth of a job, from (ms since start, files) samples. */
function tenths(samples: [number, number][], elapsedMs: number): number[] {
  const at = (t: number) => {
    let n = 0;
    for (const [ms, files] of samples) {
      if (ms > t) break;
      n = files;
    }
    return n;
  };
  const step = elapsedMs / 10;
  return Array.from(
    { length: 10 },
    (_, i) => (at((i + 1) * step) - at(i * step)) / (step / 1000),
  );
}

/** Runs `requester.ts markets` once, sampling memory and files; bans upstream 0 when asked. */
async function job(
  cluster: Cluster,
  listFile: string,
  outDir: string,
  options: {
    history: History;
    batchSize?: number;
    resume?: boolean;
    ban?: { at: number; upstream: Upstream };
  },
): Promise<
  Pick<
    MarketsRow,
    | "elapsedS"
    | "profile"
    | "ok"
    | "failed"
    | "skipped"
    | "serverRssMiB"
    | "requesterRssMiB"
    | "cpuS"
    | "failures"
    | "exitCode"
  >
> {
  const cpuBefore = await cpuSeconds(cluster.pids);
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}requester.ts`,
      "--url",
      cluster.requesterUrl,
      "markets",
      "--type",
      "stock",
      "--file",
      listFile,
      "--out",
      outDir,
      "--start",
      HISTORY_START[options.history],
      ...(options.batchSize ? ["--batch-size", String(options.batchSize)] : []),
      ...(options.resume ? ["--resume"] : []),
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let serverRss = 0;
  let requesterRss = 0;
  let banned = false;
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const started = Date.now();
  const samples: [number, number][] = [];
  let lastRss = 0;
  let requesterCpu = 0;
  while (!exited) {
    const files = countCsv(outDir);
    samples.push([Date.now() - started, files]);
    if (Date.now() - lastRss >= 1000) {
      lastRss = Date.now();
      serverRss = Math.max(serverRss, await rssMiB(cluster.serverPid) || 0);
      requesterRss = Math.max(requesterRss, await rssMiB(child.pid) || 0);
    }
    requesterCpu = (await cpuSeconds([child.pid]))[0] || requesterCpu;
    if (options.ban && !banned && files >= options.ban.at) {
      banned = true;
      await fetch(`${options.ban.upstream.control}/ban?i=0`, {
        method: "POST",
      }).then((r) => r.body?.cancel());
    }
    await Promise.race([status, new Promise((r) => setTimeout(r, 100))]);
  }
  const { code } = await status;
  samples.push([Date.now() - started, countCsv(outDir)]);
  const cpuAfter = await cpuSeconds(cluster.pids);
  const failures: Record<string, number> = {};
  try {
    const lines = (await Deno.readTextFile(`${outDir}/failed.txt`)).trim()
      .split("\n").slice(1);
    for (const line of lines) {
      const code = line.split(",")[2] ?? "?";
      failures[code] = (failures[code] ?? 0) + 1;
    }
  } catch { /* none failed */ }
  const text = await stderr;
  const num = (label: string) =>
    Number(new RegExp(`^${label}\\s+([\\d.]+)`, "m").exec(text)?.[1] ?? NaN);
  if (Number.isNaN(num("ok"))) {
    throw new Error(`The markets job printed no summary:\n${text}`);
  }
  // The job's own clock starts after the requester's start-up, which the samples include: the
  // profile covers the job's time, counted back from the end.
  const elapsedMs = num("time") * 1000;
  const offset = Math.max(0, (samples.at(-1)?.[0] ?? 0) - elapsedMs);
  return {
    elapsedS: num("time"),
    profile: tenths(
      samples.map(([ms, n]) => [ms - offset, n] as [number, number]),
      elapsedMs,
    ),
    ok: num("ok"),
    failed: num("failed"),
    skipped: Number.isNaN(num("skipped")) ? 0 : num("skipped"),
    serverRssMiB: serverRss,
    requesterRssMiB: requesterRss,
    cpuS: cpuAfter.reduce((s, v, i) => s + v - cpuBefore[i], 0) +
      requesterCpu,
    failures,
    exitCode: code,
  };
}

interface Config {
  workers: number;
  batching: Batching;
  history: History;
  symbols: number;
}

/** Runs the markets section. */
export async function runMarketsBench(
  options: MarketsBenchOptions = {},
): Promise<MarketsReport> {
  const log = options.log ?? (() => {});
  const counts = options.workers ?? [1, 3, 6];
  const rate = options.rateLimit ?? 2;
  const latency = options.latencyMs ?? 75;
  const runs = options.runs ?? 3;
  const perWorker = options.oneBatchPerWorker ?? 40;
  const defaultSymbols = options.defaultSymbols ?? 240;
  const resilience = options.resilience ?? true;
  const configs: Config[] = [];
  for (const history of ["1y", "10y"] as const) {
    for (const workers of counts) {
      configs.push({
        workers,
        batching: "one batch",
        history,
        symbols: perWorker * workers,
      });
      configs.push({
        workers,
        batching: "default",
        history,
        symbols: defaultSymbols,
      });
    }
  }
  const most = Math.max(...configs.map((c) => c.symbols));
  const dir = await Deno.makeTempDir({ prefix: "bench_markets_" });
  const listFile = (n: number) => `${dir}/symbols_${n}.txt`;
  for (const n of new Set(configs.map((c) => c.symbols))) {
    await Deno.writeTextFile(
      listFile(n),
      Array.from({ length: n }, (_, i) => String(600000 + i)).join("\n"),
    );
  }
  const rows: MarketsRow[] = [];
  log(
    `markets: ${
      Math.max(...counts)
    } fake upstreams, each building ${most} synthetic histories`,
  );
  const upstreams = await Promise.all(
    Array.from(
      { length: Math.max(...counts) },
      () => startUpstream(latency, most),
    ),
  );
  const row = (
    run: number,
    kind: MarketsRow["kind"],
    config: Config,
    result: Awaited<ReturnType<typeof job>>,
    out: string,
    calls: number,
  ): MarketsRow => {
    const r: MarketsRow = {
      run,
      kind,
      ...config,
      idealS: config.symbols / (config.workers * rate),
      ...result,
      lost: config.symbols - countCsv(out),
      upstreamCalls: calls,
    };
    log(
      `  ${fixed(r.elapsedS, 1)} s, ${fixed(ratio(r))}× ideal, ${r.lost} lost${
        Object.keys(r.failures).length ? ` (${JSON.stringify(r.failures)})` : ""
      }, ${r.upstreamCalls} upstream calls, ${
        r.elapsedS > 0 ? fixed(r.cpuS / r.elapsedS) : "-"
      } cores used; items/s by tenth: ${
        r.profile.map((v) => fixed(v, 1)).join(" ")
      }`,
    );
    return r;
  };
  try {
    for (let run = 1; run <= runs; run++) {
      // Reverse the order every other run, so no configuration always meets the same machine.
      const order = run % 2 === 1 ? configs : [...configs].reverse();
      for (const config of order) {
        const pool = upstreams.slice(0, config.workers);
        const cluster = await startCluster(pool, rate);
        try {
          const name = `${config.workers}w_${
            config.batching[0]
          }_${config.history}`;
          const out = `${dir}/run${run}_${name}`;
          const before = await upstreamCalls(pool);
          log(
            `markets run ${run}: ${config.workers} workers, ${config.batching}, ${config.history}, ${config.symbols} symbols`,
          );
          const result = await job(cluster, listFile(config.symbols), out, {
            history: config.history,
            batchSize: config.batching === "one batch"
              ? config.symbols
              : undefined,
          });
          rows.push(
            row(
              run,
              "clean",
              config,
              result,
              out,
              await upstreamCalls(pool) - before,
            ),
          );
          const last = config.workers === Math.max(...counts) &&
            config.batching === "default" && config.history === "10y";
          if (!resilience || !last) continue;
          for (const again of ["resume", "warm"] as const) {
            const before2 = await upstreamCalls(pool);
            const target = again === "resume" ? out : `${out}_warm`;
            log(`markets run ${run}: ${again}`);
            const r = await job(cluster, listFile(config.symbols), target, {
              history: config.history,
              resume: again === "resume",
            });
            rows.push(
              row(
                run,
                again,
                config,
                r,
                target,
                await upstreamCalls(pool) - before2,
              ),
            );
          }
        } finally {
          await cluster.stop();
        }
      }
      if (!resilience) continue;
      const config = configs.find((c) =>
        c.workers === Math.max(...counts) && c.batching === "default" &&
        c.history === "10y"
      )!;
      const pool = upstreams.slice(0, config.workers);
      const cluster = await startCluster(pool, rate);
      try {
        const out = `${dir}/run${run}_ban`;
        const before = await upstreamCalls(pool);
        log(`markets run ${run}: one worker banned half-way`);
        const result = await job(cluster, listFile(config.symbols), out, {
          history: config.history,
          ban: { at: Math.floor(config.symbols / 2), upstream: pool[0] },
        });
        rows.push(
          row(
            run,
            "ban",
            config,
            result,
            out,
            await upstreamCalls(pool) - before,
          ),
        );
      } finally {
        await cluster.stop();
      }
    }
  } finally {
    await Promise.all(upstreams.map((u) => u.stop()));
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return {
    workers: counts,
    rateLimit: rate,
    latencyMs: latency,
    runs,
    rows,
    checks: checks(rows),
  };
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor((s.length - 1) / 2)];
}

function spread(values: number[], digits = 2): string {
  return `${fixed(median(values), digits)} (${
    fixed(Math.min(...values), digits)
  }-${fixed(Math.max(...values), digits)})`;
}

/** Clean jobs grouped by configuration, in the section's order. */
function byConfig(rows: MarketsRow[]): MarketsRow[][] {
  const groups = new Map<string, MarketsRow[]>();
  for (const r of rows.filter((r) => r.kind === "clean")) {
    const key = `${r.history} ${r.workers} ${r.batching}`;
    const g = groups.get(key) ?? [];
    g.push(r);
    groups.set(key, g);
  }
  return [...groups.values()].sort((a, b) =>
    a[0].history.localeCompare(b[0].history) ||
    a[0].workers - b[0].workers ||
    a[0].batching.localeCompare(b[0].batching) * -1
  );
}

const ratio = (r: MarketsRow) => r.elapsedS / r.idealS;

function checks(rows: MarketsRow[]): Check[] {
  const of = (kind: MarketsRow["kind"]) => rows.filter((r) => r.kind === kind);
  const ban = of("ban");
  const measured = rows.filter((r) => r.kind === "clean" || r.kind === "ban");
  const maxRss = (pick: (r: MarketsRow) => number) =>
    Math.max(...measured.map(pick));
  const groups = byConfig(rows);
  const worst = groups.map((g) => ({ g, m: median(g.map(ratio)) })).sort((
    a,
    b,
  ) => b.m - a.m)[0];
  const out: Check[] = [
    {
      name:
        "markets: every configuration ≤ 1.1× the rate limits' ideal (median), none lost",
      pass: groups.every((g) => median(g.map(ratio)) <= 1.1) &&
        groups.every((g) => g.every((r) => r.lost === 0)),
      detail: worst
        ? `worst ${fixed(worst.m)}× (${worst.g[0].workers} workers, ${
          worst.g[0].batching
        }, ${worst.g[0].history}), lost ${
          groups.flat().reduce((s, r) => s + r.lost, 0)
        }`
        : "no rows",
    },
    {
      name: "markets: server RSS ≤ 200 MB",
      pass: maxRss((r) => r.serverRssMiB) <= 200,
      detail: `max ${fixed(maxRss((r) => r.serverRssMiB), 0)} MiB`,
    },
    {
      name: "markets: requester RSS ≤ 200 MB",
      pass: maxRss((r) => r.requesterRssMiB) <= 200,
      detail: `max ${fixed(maxRss((r) => r.requesterRssMiB), 0)} MiB`,
    },
  ];
  if (ban.length > 0) {
    out.push(
      {
        name: "markets: one worker banned half-way: 0 lost, ≤ 1.25× ideal",
        pass: median(ban.map(ratio)) <= 1.25 && ban.every((r) => r.lost === 0),
        detail: `median ${spread(ban.map(ratio))}×, lost ${
          ban.map((r) => r.lost).join("/")
        }`,
      },
      {
        name: "markets: second run with --resume makes 0 upstream calls",
        pass: of("resume").every((r) => r.upstreamCalls === 0 && r.lost === 0),
        detail: `calls ${of("resume").map((r) => r.upstreamCalls).join("/")}`,
      },
      {
        name:
          "markets: second run into a new folder (warm caches) makes 0 upstream calls",
        pass: of("warm").every((r) => r.upstreamCalls === 0 && r.lost === 0),
        detail: `calls ${of("warm").map((r) => r.upstreamCalls).join("/")}`,
      },
    );
  }
  return out;
}

/** The section's tables: one line per configuration, medians (min-max) over the runs. */
export function marketsTable(report: MarketsReport): string {
  const profile = (rs: MarketsRow[]) => {
    // The median run's profile.
    const sorted = [...rs].sort((a, b) => ratio(a) - ratio(b));
    return sorted[Math.floor((sorted.length - 1) / 2)].profile.map((v) =>
      fixed(v, 1)
    ).join(" ");
  };
  const clean = table(
    [
      "history",
      "workers",
      "batches",
      "symbols",
      "ideal s",
      "time s",
      "× ideal",
      "items/s by tenth of the job (median run)",
      "cores used",
      "lost",
    ],
    byConfig(report.rows).map((rs) => {
      const r = rs[0];
      return [
        r.history,
        String(r.workers),
        r.batching === "one batch"
          ? "one batch"
          : `default (${Math.ceil(r.symbols / 200)} of ≤200)`,
        String(r.symbols),
        fixed(r.idealS, 1),
        spread(rs.map((x) => x.elapsedS), 1),
        spread(rs.map(ratio)),
        profile(rs),
        spread(rs.map((x) => x.cpuS / x.elapsedS)),
        rs.map((x) => x.lost).join("/"),
      ];
    }),
  );
  const kinds = ["ban", "resume", "warm"] as const;
  const other = report.rows.some((r) => r.kind !== "clean")
    ? "\n\n" + table(
      [
        `job (${Math.max(...report.workers)} workers, default, 10y)`,
        "runs",
        "time s",
        "× ideal",
        "ok",
        "failed",
        "lost",
        "upstream calls",
        "cores used",
        "server RSS MiB",
        "requester RSS MiB",
      ],
      kinds.map((kind) => {
        const rs = report.rows.filter((r) => r.kind === kind);
        if (rs.length === 0) return [kind, "0"];
        return [
          kind,
          String(rs.length),
          spread(rs.map((r) => r.elapsedS), 1),
          spread(rs.map(ratio)),
          rs.map((r) => r.ok + r.skipped).join("/"),
          rs.map((r) => r.failed).join("/"),
          rs.map((r) => r.lost).join("/"),
          rs.map((r) => r.upstreamCalls).join("/"),
          spread(rs.map((r) => r.cpuS / Math.max(r.elapsedS, 0.1))),
          spread(rs.map((r) => r.serverRssMiB), 0),
          spread(rs.map((r) => r.requesterRssMiB), 0),
        ];
      }),
    )
    : "";
  const failed = report.rows.filter((r) => Object.keys(r.failures).length)
    .map((r) =>
      `run ${r.run} ${r.kind} ${r.workers} workers ${r.batching} ${r.history}: ${
        Object.entries(r.failures).map(([k, v]) => `${v} ${k}`).join(", ")
      }`
    );
  return clean + other +
    `\nideal = symbols ÷ (workers × ${report.rateLimit} req/s); upstream +${report.latencyMs} ms per call, one process per worker; cores used = CPU seconds of the job's processes ÷ its wall time${
      failed.length ? `\nfailures: ${failed.join("; ")}` : ""
    }`;
}
