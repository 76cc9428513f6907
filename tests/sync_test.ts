import assert from "node:assert/strict";
import { createMarketService } from "../lib/market/service.ts";
import type { Adjust, SymbolType } from "../lib/market/types.ts";
import { runSync, type SyncReport } from "../lib/requester/sync_job.ts";
import { barDifference } from "../lib/store/rows.ts";
import { MarketStore } from "../lib/store/store.ts";
import { verifyStore } from "../lib/requester/sync_cli.ts";
import {
  directServiceOptions,
  type FakeMarket,
  type FakeMarketOptions,
  startFakeMarket,
} from "./_fake_market.ts";
import {
  connectClient,
  mulberry32,
  releasing,
  startTestServer,
  startWorker,
  tempDir,
  waitFor,
} from "./_helpers.ts";

const KINDS: SymbolType[] = ["etf", "stock", "index"];
const ADJUSTS: Adjust[] = ["none", "qfq", "hfq"];

/** A market, a server and one worker whose market service calls it without cache or pacing. */
export async function syncRig(options: FakeMarketOptions = {}) {
  const market = startFakeMarket(options);
  const server = startTestServer();
  const service = createMarketService(directServiceOptions(market));
  const worker = await startWorker(server, { actions: service.actions() });
  const client = await connectClient(server.requesterUrl, { timeout: 60 });
  return releasing({ market, server, service, worker, client }, async (r) => {
    await r.client.close();
    await r.worker.stop();
    r.service.close();
    await r.server.close();
    await r.market.close();
  });
}

/** Every series of the market's universe compared with the store: the mismatches. */
export async function mismatches(
  market: FakeMarket,
  store: MarketStore,
  adjusts: readonly Adjust[],
  kinds: readonly SymbolType[] = KINDS,
): Promise<string[]> {
  const out: string[] = [];
  const all = await store.readAll();
  for (const kind of kinds) {
    for (const code of market.listed(kind)) {
      for (const adjust of adjusts) {
        const want = market.series(kind, code, adjust);
        const got = all.get(`${kind}|${code}|${adjust}`) ?? [];
        if (got.length !== want.length) {
          out.push(
            `${kind} ${code} ${adjust}: ${got.length} bars, want ${want.length}`,
          );
          continue;
        }
        for (let i = 0; i < want.length; i++) {
          const diff = barDifference(got[i], want[i]);
          if (diff) {
            out.push(`${kind} ${code} ${adjust}: ${diff}`);
            break;
          }
        }
      }
    }
  }
  return out;
}

function total(report: SyncReport): number {
  return Object.values(report.requests).reduce((a, b) => a + b, 0);
}

Deno.test("sync - a first fill, then five trading days of snapshots, ex-dates, suspensions and listings: the store equals a fresh fetch each day", async () => {
  await using rig = await syncRig({
    etfs: 16,
    stocks: 30,
    exDividendRate: 0.08,
    suspendRate: 0.05,
  });
  await using dir = await tempDir("sync_");
  const store = await MarketStore.open(`${dir.path}/s.duckdb`);
  try {
    const now = () => rig.market.updatedAt + 60_000;
    const first = await runSync(rig.client, {
      store,
      all: KINDS,
      adjust: ADJUSTS,
      now,
    });
    assert.deepEqual(first.failed, []);
    assert.equal(first.day, rig.market.today);
    assert.deepEqual(await mismatches(rig.market, store, ADJUSTS), []);
    let exDates = 0, suspended = 0, listings = 0;
    for (let d = 0; d < 5; d++) {
      rig.market.advance();
      const before = rig.market.counts();
      const report = await runSync(rig.client, {
        store,
        all: KINDS,
        adjust: ADJUSTS,
        now,
      });
      const after = rig.market.counts();
      assert.deepEqual(report.failed, []);
      assert.equal(report.day, rig.market.today);
      assert.deepEqual(
        await mismatches(rig.market, store, ADJUSTS),
        [],
        `day ${d}`,
      );
      exDates += report.corporateActions;
      suspended += report.suspended;
      listings += report.newListings;
      // What the sync counts is what the upstream served.
      const served = (after.clist ?? 0) - (before.clist ?? 0) +
        (after.kline ?? 0) - (before.kline ?? 0);
      assert.equal(total(report), served, JSON.stringify(report.requests));
      const symbols = report.symbols;
      const budget = Math.ceil(1.2 * symbols / 100) + 1 +
        2 * report.corporateActions + report.gaps + 3 * report.newListings;
      assert.ok(
        total(report) <= budget,
        `${total(report)} > ${budget}: ${JSON.stringify(report.requests)}`,
      );
    }
    assert.ok(
      exDates > 0,
      "no ex-date happened: the test proves nothing about them",
    );
    assert.ok(suspended > 0, "no suspension happened");
    assert.equal(listings, 10 * ADJUSTS.length);
  } finally {
    await store.close();
  }
});

