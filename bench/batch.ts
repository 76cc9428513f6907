/**
 * Batch section: one `get_markets` of 300 symbols through the broker against a fake upstream
 * (~20 ms per call) with a per-worker rate limit, on 1, 3 and 6 workers; then the same batch
 * again, where affinity should make the second run come from the workers' caches. The whole
 * sequence runs three times (rounds), and each round's speedups are against its own 1-worker run.
 *
 * The section measures how the broker spreads a batch over rate-limited workers, so nothing
 * else may be the bottleneck. Every process here shares the bench machine's cores, the
 * workers even share one event loop, and an upstream answer is parsed by a worker: with the
 * fake's default 11-year histories (~2,900 bars, ~230 KB per answer) the fake needed ~35 ms of
 * CPU per fresh symbol and the workers ~20 ms per item, so 6 workers ran out of CPU, not rate
 * limit, and fell to ~0.3–0.6 of linear. Each symbol's history therefore ends in 2015 (~250
 * bars, like a year of real data); `historyEnd` brings the long one back.
 *
 * @module
 */

import { startServer } from "../lib/broker/server.ts";
import { RequesterClient } from "../lib/requester/requester_client.ts";
import { Worker } from "../lib/worker/worker_client.ts";
import { createMarketService, type MarketService } from "../lib/market/mod.ts";
import { cpuSeconds, spawnHelper } from "./_spawn.ts";
import { type Check, fixed, table } from "./_stats.ts";

/** Options for {@linkcode runBatchBench}. */
export interface BatchBenchOptions {
  /** Symbols in the batch. @default 300 */
  symbols?: number;
  /** Worker counts to compare. @default [1, 3, 6] */
  workerCounts?: number[];
  /** Upstream requests per second per worker. @default 20 */
  rateLimit?: number;
  /** Fake upstream latency per call, ms. @default 20 */
  latencyMs?: number;
  /** Last day of every symbol's history at the fake upstream (it starts 2015-01-05). @default "2015-12-31" */
  historyEnd?: string;
  /** Times the whole sequence of worker counts runs. @default 3 */
  rounds?: number;
  /** Progress lines (stderr). */
  log?: (line: string) => void;
}

/** One batch run. */
export interface BatchRow {
  /** 1-based round. */
  round: number;
  workers: number;
  run: "first" | "repeat";
  elapsedS: number;
  succeeded: number;
  workersUsed: number;
  /** Items on the busiest worker (the batch ends when its share does). */
  largestShare: number;
  /** Cache hits during this run, summed over the workers. */
  hits: number;
  /** CPU seconds of the bench process (server, workers, requester) and of the fake upstream. */
  cpuBenchS: number;
  cpuUpstreamS: number;
  speedup?: number;
  efficiency?: number;
}

/** The section's outcome. */
export interface BatchReport {
  items: number;
  rounds: number;
  rows: BatchRow[];
  checks: Check[];
}

/** The batch: `count` distinct Shanghai A-share codes, the half year before `end`. */
export function batchItems(
  count: number,
  end = "2025-06-30",
): Record<string, string>[] {
  const start = `${end.slice(0, 4)}-${end.slice(5) < "07-01" ? "01" : "07"}-01`;
  return Array.from({ length: count }, (_, i) => ({
    symbol_type: "stock",
    code: String(600000 + i),
    period: "daily",
    start_date: start,
    end_date: end,
    adjust: "qfq",
  }));
}

/** Runs the batch section. */
export async function runBatchBench(
  options: BatchBenchOptions = {},
): Promise<BatchReport> {
  const log = options.log ?? (() => {});
  const historyEnd = options.historyEnd ?? "2015-12-31";
  const items = batchItems(options.symbols ?? 300, historyEnd);
  const counts = options.workerCounts ?? [1, 3, 6];
  const rounds = options.rounds ?? 3;
  // The upstream runs in its own process: serialising its answers in the bench's event loop,
  // next to six workers' parsing, would make the workers' scaling look worse than it is.
  const fake = await spawnHelper("_fake_upstream.ts", [
    "--latency-ms",
    String(options.latencyMs ?? 20),
    "--end",
    historyEnd,
  ]);
  const upstream = { url: String(fake.info.url), close: () => fake.stop() };
  const server = startServer({ host: "127.0.0.1", port: 0, requesterPort: 0 });
  const client = new RequesterClient(server.requesterUrl);
  const rows: BatchRow[] = [];
  try {
    await client.connect();
    for (let round = 1; round <= rounds; round++) {
      for (const n of counts) {
        const fleet = Array.from({ length: n }, (_, i) => {
          const market = createMarketService({
            providers: ["eastmoney"],
            eastmoneyUrl: upstream.url,
            rateLimit: options.rateLimit ?? 20,
            hostConcurrency: 2,
            cacheEntries: 1024,
          });
          // Reporting its upstream as `worker.ts` does: placement paces by the rate it states.
          const worker = new Worker({
            url: server.workerUrl,
            name: `batch-${n}-${i}`,
            heartbeatData: () => ({
              blocked_sources: market.blockedSources(),
              upstream: market.upstreamStatus(),
            }),
          });
          for (const [name, handler] of Object.entries(market.actions())) {
            worker.registerAction(name, handler);
          }
          void worker.start();
          return { worker, market };
        });
        try {
          await Promise.all(fleet.map((f) => f.worker.ready()));
          const runs: BatchRow["run"][] = n === counts.at(-1)
            ? ["first", "repeat"]
            : ["first"];
          for (const run of runs) {
            const cpuBefore = await cpuSeconds([Deno.pid, fake.pid]);
            const row = await runOnce(
              client,
              items,
              fleet.map((f) => f.market),
            );
            const cpuAfter = await cpuSeconds([Deno.pid, fake.pid]);
            rows.push({
              round,
              workers: n,
              run,
              ...row,
              cpuBenchS: cpuAfter[0] - cpuBefore[0],
              cpuUpstreamS: cpuAfter[1] - cpuBefore[1],
            });
            log(
              `  round ${round}, ${n} workers, ${run}: ${
                fixed(row.elapsedS)
              } s, ${row.succeeded}/${items.length} ok, ${row.hits} cache hits`,
            );
          }
        } finally {
          await Promise.all(fleet.map((f) => f.worker.stop(1000)));
          for (const f of fleet) f.market.close();
        }
      }
    }
  } finally {
    await client.close();
    await server.close();
    await upstream.close();
  }
  for (const r of rows) {
    const base = rows.find((b) =>
      b.round === r.round && b.run === "first" && b.workers === counts[0]
    );
    if (!base || r.run !== "first") continue;
    r.speedup = base.elapsedS / r.elapsedS * counts[0];
    r.efficiency = r.speedup / r.workers;
  }
  return {
    items: items.length,
    rounds,
    rows,
    checks: batchChecks(rows, items.length),
  };
}

