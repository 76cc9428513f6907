/**
 * `deno task bench --section store`: a market store kept current by `requester.ts sync` against
 * a simulated Eastmoney (tests/_fake_market.ts) of 7,000 symbols over five trading days with
 * ex-dividends, suspensions and new listings; then the store's own speed and size, and DuckDB
 * against `node:sqlite` on many bars.
 *
 * @module
 */

import { DatabaseSync } from "node:sqlite";
import { HOST_LIMITS } from "../lib/market/politeness.ts";
import { LIST_PAGE_SIZE } from "../lib/market/symbols.ts";
import { createMarketService } from "../lib/market/service.ts";
import type { Adjust, Bar, SymbolType } from "../lib/market/types.ts";
import { startServer } from "../lib/broker/server.ts";
import { Worker } from "../lib/worker/worker_client.ts";
import { barDifference } from "../lib/store/rows.ts";
import { MarketStore } from "../lib/store/store.ts";
import {
  directServiceOptions,
  startFakeMarket,
} from "../tests/_fake_market.ts";
import { rssMiB } from "./_spawn.ts";
import { bar, code, key, weekdays } from "./_store_rig.ts";
import { type Check, fixed, table } from "./_stats.ts";

/** Options for {@linkcode runStoreBench}. */
export interface StoreBenchOptions {
  /** Progress lines. */
  log: (line: string) => void;
  /** Symbols in the universe. @default 7000 */
  symbols?: number;
  /** First day of every history. @default "2024-01-02" */
  historyStart?: string;
  /** Simulated trading days after the first fill. @default 5 */
  days?: number;
  /** Adjustments synced. @default ["qfq", "hfq"] */
  adjust?: Adjust[];
  /** Bars of the DuckDB vs node:sqlite comparison. @default 3000000 */
  engineBars?: number;
}

/** One simulated day's sync. */
export interface StoreDay {
  day: string;
  requests: number;
  budget: number;
  byEndpoint: string;
  exDates: number;
  gaps: number;
  newListings: number;
  mismatches: number;
  wallS: number;
  /** Wall time one worker would need at the default politeness, s. */
  politeS: number;
}

/** What the store section measured. */
export interface StoreBenchResult {
  symbols: number;
  adjust: Adjust[];
  bars: number;
  fill: { wallS: number; peakRssMiB: number; requests: number };
  days: StoreDay[];
  bytesPerMillionBars: number;
  readMs: number[];
  crossSectionMs: number[];
  engines: EngineRow[];
  checks: Check[];
}

/** One engine's figures on `bars` bars. */
export interface EngineRow {
  engine: string;
  bars: number;
  ingestS: number;
  barsPerS: number;
  fileMiB: number;
  readMs: number;
  crossSectionMs: number;
}

const REQUESTER = new URL("../requester.ts", import.meta.url).pathname;
const KINDS: SymbolType[] = ["etf", "stock", "index"];

