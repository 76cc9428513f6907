import assert from "node:assert/strict";
import {
  createMarketService,
  isEntryFresh,
  type MarketResult,
  type MarketServiceOptions,
  type MarketSuccess,
} from "../lib/market/mod.ts";
import { manualClock, startFakeEastmoney } from "./_fake_eastmoney.ts";

const ETF = { symbol_type: "etf", code: "510300", adjust: "none" };

function ok(result: MarketResult): MarketSuccess {
  assert.ok(result.success, `expected success, got ${JSON.stringify(result)}`);
  return result;
}

function serviceFor(url: string, options: MarketServiceOptions = {}) {
  return createMarketService({
    eastmoneyUrl: url,
    tencentUrl: url,
    rateLimit: 0,
    clock: manualClock(),
    ...options,
  });
}

Deno.test("market service - answers repeated requests from the cache and slices by date", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const market = serviceFor(fake.url);
  const full = ok(await market.getMarket(ETF));
  assert.equal(full.cached, false);
  const slice = ok(
    await market.getMarket({
      ...ETF,
      start_date: "2024-03-01",
      end_date: "2024-03-31",
    }),
  );
  assert.equal(slice.cached, true);
  assert.deepEqual(
    slice.data,
    full.data.filter((b) => b.date >= "2024-03-01" && b.date <= "2024-03-31"),
  );
  assert.equal(slice.data.length, 21);
  assert.equal(fake.callsFor("510300"), 1);
  const other = ok(await market.getMarket({ ...ETF, adjust: "qfq" }));
  assert.equal(other.cached, false, "adjust is part of the key");
  assert.deepEqual(market.stats(), {
    hits: 1,
    misses: 2,
    upstreamCalls: 2,
    httpRequests: 2,
    cacheEntries: 2,
  });
  market.close();
});

Deno.test("market service - returns an empty list for a range without trading days", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const market = serviceFor(fake.url);
  const weekend = ok(
    await market.getMarket({
      ...ETF,
      start_date: "2024-03-02",
      end_date: "2024-03-03",
    }),
  );
  assert.deepEqual(weekend.data, []);
  market.close();
});

Deno.test("market service - keeps the cache on disk across two service instances", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const cacheDir = await Deno.makeTempDir({ prefix: "switchyard_cache_" });
  try {
    const first = serviceFor(fake.url, { cacheDir: `${cacheDir}/market` });
    const fetched = ok(await first.getMarket(ETF));
    first.close();
    const files = [...Deno.readDirSync(`${cacheDir}/market`)].map((e) =>
      e.name
    );
    assert.deepEqual(
      files,
      ["eastmoney_etf_510300_daily_none.json"],
      "no temp files left behind",
    );
    const second = serviceFor(fake.url, { cacheDir: `${cacheDir}/market` });
    const again = ok(await second.getMarket(ETF));
    assert.equal(again.cached, true);
    assert.deepEqual(again.data, fetched.data);
    assert.equal(fake.callsFor("510300"), 1);
    second.close();
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
});

Deno.test("market service - qfq entries expire after the next 15:00 Shanghai close", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const clock = manualClock("2026-03-23T03:00:00Z"); // Monday 11:00 in Shanghai
  const market = serviceFor(fake.url, { clock });
  const qfq = { ...ETF, adjust: "qfq" };
  ok(await market.getMarket(qfq));
  clock.time = Date.parse("2026-03-23T06:59:00Z");
  assert.equal(ok(await market.getMarket(qfq)).cached, true);
  clock.time = Date.parse("2026-03-23T07:01:00Z"); // the close may have brought a dividend
  assert.equal(
    ok(await market.getMarket({ ...qfq, end_date: "2024-01-01" })).cached,
    false,
  );
  assert.equal(fake.callsFor("510300"), 2);
  market.close();
});