async function runOnce(
  client: RequesterClient,
  items: unknown[],
  markets: MarketService[],
): Promise<
  Omit<BatchRow, "round" | "workers" | "run" | "cpuBenchS" | "cpuUpstreamS">
> {
  const hitsBefore = markets.reduce((s, m) => s + m.stats().hits, 0);
  const started = performance.now();
  const answer = await client.request("get_markets", items, { timeout: 600 });
  const elapsedS = (performance.now() - started) / 1000;
  const data = answer.data as {
    results?: { processed_by?: string }[];
    summary?: { success?: number };
    distributed?: { workers_used?: number };
  } | null;
  if (!answer.success) {
    throw new Error(`Batch failed: ${answer.error}`);
  }
  const shares = new Map<string, number>();
  for (const r of data?.results ?? []) {
    const by = String(r?.processed_by);
    shares.set(by, (shares.get(by) ?? 0) + 1);
  }
  return {
    elapsedS,
    largestShare: Math.max(0, ...shares.values()),
    succeeded: data?.summary?.success ?? 0,
    workersUsed: data?.distributed?.workers_used ?? 0,
    hits: markets.reduce((s, m) => s + m.stats().hits, 0) - hitsBefore,
  };
}

function batchChecks(rows: BatchRow[], items: number): Check[] {
  const checks: Check[] = [];
  const counts = [...new Set(rows.map((r) => r.workers))].filter((n) => n > 1);
  for (const n of counts) {
    const runs = rows.filter((r) => r.run === "first" && r.workers === n);
    const passed = runs.filter((r) => (r.efficiency ?? 0) >= 0.8).length;
    checks.push({
      name: `batch speedup ${n} workers >= 0.8x linear in every round`,
      pass: passed === runs.length,
      detail: `${passed}/${runs.length} rounds; efficiency ${
        runs.map((r) => fixed(r.efficiency)).join(", ")
      }`,
    });
  }
  const repeats = rows.filter((r) => r.run === "repeat");
  if (repeats.length > 0) {
    const hits = repeats.reduce((s, r) => s + r.hits, 0);
    const pct = hits / (items * repeats.length) * 100;
    checks.push({
      name: `repeat batch on ${repeats[0].workers} workers >= 95% cache hits`,
      pass: pct >= 95,
      detail: `${fixed(pct, 1)}% over ${repeats.length} rounds`,
    });
  }
  for (const r of rows.filter((r) => r.succeeded !== items)) {
    checks.push({
      name:
        `batch round ${r.round} ${r.workers} workers ${r.run}: every item succeeds`,
      pass: false,
      detail: `${r.succeeded}/${items}`,
    });
  }
  return checks;
}

/** The batch table. */
export function batchTable(report: BatchReport): string {
  return table(
    [
      "round",
      "workers",
      "run",
      "elapsed s",
      "ok",
      "used",
      "largest share",
      "cache hits",
      "speedup",
      "efficiency",
      "CPU s bench",
      "CPU s upstream",
    ],
    report.rows.map((r) => [
      String(r.round),
      String(r.workers),
      r.run,
      fixed(r.elapsedS),
      `${r.succeeded}/${report.items}`,
      String(r.workersUsed),
      String(r.largestShare),
      `${fixed(r.hits / report.items * 100, 1)}%`,
      r.speedup === undefined ? "" : `${fixed(r.speedup)}x`,
      r.efficiency === undefined ? "" : fixed(r.efficiency),
      fixed(r.cpuBenchS),
      fixed(r.cpuUpstreamS),
    ]),
  );
}