/** Runs the section. */
export async function runStoreBench(
  options: StoreBenchOptions,
): Promise<StoreBenchResult> {
  const log = options.log;
  const symbols = options.symbols ?? 7000;
  const adjust = options.adjust ?? ["qfq", "hfq"];
  const etfs = Math.round(symbols * 0.14);
  const indexes = Math.round(symbols * 0.03);
  const market = startFakeMarket({
    etfs,
    indexes: indexes - 1,
    stocks: symbols - etfs - indexes,
    historyStart: options.historyStart ?? "2024-01-02",
    exDividendRate: 0.01,
    suspendRate: 0.005,
    newListingsPerDay: 2,
  });
  const service = createMarketService({
    ...directServiceOptions(market),
    hostConcurrency: 8,
    itemConcurrency: 8,
  });
  const server = startServer({
    host: "127.0.0.1",
    port: 0,
    requesterPort: 0,
    maxTimeoutMs: 3_600_000,
  });
  const worker = new Worker({ url: server.workerUrl, name: "store-bench" });
  for (const [name, handler] of Object.entries(service.actions())) {
    worker.registerAction(name, handler);
  }
  void worker.start();
  await worker.ready();
  const dir = await Deno.makeTempDir({ prefix: "store_bench_" });
  const path = `${dir}/bench.duckdb`;
  const checks: Check[] = [];
  try {
    const sync = async () => {
      const started = performance.now();
      const before = market.counts();
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          REQUESTER,
          "sync",
          "--url",
          server.requesterUrl,
          "--all",
          "etf,stock,index",
          "--adjust",
          adjust.join(","),
          "--store",
          path,
          "--quiet",
          "--timeout",
          "3600",
        ],
        stdout: "null",
        stderr: "piped",
      }).spawn();
      let peak = 0;
      const sampler = setInterval(async () => {
        const rss = await rssMiB(child.pid);
        if (rss > peak) peak = rss;
      }, 200);
      const result = await child.output();
      clearInterval(sampler);
      const text = new TextDecoder().decode(result.stderr);
      if (result.code !== 0) {
        throw new Error(`sync exited ${result.code}:\n${text}`);
      }
      const after = market.counts();
      const delta = (k: string) => (after[k] ?? 0) - (before[k] ?? 0);
      const num = (label: string) =>
        Number(new RegExp(`${label}\\s+(\\d+)`).exec(text)?.[1] ?? 0);
      return {
        wallS: (performance.now() - started) / 1000,
        peak,
        clist: delta("clist"),
        kline: delta("kline"),
        exDates: num("ex-dates"),
        gaps: num("gaps"),
        newListings: Number(/(\d+) new listings/.exec(text)?.[1] ?? 0),
        text,
      };
    };

    log(`store: first fill of ${symbols} symbols × ${adjust.join(",")} …`);
    const fill = await sync();
    log(
      `store: first fill ${fixed(fill.wallS, 0)} s, peak RSS ${
        fixed(fill.peak, 0)
      } MiB`,
    );
    const days: StoreDay[] = [];
    for (let d = 0; d < (options.days ?? 5); d++) {
      const day = market.advance();
      const s = await sync();
      const listed = KINDS.map((k) => market.listed(k).length);
      // Each kind's list ends on a page of its own, however few rows it holds: a small universe
      // needs more pages than 1.2 per 100 symbols allows, a large one never does.
      const listPages = Math.max(
        Math.ceil(1.2 * listed.reduce((a, b) => a + b, 0) / 100),
        listed.reduce((n, count) => n + Math.ceil(count / LIST_PAGE_SIZE), 0),
      );
      // Series fetched whole for new listings: one request per adjustment each.
      const budget = listPages + 2 * s.exDates + s.gaps + s.newListings + 1;
      const mismatches = await compare(market, path, adjust);
      // One worker at the default politeness: each host's rate, hourly and daily budgets.
      const polite = Math.max(
        politeSeconds(s.clist, "push2.eastmoney.com"),
        0,
      ) + politeSeconds(s.kline, "push2his.eastmoney.com");
      days.push({
        day,
        requests: s.clist + s.kline,
        budget,
        byEndpoint: `clist ${s.clist}, kline ${s.kline}`,
        exDates: s.exDates,
        gaps: s.gaps,
        newListings: s.newListings,
        mismatches,
        wallS: s.wallS,
        politeS: polite,
      });
      log(
        `store: ${day}: ${
          s.clist + s.kline
        } requests (budget ${budget}), ${mismatches} mismatches`,
      );
    }
    const store = await MarketStore.open(path);
    let bars = 0, bytes = 0;
    const readMs: number[] = [];
    const crossMs: number[] = [];
    try {
      await store.compact();
      bars = await store.barCount();
      bytes = (await Deno.stat(path)).size;
      const codes = market.listed("stock");
      for (let i = 0; i < 50; i++) {
        const code = codes[(i * 7919) % codes.length];
        const t = performance.now();
        await store.readSeries({ symbolType: "stock", code, adjust: "qfq" });
        readMs.push(performance.now() - t);
      }
      for (let i = 0; i < 10; i++) {
        const t = performance.now();
        await store.crossSection(undefined, "qfq", market.today);
        crossMs.push(performance.now() - t);
      }
    } finally {
      await store.close();
    }
    readMs.sort((a, b) => a - b);
    crossMs.sort((a, b) => a - b);
    const engines = await runEngines(options.engineBars ?? 3_000_000, log);

    checks.push({
      name: "store requests per daily sync",
      pass: days.every((d) => d.requests <= d.budget),
      detail: days.map((d) => `${d.requests}/${d.budget}`).join(", "),
    });
    checks.push({
      name: "store equals a fresh full fetch each day",
      pass: days.every((d) => d.mismatches === 0),
      detail: `${days.map((d) => d.mismatches).join(", ")} mismatches`,
    });
    checks.push({
      name: "store first fill under 300 MB RSS",
      pass: fill.peak < 300,
      detail: `${fixed(fill.peak, 0)} MiB`,
    });
    checks.push({
      name: "store one symbol's history ≤ 5 ms",
      pass: median(readMs) <= 5,
      detail: `median ${fixed(median(readMs), 1)} ms`,
    });
    checks.push({
      name: "store one day's cross-section ≤ 50 ms",
      pass: median(crossMs) <= 50,
      detail: `median ${fixed(median(crossMs), 1)} ms`,
    });
    return {
      symbols,
      adjust,
      bars,
      fill: {
        wallS: fill.wallS,
        peakRssMiB: fill.peak,
        requests: fill.clist + fill.kline,
      },
      days,
      bytesPerMillionBars: bytes / (bars / 1e6),
      readMs,
      crossSectionMs: crossMs,
      engines,
      checks,
    };
  } finally {
    await worker.stop();
    service.close();
    await server.close();
    await market.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Seconds one worker needs for `requests` to `host` at its default rate and budgets. */
function politeSeconds(requests: number, host: string): number {
  const limits = HOST_LIMITS[host];
  if (!limits || requests === 0) return 0;
  const byRate = requests / limits.rateLimit;
  // Past an hour's budget the rest waits for the window to roll.
  const byHour = Math.max(0, Math.ceil(requests / limits.budgetHour) - 1) *
    3600;
  return Math.max(byRate, byHour);
}

async function compare(
  market: ReturnType<typeof startFakeMarket>,
  path: string,
  adjusts: Adjust[],
): Promise<number> {
  const store = await MarketStore.open(path, { readOnly: true });
  let wrong = 0;
  try {
    for (const kind of KINDS) {
      const codes = market.listed(kind);
      for (const adjust of adjusts) {
        for (let i = 0; i < codes.length; i += 200) {
          const chunk = codes.slice(i, i + 200);
          const held = await store.readMany(kind, adjust, chunk);
          for (const code of chunk) {
            const want = market.series(kind, code, adjust);
            const got = held.get(code) ?? [];
            if (!sameSeries(got, want)) wrong++;
          }
        }
      }
    }
  } finally {
    await store.close();
  }
  return wrong;
}

function sameSeries(a: Bar[], b: Bar[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    if (barDifference(a[i], b[i]) !== undefined) return false;
  }
  return true;
}

/** The median time of 20 runs of `run(r)` one after the other, ms. */
async function medianOf20(run: (r: number) => unknown): Promise<number> {
  const ms: number[] = [];
  for (let r = 0; r < 20; r++) {
    const t = performance.now();
    const out = run(r);
    if (out instanceof Promise) await out;
    ms.push(performance.now() - t);
  }
  return median(ms.sort((a, b) => a - b));
}

function median(sorted: number[]): number {
  return sorted.length === 0 ? NaN : sorted[Math.floor(sorted.length / 2)];
}

/**
 * DuckDB (the store) against `node:sqlite` on `bars` made-up bars: 7,000 symbols of equal
 * length, ingested in one transaction each way, then one symbol's history and one day's
 * cross-section read back (medians of 20).
 */
export async function runEngines(
  bars: number,
  log: (line: string) => void,
): Promise<EngineRow[]> {
  const symbols = 7000;
  const perSymbol = Math.max(1, Math.floor(bars / symbols));
  const total = perSymbol * symbols;
  const dir = await Deno.makeTempDir({ prefix: "store_engines_" });
  const days = weekdays(perSymbol);
  const rows: EngineRow[] = [];
  try {
    log(`store: engines, ${total} bars each …`);
    // DuckDB through the store.
    {
      const path = `${dir}/engines.duckdb`;
      const store = await MarketStore.open(path);
      const t = performance.now();
      const step = 100;
      for (let i = 0; i < symbols; i += step) {
        const replace = [];
        for (let k = i; k < Math.min(symbols, i + step); k++) {
          replace.push({
            key: key(k),
            bars: days.map((_, d) => bar(days, k, d)),
          });
        }
        await store.commit({ replace });
      }
      await store.compact();
      const ingestS = (performance.now() - t) / 1000;
      const readMs = await medianOf20((r) =>
        store.readSeries(key((r * 331) % symbols))
      );
      const crossSectionMs = await medianOf20((r) =>
        store.crossSection("stock", "qfq", days[(r * 37) % days.length])
      );
      await store.close();
      rows.push({
        engine: "duckdb (@duckdb/node-api)",
        bars: total,
        ingestS,
        barsPerS: total / ingestS,
        fileMiB: (await Deno.stat(path)).size / 1_048_576,
        readMs,
        crossSectionMs,
      });
    }
    // node:sqlite, the fallback: the same rows, a primary key on (code, date) and an index on date.
    {
      const path = `${dir}/engines.sqlite`;
      const db = new DatabaseSync(path);
      db.exec(`PRAGMA journal_mode = WAL;
        CREATE TABLE bars (symbol_type TEXT, code TEXT, adjust TEXT, date TEXT, open REAL,
          high REAL, low REAL, close REAL, volume REAL, amount REAL, amplitude REAL,
          pct_change REAL, change REAL, turnover REAL,
          PRIMARY KEY (symbol_type, adjust, code, date)) WITHOUT ROWID;`);
      const insert = db.prepare(
        "INSERT INTO bars VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
      );
      const t = performance.now();
      db.exec("BEGIN");
      for (let i = 0; i < symbols; i++) {
        for (let d = 0; d < days.length; d++) {
          const b = bar(days, i, d);
          insert.run(
            "stock",
            code(i),
            "qfq",
            b.date,
            b.open,
            b.high,
            b.low,
            b.close,
            b.volume,
            b.amount!,
            b.amplitude!,
            b.pct_change!,
            b.change!,
            b.turnover!,
          );
        }
      }
      db.exec("COMMIT");
      db.exec("CREATE INDEX bars_date ON bars (date)");
      const ingestS = (performance.now() - t) / 1000;
      const one = db.prepare(
        "SELECT * FROM bars WHERE symbol_type = 'stock' AND adjust = 'qfq' AND code = ? ORDER BY date",
      );
      const day = db.prepare(
        "SELECT * FROM bars WHERE adjust = 'qfq' AND date = ? ORDER BY code",
      );
      const readMs = await medianOf20((r) =>
        one.all(code((r * 331) % symbols))
      );
      const crossSectionMs = await medianOf20((r) =>
        day.all(days[(r * 37) % days.length])
      );
      db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
      db.close();
      rows.push({
        engine: "node:sqlite",
        bars: total,
        ingestS,
        barsPerS: total / ingestS,
        fileMiB: (await Deno.stat(path)).size / 1_048_576,
        readMs,
        crossSectionMs,
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return rows;
}

/** The section's tables. */
export function storeTable(r: StoreBenchResult): string {
  const daysTable = table(
    [
      "day",
      "requests",
      "budget",
      "by endpoint",
      "ex-dates",
      "gaps",
      "new series",
      "mismatches",
      "wall s",
      "1 worker, default politeness",
    ],
    r.days.map((d) => [
      d.day,
      String(d.requests),
      String(d.budget),
      d.byEndpoint,
      String(d.exDates),
      String(d.gaps),
      String(d.newListings),
      String(d.mismatches),
      fixed(d.wallS, 1),
      `${fixed(d.politeS / 60, 0)} min`,
    ]),
  );
  const engines = table(
    [
      "engine",
      "bars",
      "ingest s",
      "bars/s",
      "file MiB",
      "one symbol ms",
      "one day ms",
    ],
    r.engines.map((e) => [
      e.engine,
      String(e.bars),
      fixed(e.ingestS, 1),
      fixed(e.barsPerS, 0),
      fixed(e.fileMiB, 1),
      fixed(e.readMs, 2),
      fixed(e.crossSectionMs, 2),
    ]),
  );
  return [
    `first fill: ${r.fill.requests} requests, ${
      fixed(r.fill.wallS, 0)
    } s, peak RSS ${fixed(r.fill.peakRssMiB, 0)} MiB; ${r.bars} bars, ${
      fixed(r.bytesPerMillionBars / 1_048_576, 1)
    } MiB per million bars`,
    `one symbol's history: median ${fixed(median(r.readMs), 2)} ms (${
      fixed(r.readMs[0], 2)
    }-${
      fixed(r.readMs.at(-1), 2)
    }); one day's cross-section of all symbols: median ${
      fixed(median(r.crossSectionMs), 2)
    } ms`,
    "",
    daysTable,
    "",
    engines,
  ].join("\n");
}
