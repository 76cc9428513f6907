/**
 * Markets section: the job users run — 1,000 symbols × full daily history into CSV files with
 * `requester.ts markets`, over 6 worker processes, each with its own fake upstream (its own "IP
 * address", ~50 ms per call) and a per-worker rate limit. Every process is real: the server,
 * the workers and the requester run as subprocesses, so their memory is measured apart.
 *
 * Rows, interleaved in each run: a clean job; a job where one worker's upstream bans it (resets
 * every connection) half-way; then, on the clean job's processes, the same job with `--resume`
 * and into a fresh folder (warm worker caches). The ideal time is what the rate limits allow:
 * symbols ÷ (workers × rate).
 *
 * @module
 */

import { rssMiB, spawnHelper } from "./_spawn.ts";
import { type Check, fixed, table } from "./_stats.ts";

/** Options for {@linkcode runMarketsBench}. */
export interface MarketsBenchOptions {
  /** Symbols in the job. @default 1000 */
  symbols?: number;
  /** Worker processes. @default 6 */
  workers?: number;
  /** Upstream requests per second per worker. @default 2 */
  rateLimit?: number;
  /** Fake upstream latency per call, ms. @default 50 */
  latencyMs?: number;
  /** Interleaved runs. @default 3 */
  runs?: number;
  /** Progress lines (stderr). */
  log?: (line: string) => void;
}

/** One job. */
export interface MarketsRow {
  run: number;
  kind: "clean" | "ban" | "resume" | "warm";
  /** The job's own wall time (its summary line), s. */
  elapsedS: number;
  /** Symbols ÷ (workers × rate), s. */
  idealS: number;
  ok: number;
  failed: number;
  skipped: number;
  /** Symbols with no complete CSV file at the end. */
  lost: number;
  /** Requests the fake upstreams received during the job. */
  upstreamCalls: number;
  serverRssMiB: number;
  requesterRssMiB: number;
  exitCode: number;
}

/** The section's outcome. */
export interface MarketsReport {
  symbols: number;
  workers: number;
  rateLimit: number;
  rows: MarketsRow[];
  checks: Check[];
}

const ROOT = new URL("../", import.meta.url).pathname;

export interface Cluster {
  serverPid: number;
  requesterUrl: string;
  control: string;
  stop(): Promise<void>;
}

/** The fake upstreams, one per worker, in one helper process that lives through every run. */
export async function startUpstreams(
  count: number,
  latencyMs: number,
  warm: number,
): Promise<{ urls: string[]; control: string; stop(): Promise<void> }> {
  const fake = await spawnHelper("_fake_upstreams.ts", [
    "--count",
    String(count),
    "--latency-ms",
    String(latencyMs),
    "--warm",
    String(warm),
  ], 600_000);
  return {
    urls: fake.info.urls as string[],
    control: String(fake.info.control),
    stop: () => fake.stop("SIGKILL"),
  };
}

/** A server and `rateLimit`-limited workers, one per upstream URL. */
export async function startCluster(
  upstreams: { urls: string[]; control: string },
  rateLimit: number,
): Promise<Cluster> {
  await fetch(`${upstreams.control}/unban`, { method: "POST" }).then((r) =>
    r.body?.cancel()
  );
  const workers = upstreams.urls.length;
  const fake = { info: { urls: upstreams.urls, control: upstreams.control } };
  const server = await spawnHelper("_server.ts");
  const port = Number(server.info.port);
  const urls = fake.info.urls as string[];
  const children = urls.map((url, i) =>
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
        url,
        "--rate-limit",
        String(rateLimit),
        "--no-console",
        "--log-level",
        "error",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn()
  );
  const until = Date.now() + 60_000;
  while (true) {
    const health = await fetch(`http://127.0.0.1:${port}/health`).then((r) =>
      r.json()
    ).catch(() => ({}));
    if (health.healthy_workers === workers || health.workers === workers) break;
    if (Date.now() > until) throw new Error("Workers did not connect");
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    serverPid: server.pid,
    requesterUrl: `ws://127.0.0.1:${server.info.requesterPort}`,
    control: String(fake.info.control),
    async stop() {
      for (const c of children) {
        try {
          c.kill("SIGKILL");
        } catch { /* gone */ }
      }
      await Promise.all(children.map((c) => c.status));
      await server.stop("SIGKILL");
    },
  };
}

