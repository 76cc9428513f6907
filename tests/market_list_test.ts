import assert from "node:assert/strict";
import {
  createMarketService,
  type MarketServiceOptions,
  type MarketSuccess,
} from "../lib/market/mod.ts";
import {
  fakeListings,
  manualClock,
  startFakeEastmoney,
} from "./_fake_eastmoney.ts";

// Monday after the close, Shanghai time 16:00.
const NOW = "2026-03-23T08:00:00Z";

function serviceFor(url: string, options: MarketServiceOptions = {}) {
  return createMarketService({
    eastmoneyUrl: url,
    eastmoneyListUrl: url,
    tencentUrl: url,
    rateLimit: 0,
    random: () => 0.5,
    clock: manualClock(NOW),
    ...options,
  });
}

Deno.test("list_symbols - pages through Eastmoney's list and caches it for the Shanghai day", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const clock = manualClock(NOW);
  const dir = await Deno.makeTempDir({ prefix: "switchyard_list_" });
  const market = serviceFor(fake.url, { clock, cacheDir: dir });
  try {
    const want = fakeListings().etf;
    const result = await market.listSymbols({ symbol_type: "etf" });
    assert.ok(result.success, JSON.stringify(result));
    assert.equal(result.count, want.length);
    assert.deepEqual(
      result.symbols,
      want.map(({ code, name }) => ({ code, name })),
    );
    assert.deepEqual(result.symbols[0], {
      code: "510300",
      name: "沪深300ETF华泰柏瑞",
    });
    assert.equal(result.cached, false);
    const pages = fake.requests.filter((r) => r.api === "list");
    assert.equal(pages.length, Math.ceil(want.length / 100));
    assert.deepEqual(
      pages.map((r) => r.url.searchParams.get("pn")),
      ["1", "2", "3"],
    );

    const again = await market.listSymbols({ symbol_type: "etf" });
    assert.ok(again.success && again.cached);
    // Another worker process on the same day reads the copy on disk.
    const other = serviceFor(fake.url, { clock, cacheDir: dir });
    const fromDisk = await other.listSymbols({ symbol_type: "etf" });
    assert.ok(fromDisk.success && fromDisk.cached);
    assert.equal(fromDisk.count, want.length);
    other.close();
    assert.equal(fake.calls, 3);

    clock.advance(24 * 3_600_000); // the next Shanghai day
    const tomorrow = await market.listSymbols({ symbol_type: "etf" });
    assert.ok(tomorrow.success && !tomorrow.cached);
    assert.equal(fake.calls, 6);
  } finally {
    market.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("list_symbols - an empty page before the total fails retriable and caches nothing", async () => {
  let hole = true;
  await using fake = await startFakeEastmoney({
    hook: (r) =>
      hole && r.api === "list" && r.url.searchParams.get("pn") === "2"
        ? "empty"
        : undefined,
  });
  const market = serviceFor(fake.url);
  const cut = await market.listSymbols({ symbol_type: "stock" });
  assert.equal(cut.success, false);
  assert.equal(!cut.success && cut.error_code, "UPSTREAM_BLOCKED");
  assert.equal(!cut.success && cut.retriable, true);
  assert.match(
    !cut.success ? cut.error : "",
    /stopped at 100 of 260 on page 2: not caching a partial list/,
  );
  hole = false;
  const whole = await market.listSymbols({ symbol_type: "stock" });
  assert.ok(whole.success && !whole.cached);
  assert.equal(whole.count, 260);
  market.close();
});

Deno.test("list_symbols - the index list tells the K-line provider each index's market", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const market = serviceFor(fake.url);
  const list = await market.listSymbols({ symbol_type: "index" });
  assert.ok(list.success);
  assert.ok(list.symbols.some((s) => s.code === "000859"));
  const bars = await market.getMarket({ symbol_type: "index", code: "000859" });
  assert.ok(bars.success, JSON.stringify(bars));
  assert.deepEqual(
    fake.requests.filter((r) => r.api === "eastmoney").map((r) =>
      r.url.searchParams.get("secid")
    ),
    ["2.000859"],
    "no fallback needed",
  );
  market.close();
});

Deno.test("list_symbols - the action names a bad symbol_type", async () => {
  const market = createMarketService({ providers: ["demo"] });
  const result = await market.actions().list_symbols(
    { symbol_type: "bond" },
    { signal: new AbortController().signal, requestId: "t" },
  );
  assert.deepEqual(result, {
    success: false,
    error: 'Invalid symbol_type "bond": expected one of etf, stock, index',
    error_code: "INVALID_PARAMS",
    retriable: false,
  });
  market.close();
});

Deno.test("minute periods - 5m bars carry a time, are sliced by day, and come from eastmoney only", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const clock = manualClock(NOW);
  const market = serviceFor(fake.url, {
    clock,
    providers: ["eastmoney", "tencent"],
  });
  const all = await market.getMarket({
    symbol_type: "etf",
    code: "510500",
    period: "5m",
  });
  assert.ok(all.success, JSON.stringify(all));
  assert.equal(all.period, "5m");
  assert.equal(all.data.length, 20 * 48); // the fake's window: 20 days of 48 bars
  assert.equal(all.data.at(-1)!.date, "2026-03-20 15:00");
  assert.equal(all.data.at(-48)!.date, "2026-03-20 09:35");
  assert.equal(all.data.at(-25)!.date, "2026-03-20 11:30");
  assert.equal(all.data.at(-24)!.date, "2026-03-20 13:05");
  const klt = fake.requests.at(-1)!.url.searchParams.get("klt");
  assert.equal(klt, "5");

  const oneDay = await market.getMarket({
    symbol_type: "etf",
    code: "510500",
    period: "5m",
    start_date: "2026-03-20",
    end_date: "2026-03-20",
  }) as MarketSuccess;
  assert.equal(oneDay.cached, true);
  assert.equal(oneDay.data.length, 48);

  for (const period of ["1m", "15m", "30m", "60m"]) {
    const r = await market.getMarket({
      symbol_type: "stock",
      code: "600519",
      period,
      start_date: "2026-03-20",
    });
    assert.ok(r.success, `${period}: ${JSON.stringify(r)}`);
    assert.equal(r.data.length, 240 / Number(period.slice(0, -1)), period);
  }
  assert.equal(
    fake.requests.filter((r) => r.api === "tencent").length,
    0,
    "tencent serves no minute bars",
  );

  // A minute series is a sliding window: the next close makes it stale as a whole.
  clock.advance(24 * 3_600_000);
  const next = await market.getMarket({
    symbol_type: "etf",
    code: "510500",
    period: "5m",
    start_date: "2026-03-20",
    end_date: "2026-03-20",
  });
  assert.ok(next.success && !next.cached);
  market.close();
});