Deno.test("market service - unadjusted entries keep serving days closed before the fetch", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const clock = manualClock("2026-03-23T03:00:00Z"); // Monday, market open: Monday's bar is partial
  const market = serviceFor(fake.url, { clock });
  ok(await market.getMarket(ETF));
  clock.time = Date.parse("2026-03-24T08:00:00Z"); // Tuesday after the close
  const old = ok(await market.getMarket({ ...ETF, end_date: "2026-03-20" })); // Friday: final
  assert.equal(old.cached, true);
  const recent = ok(await market.getMarket({ ...ETF, end_date: "2026-03-23" })); // Monday: partial
  assert.equal(recent.cached, false);
  assert.equal(fake.callsFor("510300"), 2);
  market.close();
});

Deno.test("isEntryFresh() skips weekends when looking for the last close", () => {
  const entry = {
    key: "k",
    name: "n",
    source: "eastmoney",
    adjust: "qfq" as const,
    fetchedAt: Date.parse("2026-03-20T08:00:00Z"), // Friday after the close
    bars: [
      { date: "2026-03-20", open: 1, high: 1, low: 1, close: 1, volume: 1 },
    ],
  };
  assert.equal(
    isEntryFresh(entry, "2026-03-22", Date.parse("2026-03-22T12:00:00Z")),
    true,
  );
  assert.equal(
    isEntryFresh(entry, "2026-03-23", Date.parse("2026-03-23T07:00:00Z")),
    false,
  );
  assert.equal(
    isEntryFresh(
      { ...entry, adjust: "hfq" },
      "2026-03-20",
      Date.parse("2026-03-30T00:00:00Z"),
    ),
    true,
  );
  assert.equal(
    isEntryFresh(
      { ...entry, adjust: "hfq" },
      "2026-03-23",
      Date.parse("2026-03-30T00:00:00Z"),
    ),
    false,
  );
});

Deno.test("market service - the memory cache drops the least recently used entry", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const market = serviceFor(fake.url, { cacheEntries: 2 });
  for (
    const code of ["510300", "510500", "510300", "588000", "510300", "510500"]
  ) {
    ok(await market.getMarket({ ...ETF, code }));
  }
  // 510300 stayed (recently used); 510500 was evicted by 588000 and fetched again.
  assert.deepEqual([
    fake.callsFor("510300"),
    fake.callsFor("510500"),
    fake.callsFor("588000"),
  ], [1, 2, 1]);
  assert.equal(market.stats().cacheEntries, 2);
  market.close();
});

Deno.test("market service - shares one upstream call among concurrent identical requests", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    latencyMs: 10,
  });
  const market = serviceFor(fake.url);
  const results = await Promise.all(
    Array.from(
      { length: 10 },
      (_, i) => market.getMarket({ ...ETF, start_date: `${2015 + i}-01-01` }),
    ),
  );
  assert.ok(results.every((r) => r.success));
  assert.equal(fake.callsFor("510300"), 1);
  assert.equal(market.stats().upstreamCalls, 1);
  market.close();
});

Deno.test("market service - one caller aborting does not cancel the shared load", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    latencyMs: 20,
  });
  const market = serviceFor(fake.url);
  const controller = new AbortController();
  const leaving = market.getMarket(ETF, controller.signal);
  const staying = market.getMarket(ETF);
  controller.abort(new Error("caller went away"));
  await assert.rejects(leaving, { message: "caller went away" });
  assert.equal(ok(await staying).cached, false);
  assert.equal(fake.callsFor("510300"), 1);
  market.close();
});

Deno.test("market service - data: null fails as UNKNOWN_CODE, not retriable, without fallback", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    unknownCodes: ["159999"],
  });
  const market = serviceFor(fake.url, { providers: ["eastmoney", "tencent"] });
  const result = await market.getMarket({ symbol_type: "etf", code: "159999" });
  assert.deepEqual(result, {
    success: false,
    code: "159999",
    error:
      'Unknown etf code "159999": Eastmoney has no data for secid "0.159999"',
    error_code: "UNKNOWN_CODE",
    retriable: false,
  });
  assert.equal(fake.callsFor("159999", "tencent"), 0);
  // A code under the wrong market prefix is unknown too.
  const wrong = await market.getMarket({
    symbol_type: "stock",
    code: "510300",
  });
  assert.equal(!wrong.success && wrong.error_code, "UNKNOWN_CODE");
  assert.deepEqual(market.blockedSources(), []);
  market.close();
});