const REQUESTER = new URL("../requester.ts", import.meta.url).pathname;

function syncProcess(url: string, store: string, extra: string[] = []) {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      REQUESTER,
      "sync",
      "--url",
      url,
      "--all",
      "etf,stock,index",
      "--adjust",
      "none,qfq,hfq",
      "--store",
      store,
      "--quiet",
      "--batch-size",
      "20",
      ...extra,
    ],
    stdout: "piped",
    stderr: "piped",
  });
}

Deno.test("sync - killed 20 times at random points (first fill and daily syncs), the next sync completes: 0 differences from a fresh fetch", async () => {
  await using rig = await syncRig({
    etfs: 16,
    stocks: 24,
    exDividendRate: 0.1,
  });
  await using dir = await tempDir("sync_kill_");
  const path = `${dir.path}/s.duckdb`;
  const random = mulberry32(20);
  // Spread the kills over each run's life, by its progress rather than by the clock (a process
  // start takes 50 ms on a quiet machine and seconds on a busy one): from before the store
  // opens to its last writes.
  rig.market.latencyMs = 5;
  const served = () =>
    Object.values(rig.market.counts()).reduce((sum, n) => sum + n, 0);
  let killed = 0;
  for (let k = 0; k < 20; k++) {
    if (k === 10 || k === 15) rig.market.advance();
    const child = syncProcess(rig.server.requesterUrl, path).spawn();
    let ended = false;
    child.status.then(() => ended = true);
    const target = served() + Math.floor(random() * 24);
    await waitFor(
      () => ended || served() >= target,
      `run ${k} to reach ${target} upstream requests`,
      60_000,
      1,
    );
    if (k % 2 === 1) {
      // Every other kill lands while the store is being written: when its write-ahead log
      // grows (a commit's statements run for some milliseconds, mostly between two polls).
      const size = () => {
        try {
          return Deno.statSync(`${path}.wal`).size;
        } catch {
          return -1;
        }
      };
      const before = size();
      await waitFor(() => ended || size() !== before, "a write", 60_000, 1);
    }
    try {
      child.kill("SIGKILL");
      killed++;
    } catch {
      // it finished first: the next one starts from a complete store
    }
    await child.output();
  }
  assert.ok(killed >= 10, `only ${killed} of 20 runs were still going`);
  rig.market.latencyMs = 0;
  const done = await syncProcess(rig.server.requesterUrl, path).output();
  const stderr = new TextDecoder().decode(done.stderr);
  assert.equal(done.code, 0, stderr);
  const store = await MarketStore.open(path);
  try {
    assert.deepEqual(await mismatches(rig.market, store, ADJUSTS), []);
  } finally {
    await store.close();
  }
});

Deno.test("sync - a second sync on the same store stops at once with a lock error; the first is unharmed", async () => {
  await using rig = await syncRig({ etfs: 10, stocks: 10 });
  await using dir = await tempDir("sync_lock_");
  const path = `${dir.path}/s.duckdb`;
  rig.market.latencyMs = 100;
  const first = syncProcess(rig.server.requesterUrl, path).spawn();
  await using _reap = {
    [Symbol.asyncDispose]: async () => {
      try {
        first.kill("SIGKILL");
      } catch { /* ended */ }
      await first.output().catch(() => {});
    },
  };
  await waitFor(
    () => (rig.market.counts().kline ?? 0) > 2,
    "the first sync to fetch",
    60_000, // a process start on a loaded machine
  );
  const second = await syncProcess(rig.server.requesterUrl, path).output();
  const text = new TextDecoder().decode(second.stderr);
  assert.equal(second.code, 6, text);
  assert.match(
    text,
    /requester sync: Store ".*s\.duckdb" is locked by another process \(PID \d+\)/,
  );
  rig.market.latencyMs = 0;
  const result = await first.output();
  assert.equal(result.code, 0, new TextDecoder().decode(result.stderr));
  const store = await MarketStore.open(path);
  try {
    assert.deepEqual(await mismatches(rig.market, store, ADJUSTS), []);
  } finally {
    await store.close();
  }
});

