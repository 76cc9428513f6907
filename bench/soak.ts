/**
 * Soak section (not in CI): single requests plus periodic batches through a server subprocess,
 * while a seeded schedule kills a worker subprocess with SIGKILL and starts a replacement every
 * few seconds. Counts what was answered and what was lost, and the server's memory.
 *
 * @module
 */

import { mulberry32 } from "../lib/_random.ts";
import { RequesterClient } from "../lib/requester/requester_client.ts";
import { batchItems } from "./batch.ts";
import { type Helper, rssMiB, spawnHelper } from "./_spawn.ts";
import { type Check, fixed, summarize, table } from "./_stats.ts";

/** Options for {@linkcode runSoak}. */
export interface SoakOptions {
  /** Seconds of load. @default 60 */
  seconds?: number;
  /** Worker subprocesses. @default 4 */
  workers?: number;
  /** Single requests kept in flight. @default 8 */
  inFlight?: number;
  /** Milliseconds between kills. @default 3000 */
  churnEveryMs?: number;
  /** Milliseconds between batches. @default 5000 */
  batchEveryMs?: number;
  /** Items per batch. @default 50 */
  batchSize?: number;
  /** Seed of the churn and batch schedule. @default 42 */
  seed?: number;
  /** Progress lines (stderr). */
  log?: (line: string) => void;
}

