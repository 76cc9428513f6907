import assert from "node:assert/strict";
import { createMarketService } from "../lib/market/service.ts";
import { SNAPSHOT_FIELDS } from "../lib/market/snapshot.ts";
import { startFakeMarket } from "./_fake_market.ts";

function service(url: string, fallback: string | null) {
  return createMarketService({
    eastmoneyUrl: url,
    eastmoneyListUrl: url,
    eastmoneySnapshotFallbackUrl: fallback,
    rateLimit: 0,
    retries: 0,
    breaker: { threshold: 100, coolDownMs: 1000, maxCoolDownMs: 1000 },
  });
}

Deno.test("get_snapshot - a page carries the day's quote of each symbol; a suspended one shows no price", async () => {
  const market = startFakeMarket({ stocks: 150, suspendRate: 0.1 });
  const market2 = service(market.url, null);
  try {
    const page = await market2.actions().get_snapshot(
      { symbol_type: "stock", page: 2 },
      { signal: new AbortController().signal } as never,
    ) as Awaited<ReturnType<typeof market2.getSnapshot>>;
    assert.ok(page.success, JSON.stringify(page));
    assert.equal(page.total, 150);
    assert.equal(page.rows.length, 50);
    const suspended = page.rows.filter((r) => r.close === undefined);
    const traded = page.rows.filter((r) => r.close !== undefined);
    assert.ok(suspended.length > 0 && traded.length > 0);
    for (const row of suspended) {
      assert.equal(row.open, undefined);
      assert.equal(row.volume, undefined);
      assert.ok(row.prev_close !== undefined);
    }
    const row = traded[0];
    const bar = market.series("stock", row.code, "none").at(-1)!;
    assert.equal(bar.date, market.today);
    assert.deepEqual(
      [row.open, row.high, row.low, row.close, row.volume, row.amount],
      [bar.open, bar.high, bar.low, bar.close, bar.volume, bar.amount],
    );
    assert.equal(row.updated_at, market.updatedAt);
    const asked = new URL(
      market.url + "/api/qt/clist/get?fields=" + SNAPSHOT_FIELDS,
    );
    assert.equal(asked.searchParams.get("fields")?.split(",").length, 15);
  } finally {
    market2.close();
    await market.close();
  }
});

Deno.test("get_snapshot - a page the first host cannot serve comes from the delayed host", async () => {
  const market = startFakeMarket({ etfs: 30 });
  // Nothing listens on the first host: the connection is refused, as push2 does after hours.
  const dead = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadUrl = `http://127.0.0.1:${dead.addr.port}`;
  dead.close();
  const withFallback = service(deadUrl, market.url);
  const without = service(deadUrl, null);
  try {
    const page = await withFallback.getSnapshot({
      symbol_type: "etf",
      page: 1,
    });
    assert.ok(page.success, JSON.stringify(page));
    assert.equal(page.host, new URL(market.url).host);
    assert.equal(page.rows.length, 30);
    const failed = await without.getSnapshot({ symbol_type: "etf", page: 1 });
    assert.equal(failed.success, false);
    assert.equal(
      (failed as { error_code: string }).error_code,
      "UPSTREAM_UNAVAILABLE",
    );
  } finally {
    withFallback.close();
    without.close();
    await market.close();
  }
});

Deno.test("get_snapshot - bad params are refused by name; a page cut short is not served", async () => {
  const market = startFakeMarket({ etfs: 30 });
  const s = service(market.url, null);
  try {
    const bad = await s.getSnapshot({ symbol_type: "bond", page: 1 });
    assert.match(
      (bad as { error: string }).error,
      /Invalid symbol_type "bond"/,
    );
    const badPage = await s.getSnapshot({ symbol_type: "etf", page: 0 });
    assert.match((badPage as { error: string }).error, /Invalid page 0/);
    // Page 2 of 30 symbols holds nothing: no page is cut short, it is simply past the end.
    const past = await s.getSnapshot({ symbol_type: "etf", page: 2 });
    assert.ok(past.success);
    assert.equal(past.rows.length, 0);
    market.truncateList = true;
    const cut = await s.getSnapshot({ symbol_type: "etf", page: 1 });
    assert.equal(cut.success, false);
    assert.match(
      (cut as { error: string }).error,
      /snapshot page 1 for etf is truncated: 29 of 30 rows/,
    );
  } finally {
    s.close();
    await market.close();
  }
});
