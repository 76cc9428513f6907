import assert from "node:assert/strict";
import {
  createMarketService,
  type MarketResult,
  type MarketServiceOptions,
  type MarketSuccess,
} from "../lib/market/mod.ts";
import { manualClock, startFakeEastmoney } from "./_fake_eastmoney.ts";

// Synthetic bars run 2015-01-05 .. 2026-03-20; "now" is the Monday after, past the close.
const NOW = "2026-03-23T08:00:00Z";

function serviceFor(url: string, options: MarketServiceOptions = {}) {
  return createMarketService({
    eastmoneyUrl: url,
    tencentUrl: url,
    rateLimit: 0,
    random: () => 0.5,
    clock: manualClock(NOW),
    ...options,
  });
}

function ok(result: MarketResult): MarketSuccess {
  assert.ok(result.success, `expected success, got ${JSON.stringify(result)}`);
  return result;
}

const pageOf = (url: URL) => url.searchParams.get("param")?.split(",")[2];

Deno.test("tencent - one empty page in mid-history is asked again, and the series stays whole", async () => {
  let emptied = 0;
  await using fake = await startFakeEastmoney({
    synthetic: true,
    hook: (r) => {
      if (pageOf(r.url) === "2019-01-01" && emptied === 0) {
        emptied++;
        return "empty";
      }
    },
  });
  const market = serviceFor(fake.url, { providers: ["eastmoney", "tencent"] });
  const reference = ok(
    await market.getMarket({ symbol_type: "etf", code: "510500" }),
  );
  const market2 = serviceFor(fake.url, { providers: ["tencent"] });
  const viaTencent = ok(
    await market2.getMarket({ symbol_type: "etf", code: "510500" }),
  );
  assert.equal(emptied, 1);
  assert.equal(viaTencent.data.length, reference.data.length);
  assert.deepEqual(
    viaTencent.data.map((b) => [b.date, b.close, b.volume]),
    reference.data.map((b) => [b.date, b.close, b.volume]),
  );
  market.close();
  market2.close();
});

Deno.test("tencent - a page that stays empty mid-history fails retriable and caches nothing", async () => {
  let hole = true;
  await using fake = await startFakeEastmoney({
    synthetic: true,
    hook: (r) => hole && pageOf(r.url) === "2019-01-01" ? "empty" : undefined,
  });
  const market = serviceFor(fake.url, { providers: ["tencent"] });
  const params = { symbol_type: "etf", code: "510500" };
  const failed = await market.getMarket(params);
  assert.equal(failed.success, false);
  assert.equal(!failed.success && failed.error_code, "UPSTREAM_BLOCKED");
  assert.equal(!failed.success && failed.retriable, true);
  assert.match(!failed.success ? failed.error : "", /empty page for 2019–2020/);
  hole = false;
  const calls = fake.calls;
  const whole = ok(await market.getMarket(params));
  assert.equal(whole.cached, false, "the cut-off history was not cached");
  assert.ok(fake.calls > calls);
  assert.equal(whole.data[0].date, "2015-01-05");
  assert.equal(whole.data.at(-1)!.date, "2026-03-20");
  market.close();
});

Deno.test("eastmoney - a daily answer with fewer klines than dktotal fails retriable and is not cached", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    failures: [{ mode: "truncated", times: 1 }],
  });
  const market = serviceFor(fake.url);
  const params = { symbol_type: "stock", code: "600519" };
  const cut = await market.getMarket(params);
  assert.equal(!cut.success && cut.error_code, "UPSTREAM_UNAVAILABLE");
  assert.equal(!cut.success && cut.retriable, true);
  assert.match(!cut.success ? cut.error : "", /truncated: \d+ of \d+ bars/);
  const whole = ok(await market.getMarket(params));
  assert.equal(whole.cached, false);
  assert.equal(whole.data[0].date, "2015-01-05");
  market.close();
});