Deno.test("market service - falls back to tencent while eastmoney is blocked", async () => {
  // Two servers, so that the two providers live on two hosts with two breakers.
  await using eastmoney = await startFakeEastmoney({
    synthetic: true,
    failMode: "reset",
  });
  await using tencent = await startFakeEastmoney({ synthetic: true });
  const market = serviceFor(eastmoney.url, {
    tencentUrl: tencent.url,
    providers: ["eastmoney", "tencent"],
    retries: 2,
    breaker: { threshold: 1, coolDownMs: 60_000 },
  });
  const first = ok(
    await market.getMarket({ ...ETF, start_date: "2026-01-01" }),
  );
  assert.equal(first.source, "tencent");
  assert.match(first.name, /300/); // the fixture name, or the synthetic one without fixtures
  assert.equal(eastmoney.callsFor("510300"), 1, "a reset is never retried");
  assert.deepEqual(market.blockedSources(), ["eastmoney"]);
  const second = ok(
    await market.getMarket({
      ...ETF,
      code: "159915",
      start_date: "2026-01-01",
    }),
  );
  assert.equal(second.source, "tencent");
  assert.equal(
    eastmoney.callsFor("159915"),
    0,
    "an open breaker does not call the host",
  );
  assert.ok(tencent.callsFor("159915") > 0);
  market.close();
});

Deno.test("market service - get_markets keeps input order with good and bad items", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    unknownCodes: ["510999"],
  });
  const market = serviceFor(fake.url);
  const items = [
    { ...ETF, end_date: "2024-01-05" },
    { ...ETF, symbol_type: "bond" },
    { ...ETF, code: "510999" },
    {
      symbol_type: "stock",
      code: "600519",
      period: "weekly",
      start_date: "2024-01-01",
      end_date: "2024-01-31",
    },
    "not an object",
    { ...ETF, code: "159915", start_date: "2024-02-30" },
  ];
  const { get_markets } = market.actions();
  const ctx = { signal: new AbortController().signal, requestId: "r1" };
  for (const params of [items, { markets: items }]) {
    const results = await get_markets(params, ctx) as MarketResult[];
    assert.deepEqual(
      results.map((
        r,
      ) => [r.code, r.success, r.success ? r.data.at(-1)?.date : r.error_code]),
      [
        ["510300", true, "2024-01-05"],
        ["510300", false, "INVALID_PARAMS"],
        ["510999", false, "UNKNOWN_CODE"],
        ["600519", true, "2024-01-26"], // the week of Jan 31 ends on Feb 2, after end_date
        ["", false, "INVALID_PARAMS"],
        ["159915", false, "INVALID_PARAMS"],
      ],
    );
    assert.equal(
      results[5].success === false && results[5].error,
      'Invalid start_date "2024-02-30": no such calendar date',
    );
  }
  await assert.rejects(() => market.getMarkets({ list: [] }), {
    name: "MarketParamsError",
  });
  market.close();
});

Deno.test("market service - the get_market action answers in SPEC shape", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const market = serviceFor(fake.url);
  const result = await market.actions().get_market(
    {
      symbol_type: "index",
      code: "000001",
      start_date: "2024-01-02",
      end_date: "2024-01-02",
    },
    { signal: new AbortController().signal, requestId: "r2" },
  );
  assert.deepEqual(Object.keys(result as object), [
    "success",
    "code",
    "name",
    "symbol_type",
    "period",
    "adjust",
    "source",
    "cached",
    "data",
  ]);
  const bar = ok(result as MarketResult).data[0];
  assert.deepEqual(Object.keys(bar), [
    "date",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "amount",
    "amplitude",
    "pct_change",
    "change",
    "turnover",
  ]);
  assert.ok(Object.values(bar).slice(1).every((v) => typeof v === "number"));
  assert.equal(fake.requests[0].url.searchParams.get("secid"), "1.000001");
  market.close();
});
