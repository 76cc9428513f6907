// Cache expiry at the daily close, to the millisecond: 15:00:00.000 in Shanghai (07:00 UTC).

import assert from "node:assert/strict";
import { createMarketService, type MarketResult } from "../lib/market/mod.ts";
import { manualClock, startFakeEastmoney } from "./_fake_eastmoney.ts";

const QFQ = { symbol_type: "etf", code: "510300", adjust: "qfq" };
const CLOSE = Date.parse("2026-03-23T07:00:00.000Z"); // Monday 15:00 in Shanghai

function cached(result: MarketResult): boolean {
  assert.ok(result.success, JSON.stringify(result));
  return result.cached;
}

Deno.test("market cache - a qfq entry serves until 14:59:59.999 and is stale at 15:00:00.000 Shanghai", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const clock = manualClock("2026-03-23T03:00:00Z"); // Monday 11:00 in Shanghai
  const market = createMarketService({
    eastmoneyUrl: fake.url,
    rateLimit: 0,
    clock,
  });
  try {
    assert.equal(cached(await market.getMarket(QFQ)), false);
    clock.time = CLOSE - 1;
    assert.equal(cached(await market.getMarket(QFQ)), true);
    clock.time = CLOSE;
    assert.equal(cached(await market.getMarket(QFQ)), false);
    assert.equal(fake.callsFor("510300"), 2);
  } finally {
    market.close();
  }
});

Deno.test("market cache - a qfq entry fetched at 15:00:00.000 Shanghai serves until the next close", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const clock = manualClock(CLOSE);
  const market = createMarketService({
    eastmoneyUrl: fake.url,
    rateLimit: 0,
    clock,
  });
  try {
    assert.equal(cached(await market.getMarket(QFQ)), false);
    clock.time = CLOSE + 24 * 3600_000 - 1; // Tuesday 14:59:59.999
    assert.equal(cached(await market.getMarket(QFQ)), true);
    clock.time = CLOSE + 24 * 3600_000;
    assert.equal(cached(await market.getMarket(QFQ)), false);
    assert.equal(fake.callsFor("510300"), 2);
  } finally {
    market.close();
  }
});
