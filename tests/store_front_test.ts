import assert from "node:assert/strict";
import { systemClock } from "../lib/market/clock.ts";
import { createMarketService } from "../lib/market/service.ts";
import { aggregateBars } from "../lib/market/aggregate.ts";
import { runSync } from "../lib/requester/sync_job.ts";
import { createStoreFront, lastCloseDay } from "../lib/store/front.ts";
import { MarketStore } from "../lib/store/store.ts";
import { startFakeMarket } from "./_fake_market.ts";
import {
  connectClient,
  startTestServer,
  startWorker,
  tempDir,
} from "./_helpers.ts";

Deno.test("server --store - answers from the store what it holds up to the last close, asks the workers for the rest and keeps it", async () => {
  const market = startFakeMarket({ etfs: 6, stocks: 4 });
  await using dir = await tempDir("front_");
  const path = `${dir.path}/s.duckdb`;
  const now = () => market.updatedAt + 60_000;
  const front = createStoreFront(path, { now });
  await using server = startTestServer({ marketFront: front });
  const service = createMarketService({
    eastmoneyUrl: market.url,
    eastmoneyListUrl: market.url,
    rateLimit: 0,
    budgetHour: 0,
    budgetDay: 0,
    retries: 0,
    clock: { now, sleep: (ms, s) => systemClock.sleep(ms, s) },
  });
  try {
    await using _worker = await startWorker(server, {
      actions: service.actions(),
    });
    // The store is filled by a sync through another server, as a cron job would.
    {
      await using plain = startTestServer();
      await using _w = await startWorker(plain, { actions: service.actions() });
      await using syncClient = await connectClient(plain.requesterUrl);
      const store = await MarketStore.open(path);
      try {
        await runSync(syncClient, { store, all: ["etf"], now });
      } finally {
        await store.close();
      }
    }
    await using client = await connectClient(server.requesterUrl);
    const truth = market.series("etf", "510000", "qfq");
    const asked = await client.request("get_market", {
      symbol_type: "etf",
      code: "510000",
      start_date: truth[10].date,
    });
    assert.equal(asked.processed_by, "store");
    const data = asked.data as { source: string; data: unknown[] };
    assert.equal(data.source, "store");
    assert.deepEqual(data.data, truth.slice(10));
    // Weekly bars come from the daily ones.
    const weekly = await client.request("get_market", {
      symbol_type: "etf",
      code: "510000",
      period: "weekly",
    });
    assert.deepEqual(
      (weekly.data as { data: unknown[] }).data,
      aggregateBars(truth, "weekly"),
    );
    // A whole batch the store holds: no worker is asked.
    const batch = await client.request("get_markets", [
      { symbol_type: "etf", code: "510000" },
      { symbol_type: "etf", code: "159001" },
    ]);
    assert.equal(batch.processed_by, "store");
    // Over HTTP, as the dashboard asks.
    const port = new URL(server.requesterUrl).port;
    const http = await fetch(
      `http://127.0.0.1:${port}/v1/market?symbol_type=etf&code=510000`,
    );
    const body = await http.json();
    assert.equal(body.source, "store");
    assert.equal(body.data.length, truth.length);
    // A stock the store does not hold goes to a worker, and is kept.
    const stock = await client.request("get_market", {
      symbol_type: "stock",
      code: "600000",
    });
    assert.notEqual(stock.processed_by, "store");
    assert.equal((stock.data as { source: string }).source, "eastmoney");
    await front.close();
    const again = await client.request("get_market", {
      symbol_type: "stock",
      code: "600000",
    });
    assert.equal(again.processed_by, "store");
    assert.deepEqual(
      (again.data as { data: unknown[] }).data,
      market.series("stock", "600000", "qfq"),
    );
    // A day later the store no longer holds the last close: the workers answer (and it is kept).
    market.advance();
    const later = await client.request("get_market", {
      symbol_type: "etf",
      code: "510000",
    });
    assert.notEqual(later.processed_by, "store");
  } finally {
    await front.close();
    service.close();
    await market.close();
  }
});

Deno.test("lastCloseDay - the last weekday whose close passed, skipping holidays the calendar knows", () => {
  const calendar = ["2025-09-29", "2025-09-30", "2025-10-09"];
  // Friday 2025-10-10, 14:00 Shanghai: the 10th is still trading.
  assert.equal(
    lastCloseDay(calendar, Date.parse("2025-10-10T06:00:00Z")),
    "2025-10-09",
  );
  // Thursday 2025-10-02 during the holiday, which the calendar does not hold yet: the 2nd is
  // presumed a trading day (the store then asks the workers; it never serves a day short).
  assert.equal(
    lastCloseDay(
      ["2025-09-29", "2025-09-30"],
      Date.parse("2025-10-02T08:00:00Z"),
    ),
    "2025-10-02",
  );
  // Known holidays are skipped.
  assert.equal(
    lastCloseDay(calendar, Date.parse("2025-10-09T06:00:00Z")),
    "2025-09-30",
  );
});

Deno.test("server --store - a store that cannot be read sends the request to the workers", async () => {
  await using dir = await tempDir("front_bad_");
  const path = `${dir.path}/not_a_store.duckdb`;
  await Deno.writeTextFile(path, "this is not a DuckDB file\n".repeat(200));
  const front = createStoreFront(path);
  await using server = startTestServer({ marketFront: front });
  await using _worker = await startWorker(server, {
    actions: {
      get_market: (params) => ({
        success: true,
        code: (params as { code: string }).code,
        source: "worker",
        data: [],
      }),
    },
  });
  await using client = await connectClient(server.requesterUrl);
  const answer = await client.request("get_market", {
    symbol_type: "etf",
    code: "510300",
  });
  assert.equal(answer.success, true);
  assert.equal((answer.data as { source: string }).source, "worker");
  await front.close();
});