Deno.test("market service - an empty history is flagged and never cached: asked again at once", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    emptyCodes: ["159999"],
  });
  const dir = await Deno.makeTempDir({ prefix: "switchyard_cache_" });
  const clock = manualClock(NOW);
  const market = serviceFor(fake.url, { clock, cacheDir: dir });
  try {
    const params = { symbol_type: "etf", code: "159999", adjust: "none" };
    const first = ok(await market.getMarket(params));
    assert.deepEqual(first.data, []);
    assert.equal(first.empty_history, true);
    clock.advance(2_000);
    const again = ok(await market.getMarket(params));
    assert.equal(again.cached, false, "asked upstream again");
    assert.equal(again.empty_history, true);
    assert.equal(fake.callsFor("159999"), 2);
    assert.deepEqual([...Deno.readDirSync(dir)], []);
    // An empty range of a series that has bars is not an empty history.
    const weekend = ok(
      await market.getMarket({
        symbol_type: "etf",
        code: "510500",
        start_date: "2026-03-21",
        end_date: "2026-03-22",
      }),
    );
    assert.deepEqual(weekend.data, []);
    assert.equal("empty_history" in weekend, false);
  } finally {
    market.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("eastmoney - index markets fall back 1 → 2 for CSI-only 000859 and the secid is remembered", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const market = serviceFor(fake.url);
  const daily = ok(
    await market.getMarket({ symbol_type: "index", code: "000859" }),
  );
  assert.ok(daily.data.length > 2000);
  const asked = fake.requests.map((r) => r.url.searchParams.get("secid"));
  // 0.000859 is a Shenzhen stock: never asked, so it can never answer for the index.
  assert.deepEqual(asked, ["1.000859", "2.000859"]);
  ok(
    await market.getMarket({
      symbol_type: "index",
      code: "000859",
      period: "weekly",
    }),
  );
  assert.equal(fake.requests.at(-1)!.url.searchParams.get("secid"), "2.000859");
  assert.equal(fake.callsFor("000859"), 3);
  market.close();
});

Deno.test("eastmoney - CNI 98xxxx indexes and market 47 resolve; an unknown index fails after every market", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    indexMarkets: { "980017": 0, "990001": 47 },
    unknownCodes: ["000999"],
  });
  const market = serviceFor(fake.url);
  ok(await market.getMarket({ symbol_type: "index", code: "980017" }));
  assert.equal(fake.callsFor("980017"), 1);
  ok(await market.getMarket({ symbol_type: "index", code: "990001" }));
  assert.equal(
    fake.requests.at(-1)!.url.searchParams.get("secid"),
    "47.990001",
  );
  const unknown = await market.getMarket({
    symbol_type: "index",
    code: "000999",
  });
  assert.equal(!unknown.success && unknown.error_code, "UNKNOWN_CODE");
  assert.match(
    !unknown.success ? unknown.error : "",
    /"1\.000999", "2\.000999", "47\.000999"/,
  );
  market.close();
});

Deno.test("tencent - amount and turnover are read and volume is in lots for STAR stocks and indexes too", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const east = serviceFor(fake.url);
  const tencent = serviceFor(fake.url, { providers: ["tencent"] });
  try {
    for (
      const [symbol_type, code] of [
        ["stock", "688981"],
        ["index", "000300"],
        ["stock", "600519"],
        ["etf", "159915"],
      ]
    ) {
      const params = {
        symbol_type,
        code,
        adjust: "none",
        start_date: "2025-01-01",
      };
      const a = ok(await east.getMarket(params));
      const b = ok(await tencent.getMarket(params));
      assert.ok(a.data.length > 100);
      assert.deepEqual(
        b.data.map((bar) => [bar.date, bar.volume, bar.turnover]),
        a.data.map((bar) => [bar.date, bar.volume, bar.turnover]),
        code,
      );
      b.data.forEach((bar, i) =>
        assert.ok(Math.abs(bar.amount! - a.data[i].amount!) <= 1, code)
      );
    }
    assert.ok(
      fake.requests.filter((r) => r.api === "tencent").every((r) =>
        r.url.pathname === "/appstock/app/newfqkline/get"
      ),
    );
  } finally {
    east.close();
    tencent.close();
  }
});