Deno.test("sync - an empty history is not stored and not done: the next sync asks again", async () => {
  await using rig = await syncRig({
    etfs: 4,
    stocks: 4,
    emptyCodes: ["510002"],
  });
  await using dir = await tempDir("sync_empty_");
  const store = await MarketStore.open(`${dir.path}/s.duckdb`);
  try {
    const now = () => rig.market.updatedAt + 60_000;
    const first = await runSync(rig.client, { store, all: ["etf"], now });
    assert.equal(first.empty, 1);
    assert.equal((await store.seriesInfo()).has("etf|510002|qfq"), false);

    const second = await runSync(rig.client, { store, all: ["etf"], now });
    assert.equal(second.empty, 1);
    assert.equal(second.requests["kline fill"], 1);
    // (the worker may answer the empty one from its cache: what counts is that the sync asks)
  } finally {
    await store.close();
  }
});

Deno.test("sync - a snapshot taken before the close adds nothing and says so; the day comes from K-lines", async () => {
  await using rig = await syncRig({ etfs: 6, stocks: 24 });
  await using dir = await tempDir("sync_early_");
  const store = await MarketStore.open(`${dir.path}/s.duckdb`);
  try {
    const now = () => rig.market.updatedAt + 60_000;
    await runSync(rig.client, { store, all: ["stock", "index"], now });
    rig.market.advance();
    rig.market.snapshotTime = Date.parse(`${rig.market.today}T05:00:00Z`); // 13:00 Shanghai
    const notes: string[] = [];
    const report = await runSync(rig.client, {
      store,
      all: ["stock", "index"],
      now,
      log: (line) => notes.push(line),
    });
    assert.match(
      report.snapshots.stock,
      /before the close of \d{4}-\d{2}-\d{2} \(updated 13:00 Shanghai\): adds nothing/,
    );
    assert.ok(
      notes.some((n) => n.includes("before the close")),
      notes.join("\n"),
    );
    assert.ok(report.gaps > 0);
    assert.deepEqual(report.failed, []);
    assert.deepEqual(
      await mismatches(rig.market, store, ["qfq"], ["stock", "index"]),
      [],
    );
  } finally {
    await store.close();
  }
});

Deno.test("store verify - re-fetches a sample, prints each mismatch and repairs it; a second pass finds none", async () => {
  await using rig = await syncRig({ etfs: 4, stocks: 2 });
  await using dir = await tempDir("sync_verify_");
  const store = await MarketStore.open(`${dir.path}/s.duckdb`);
  try {
    const now = () => rig.market.updatedAt + 60_000;
    await runSync(rig.client, { store, all: ["etf"], now });
    const key = {
      symbolType: "etf" as const,
      code: "510000",
      adjust: "qfq" as const,
    };
    const bars = await store.readSeries(key);
    bars[3] = { ...bars[3], close: bars[3].close + 1 };
    await store.commit({ replace: [{ key, bars }] });
    const lines: string[] = [];
    const first = await verifyStore(rig.client, store, {
      sample: 100,
      write: (text) => lines.push(text),
    });
    assert.equal(first.mismatched, 1, lines.join(""));
    assert.match(
      lines.join(""),
      new RegExp(`etf 510000 qfq: MISMATCH ${bars[3].date} close`),
    );
    const second = await verifyStore(rig.client, store, {
      sample: 100,
      write: () => {},
    });
    assert.equal(second.mismatched, 0);
    assert.equal(second.checked, first.checked);
    assert.deepEqual(
      await mismatches(rig.market, store, ["qfq"], ["etf"]),
      [],
    );
  } finally {
    await store.close();
  }
});