/** The section's outcome. */
export interface SoakReport {
  seconds: number;
  singles: { answered: number; lost: number; p50: number; p99: number };
  batches: { runs: number; items: number; lost: number; p99: number };
  kills: number;
  rssStartMiB: number;
  rssEndMiB: number;
  /** Server RSS sampled every 10 s from the start, MiB. */
  rssSeriesMiB: number[];
  lostReasons: Record<string, number>;
  checks: Check[];
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/** Runs the soak section. */
export async function runSoak(options: SoakOptions = {}): Promise<SoakReport> {
  const seconds = options.seconds ?? 60;
  const log = options.log ?? (() => {});
  const random = mulberry32(options.seed ?? 42);
  const upstream = await spawnHelper("_fake_upstream.ts");
  const server = await spawnHelper("_server.ts");
  const workerUrl = `ws://127.0.0.1:${server.info.port}`;
  const startWorker = (i: number) =>
    spawnHelper("_echo_worker.ts", [
      "--url",
      workerUrl,
      "--name",
      `soak-${i}`,
      "--eastmoney",
      String(upstream.info.url),
      "--rate-limit",
      "50",
    ]);
  const workers: Helper[] = await Promise.all(
    Array.from({ length: options.workers ?? 4 }, (_, i) => startWorker(i)),
  );
  const client = new RequesterClient(
    `ws://127.0.0.1:${server.info.requesterPort}`,
  );
  const singleLatencies: number[] = [];
  const batchLatencies: number[] = [];
  const lostReasons: Record<string, number> = {};
  const lose = (reason: string, n = 1) =>
    lostReasons[reason] = (lostReasons[reason] ?? 0) + n;
  let singlesLost = 0;
  let batchRuns = 0;
  let batchItemsSent = 0;
  let batchLost = 0;
  let kills = 0;
  const stop = new AbortController();
  let rssStart = NaN;
  let rssEnd = NaN;
  const rssSeries: number[] = [];
  try {
    await client.connect();
    rssStart = await rssMiB(server.pid);
    log(`soak: ${seconds} s, server RSS ${fixed(rssStart, 1)} MiB at start`);
    const single = async () => {
      while (!stop.signal.aborted) {
        const t0 = performance.now();
        try {
          const answer = await client.request("echo", { size: 100 }, {
            timeout: 10,
          });
          if (answer.success) singleLatencies.push(performance.now() - t0);
          else {
            singlesLost++;
            lose(String(answer.error_code ?? answer.error));
          }
        } catch (error) {
          singlesLost++;
          lose((error as Error).name);
        }
      }
    };
    const batches = async () => {
      const pool = batchItems(300);
      while (!stop.signal.aborted) {
        await sleep(options.batchEveryMs ?? 5000, stop.signal);
        if (stop.signal.aborted) break;
        const size = options.batchSize ?? 50;
        const first = Math.floor(random() * (pool.length - size));
        const items = pool.slice(first, first + size);
        batchRuns++;
        batchItemsSent += items.length;
        const t0 = performance.now();
        try {
          const answer = await client.request("get_markets", items, {
            timeout: 60,
          });
          batchLatencies.push(performance.now() - t0);
          const results = (answer.data as { results?: unknown[] } | null)
            ?.results ?? [];
          const failed = answer.success
            ? results.filter((r) =>
              (r as { success?: unknown })?.success !== true
            ).length
            : items.length;
          if (failed) {
            batchLost += failed;
            lose(
              `batch:${answer.success ? "item" : answer.error_code}`,
              failed,
            );
          }
        } catch (error) {
          batchLost += items.length;
          lose(`batch:${(error as Error).name}`, items.length);
        }
      }
    };
    const churn = async () => {
      while (!stop.signal.aborted) {
        await sleep(options.churnEveryMs ?? 3000, stop.signal);
        if (stop.signal.aborted) break;
        const i = Math.floor(random() * workers.length);
        await workers[i].stop("SIGKILL");
        kills++;
        workers[i] = await startWorker(i);
      }
    };
    const sampleRss = async () => {
      rssSeries.push(rssStart);
      while (!stop.signal.aborted) {
        await sleep(10_000, stop.signal);
        if (!stop.signal.aborted) rssSeries.push(await rssMiB(server.pid));
      }
    };
    const loops = [
      sampleRss(),
      ...Array.from({ length: options.inFlight ?? 8 }, single),
      batches(),
      churn(),
    ];
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    stop.abort();
    await Promise.all(loops);
    rssEnd = await rssMiB(server.pid);
  } finally {
    stop.abort();
    await client.close();
    await Promise.all(workers.map((w) => w.stop()));
    await server.stop();
    await upstream.stop();
  }
  const report: Omit<SoakReport, "checks"> = {
    seconds,
    singles: {
      answered: singleLatencies.length,
      lost: singlesLost,
      ...pick(summarize(singleLatencies, seconds * 1000)),
    },
    batches: {
      runs: batchRuns,
      items: batchItemsSent,
      lost: batchLost,
      p99: summarize(batchLatencies, seconds * 1000).p99,
    },
    kills,
    rssStartMiB: rssStart,
    rssEndMiB: rssEnd,
    rssSeriesMiB: rssSeries,
    lostReasons,
  };
  return { ...report, checks: soakChecks(report) };
}

function pick(s: { p50: number; p99: number }) {
  return { p50: s.p50, p99: s.p99 };
}

function soakChecks(r: Omit<SoakReport, "checks">): Check[] {
  return [{
    name: "soak: 0 lost under worker churn",
    pass: r.singles.lost === 0 && r.batches.lost === 0,
    detail:
      `${r.singles.lost} single requests and ${r.batches.lost} batch items lost, ${r.kills} kills`,
  }];
}

/** The soak table. */
export function soakTable(r: SoakReport): string {
  const reasons = Object.entries(r.lostReasons).map(([k, v]) => `${k}=${v}`)
    .join(" ");
  return table(["metric", "value"], [
    ["seconds", String(r.seconds)],
    ["worker kills (SIGKILL)", String(r.kills)],
    ["single requests answered", String(r.singles.answered)],
    ["single requests lost", String(r.singles.lost)],
    ["single p50 ms", fixed(r.singles.p50)],
    ["single p99 ms", fixed(r.singles.p99)],
    ["batches (items)", `${r.batches.runs} (${r.batches.items})`],
    ["batch items lost", String(r.batches.lost)],
    ["batch p99 ms", fixed(r.batches.p99)],
    ["server RSS start MiB", fixed(r.rssStartMiB, 1)],
    ["server RSS end MiB", fixed(r.rssEndMiB, 1)],
    [
      "server RSS every 10 s MiB",
      r.rssSeriesMiB.map((v) => fixed(v, 0)).join(" "),
    ],
    ["lost by reason", reasons || "none"],
  ]);
}