async function upstreamCalls(control: string): Promise<number> {
  const calls = await fetch(`${control}/calls`).then((r) =>
    r.json()
  ) as number[];
  return calls.reduce((s, n) => s + n, 0);
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

/** Runs `requester.ts markets` once, sampling memory; bans upstream 0 half-way when asked. */
async function job(
  cluster: Cluster,
  listFile: string,
  outDir: string,
  options: { resume?: boolean; banAt?: number },
): Promise<
  Omit<MarketsRow, "run" | "kind" | "idealS" | "upstreamCalls" | "lost">
> {
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
  while (!exited) {
    serverRss = Math.max(serverRss, await rssMiB(cluster.serverPid) || 0);
    requesterRss = Math.max(requesterRss, await rssMiB(child.pid) || 0);
    if (
      options.banAt !== undefined && !banned &&
      countCsv(outDir) >= options.banAt
    ) {
      banned = true;
      await fetch(`${cluster.control}/ban?i=0`, { method: "POST" }).then((r) =>
        r.body?.cancel()
      );
    }
    await Promise.race([status, new Promise((r) => setTimeout(r, 200))]);
  }
  const { code } = await status;
  const text = await stderr;
  const num = (label: string) =>
    Number(new RegExp(`^${label}\\s+([\\d.]+)`, "m").exec(text)?.[1] ?? NaN);
  if (Number.isNaN(num("ok"))) {
    throw new Error(`The markets job printed no summary:\n${text}`);
  }
  return {
    elapsedS: num("time"),
    ok: num("ok"),
    failed: num("failed"),
    skipped: Number.isNaN(num("skipped")) ? 0 : num("skipped"),
    serverRssMiB: serverRss,
    requesterRssMiB: requesterRss,
    exitCode: code,
  };
}

/** Runs the markets section. */
export async function runMarketsBench(
  options: MarketsBenchOptions = {},
): Promise<MarketsReport> {
  const log = options.log ?? (() => {});
  const symbols = options.symbols ?? 1000;
  const workers = options.workers ?? 6;
  const rate = options.rateLimit ?? 2;
  const latency = options.latencyMs ?? 50;
  const runs = options.runs ?? 3;
  const idealS = symbols / (workers * rate);
  const dir = await Deno.makeTempDir({ prefix: "bench_markets_" });
  const listFile = `${dir}/symbols.txt`;
  await Deno.writeTextFile(
    listFile,
    Array.from({ length: symbols }, (_, i) => String(600000 + i)).join("\n"),
  );
  const rows: MarketsRow[] = [];
  log(`markets: building ${symbols} synthetic histories in the fake upstream`);
  const upstreams = await startUpstreams(workers, latency, symbols);
  try {
    for (let run = 1; run <= runs; run++) {
      // Alternate which job goes first, so neither always meets the quieter machine.
      const kinds = run % 2 === 1 ? ["clean", "ban"] : ["ban", "clean"];
      for (const kind of kinds) {
        const cluster = await startCluster(upstreams, rate);
        try {
          const out = `${dir}/run${run}_${kind}`;
          const before = await upstreamCalls(cluster.control);
          log(`markets run ${run}: ${kind} job of ${symbols} symbols`);
          const result = await job(cluster, listFile, out, {
            banAt: kind === "ban" ? Math.floor(symbols / 2) : undefined,
          });
          rows.push({
            run,
            kind: kind as "clean" | "ban",
            idealS,
            ...result,
            lost: symbols - countCsv(out),
            upstreamCalls: await upstreamCalls(cluster.control) - before,
          });
          if (kind !== "clean") continue;
          for (const again of ["resume", "warm"] as const) {
            const before2 = await upstreamCalls(cluster.control);
            const target = again === "resume" ? out : `${out}_warm`;
            log(`markets run ${run}: ${again}`);
            const r = await job(cluster, listFile, target, {
              resume: again === "resume",
            });
            rows.push({
              run,
              kind: again,
              idealS,
              ...r,
              lost: symbols - countCsv(target),
              upstreamCalls: await upstreamCalls(cluster.control) - before2,
            });
          }
        } finally {
          await cluster.stop();
        }
      }
    }
  } finally {
    await upstreams.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return {
    symbols,
    workers,
    rateLimit: rate,
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

function checks(rows: MarketsRow[]): Check[] {
  const of = (kind: MarketsRow["kind"]) => rows.filter((r) => r.kind === kind);
  const clean = of("clean");
  const ban = of("ban");
  const maxRss = (pick: (r: MarketsRow) => number) =>
    Math.max(
      ...rows.filter((r) => r.kind === "clean" || r.kind === "ban").map(pick),
    );
  return [
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
    {
      name: "markets: clean job ≤ 1.1× the rate limits' ideal",
      pass: median(clean.map((r) => r.elapsedS / r.idealS)) <= 1.1 &&
        clean.every((r) => r.lost === 0),
      detail: `median ${
        spread(clean.map((r) => r.elapsedS / r.idealS))
      }×, lost ${clean.map((r) => r.lost).join("/")}`,
    },
    {
      name: "markets: one worker banned half-way: 0 lost, ≤ 1.25× ideal",
      pass: median(ban.map((r) => r.elapsedS / r.idealS)) <= 1.25 &&
        ban.every((r) => r.lost === 0),
      detail: `median ${spread(ban.map((r) => r.elapsedS / r.idealS))}×, lost ${
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
  ];
}

/** The section's table: one line per job kind, medians (min-max) over the runs. */
export function marketsTable(report: MarketsReport): string {
  const kinds = ["clean", "ban", "resume", "warm"] as const;
  return table(
    [
      "job",
      "runs",
      "time s",
      "× ideal",
      "ok",
      "failed",
      "lost",
      "upstream calls",
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
        spread(rs.map((r) => r.elapsedS / r.idealS)),
        rs.map((r) => r.ok + r.skipped).join("/"),
        rs.map((r) => r.failed).join("/"),
        rs.map((r) => r.lost).join("/"),
        rs.map((r) => r.upstreamCalls).join("/"),
        spread(rs.map((r) => r.serverRssMiB), 0),
        spread(rs.map((r) => r.requesterRssMiB), 0),
      ];
    }),
  ) +
    `\nideal ${
      fixed(report.rows[0]?.idealS, 1)
    } s = ${report.symbols} symbols ÷ (${report.workers} workers × ${report.rateLimit} req/s)`;
}
