import assert from "node:assert/strict";
import { systemClock } from "../lib/market/clock.ts";
import { createMarketService } from "../lib/market/service.ts";
import type { Adjust, SymbolType } from "../lib/market/types.ts";
import {
  barDifference,
  runSync,
  type SyncReport,
} from "../lib/requester/sync_job.ts";
import { MarketStore } from "../lib/store/store.ts";
import {
  type FakeMarket,
  type FakeMarketOptions,
  startFakeMarket,
} from "./_fake_market.ts";
import {
  connectClient,
  releasing,
  startTestServer,
  startWorker,
  tempDir,
} from "./_helpers.ts";

const KINDS: SymbolType[] = ["etf", "stock", "index"];
const ADJUSTS: Adjust[] = ["none", "qfq", "hfq"];

/** A market, a server and one worker whose market service calls it without cache or pacing. */
export async function syncRig(options: FakeMarketOptions = {}) {
  const market = startFakeMarket(options);
  const server = startTestServer();
  const service = createMarketService({
    eastmoneyUrl: market.url,
    eastmoneyListUrl: market.url,
    eastmoneySnapshotFallbackUrl: null,
    rateLimit: 0,
    budgetHour: 0,
    budgetDay: 0,
    retries: 0,
    // The market's own time: a series fetched on an earlier simulated day is stale.
    clock: {
      now: () => market.updatedAt + 60_000,
      sleep: (ms, signal) => systemClock.sleep(ms, signal),
    },
  });
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
): Promise<string[]> {
  const out: string[] = [];
  const all = await store.readAll();
  for (const kind of KINDS) {
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
    etfs: 40,
    stocks: 60,
    exDividendRate: 0.05,
    suspendRate: 0.04,
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