Deno.test("minute periods - a provider chain without eastmoney answers INVALID_PARAMS", async () => {
  const market = createMarketService({ providers: ["demo"] });
  const r = await market.getMarket({
    symbol_type: "etf",
    code: "510300",
    period: "1m",
  });
  assert.equal(!r.success && r.error_code, "INVALID_PARAMS");
  assert.match(
    !r.success ? r.error : "",
    /minute periods come from eastmoney only/,
  );
  const bad = await market.getMarket({
    symbol_type: "etf",
    code: "510300",
    period: "2m",
  });
  assert.match(
    !bad.success ? bad.error : "",
    /Invalid period "2m": expected one of daily, weekly, monthly, 1m, 5m, 15m, 30m, 60m/,
  );
  market.close();
});

Deno.test("list_symbols - one caller giving up does not fail another waiting for the same list", async () => {
  await using fake = await startFakeEastmoney({ latencyMs: 30 });
  const market = serviceFor(fake.url);
  const quitter = new AbortController();
  const first = market.listSymbols({ symbol_type: "etf" }, quitter.signal);
  const second = market.listSymbols({ symbol_type: "etf" });
  quitter.abort(new Error("gave up"));
  await assert.rejects(first, { message: "gave up" });
  const list = await second;
  assert.ok(list.success && !list.cached, JSON.stringify(list));
  assert.equal(list.count, fakeListings().etf.length);
  assert.equal(fake.calls, 3, "one fetch for both callers");
  market.close();
});
