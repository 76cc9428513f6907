/**
 * Batch section: one `get_markets` of 300 symbols through the broker against a fake upstream
 * (~20 ms per call) with a per-worker rate limit, on 1, 3 and 6 workers; then the same batch
 * again, where affinity should make the second run come from the workers' caches.
 *
 * @module
 */

import { startServer } from "../lib/server.ts";
import { RequesterClient } from "../lib/requester_client.ts";
import { Worker } from "../lib/worker_client.ts";
import { createMarketService, type MarketService } from "../lib/market/mod.ts";
import { spawnHelper } from "./_spawn.ts";
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
  /** Progress lines (stderr). */
  log?: (line: string) => void;
}

/** One batch run. */
export interface BatchRow {
  workers: number;
  run: "first" | "repeat";
  elapsedS: number;
  succeeded: number;
  workersUsed: number;
  /** Items on the busiest worker (the batch ends when its share does). */
  largestShare: number;
  /** Cache hits during this run, summed over the workers. */
  hits: number;
  speedup?: number;
  efficiency?: number;
}

/** The section's outcome. */
export interface BatchReport {
  items: number;
  rows: BatchRow[];
  checks: Check[];
}

/** The batch: `count` distinct Shanghai A-share codes over half a year. */
export function batchItems(count: number): Record<string, string>[] {
  return Array.from({ length: count }, (_, i) => ({
    symbol_type: "stock",
    code: String(600000 + i),
    period: "daily",
    start_date: "2025-01-01",
    end_date: "2025-06-30",
    adjust: "qfq",
  }));
}

/** Runs the batch section. */
export async function runBatchBench(
  options: BatchBenchOptions = {},
): Promise<BatchReport> {
  const log = options.log ?? (() => {});
  const items = batchItems(options.symbols ?? 300);
  const counts = options.workerCounts ?? [1, 3, 6];
  // The upstream runs in its own process: serialising its answers in the bench's event loop,
  // next to six workers' parsing, would make the workers' scaling look worse than it is.
  const fake = await spawnHelper("_fake_upstream.ts", [
    "--latency-ms",
    String(options.latencyMs ?? 20),
  ]);
  const upstream = { url: String(fake.info.url), close: () => fake.stop() };
  const server = startServer({ host: "127.0.0.1", port: 0, requesterPort: 0 });
  const client = new RequesterClient(server.requesterUrl);
  const rows: BatchRow[] = [];
  try {
    await client.connect();
    for (const n of counts) {
      const fleet = Array.from({ length: n }, (_, i) => {
        const market = createMarketService({
          providers: ["eastmoney"],
          eastmoneyUrl: upstream.url,
          rateLimit: options.rateLimit ?? 20,
          hostConcurrency: 2,
          cacheEntries: 1024,
        });
        const worker = new Worker({
          url: server.workerUrl,
          name: `batch-${n}-${i}`,
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
          const row = await runOnce(client, items, fleet.map((f) => f.market));
          rows.push({ workers: n, run, ...row });
          log(
            `  ${n} workers, ${run}: ${
              fixed(row.elapsedS)
            } s, ${row.succeeded}/${items.length} ok, ${row.hits} cache hits`,
          );
        }
      } finally {
        await Promise.all(fleet.map((f) => f.worker.stop(1000)));
        for (const f of fleet) f.market.close();
      }
    }
  } finally {
    await client.close();
    await server.close();
    await upstream.close();
  }
  const base = rows.find((r) => r.run === "first" && r.workers === counts[0]);
  for (const r of rows) {
    if (!base || r.run !== "first") continue;
    r.speedup = base.elapsedS / r.elapsedS * counts[0];
    r.efficiency = r.speedup / r.workers;
  }
  return { items: items.length, rows, checks: batchChecks(rows, items.length) };
}

async function runOnce(
  client: RequesterClient,
  items: unknown[],
  markets: MarketService[],
): Promise<Omit<BatchRow, "workers" | "run">> {
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
  for (const r of rows.filter((r) => r.run === "first" && r.workers > 1)) {
    checks.push({
      name: `batch speedup ${r.workers} workers >= 0.8x linear`,
      pass: (r.efficiency ?? 0) >= 0.8,
      detail: `${fixed(r.speedup)}x, efficiency ${fixed(r.efficiency)}`,
    });
  }
  const repeat = rows.find((r) => r.run === "repeat");
  if (repeat) {
    const pct = repeat.hits / items * 100;
    checks.push({
      name: `repeat batch on ${repeat.workers} workers >= 95% cache hits`,
      pass: pct >= 95,
      detail: `${fixed(pct, 1)}% (${repeat.hits}/${items})`,
    });
  }
  for (const r of rows.filter((r) => r.succeeded !== items)) {
    checks.push({
      name: `batch ${r.workers} workers ${r.run}: every item succeeds`,
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
      "workers",
      "run",
      "elapsed s",
      "ok",
      "used",
      "largest share",
      "cache hits",
      "speedup",
      "efficiency",
    ],
    report.rows.map((r) => [
      String(r.workers),
      r.run,
      fixed(r.elapsedS),
      `${r.succeeded}/${report.items}`,
      String(r.workersUsed),
      String(r.largestShare),
      `${fixed(r.hits / report.items * 100, 1)}%`,
      r.speedup === undefined ? "" : `${fixed(r.speedup)}x`,
      r.efficiency === undefined ? "" : fixed(r.efficiency),
    ]),
  );
}
