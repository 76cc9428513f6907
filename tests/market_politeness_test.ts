import assert from "node:assert/strict";
import {
  createMarketService,
  type MarketServiceOptions,
} from "../lib/market/mod.ts";
import { RateLimiter } from "../lib/market/rate_limiter.ts";
import { manualClock, startFakeEastmoney } from "./_fake_eastmoney.ts";

const ETF = { symbol_type: "etf", code: "510300", adjust: "none" };

Deno.test("rate limiter - spaces requests by the interval plus jitter", async () => {
  const clock = manualClock(0);
  const limiter = new RateLimiter({
    rate: 2,
    jitter: 0.2,
    clock,
    random: () => 0.5,
  });
  const times: number[] = [];
  for (let i = 0; i < 4; i++) {
    await limiter.acquire();
    times.push(clock.now());
  }
  assert.deepEqual(times, [0, 550, 1100, 1650]); // 500 ms + 0.2 * 0.5 * 500
});

Deno.test("rate limiter - queues concurrent callers one interval apart and 0 disables it", async () => {
  const clock = manualClock(0);
  const limiter = new RateLimiter({ rate: 1, jitter: 0, clock });
  await Promise.all([limiter.acquire(), limiter.acquire(), limiter.acquire()]);
  // The manual clock moves on during each sleep: the third caller waits from 1000 to 2000.
  assert.deepEqual(clock.sleeps, [1000, 1000]);
  assert.equal(clock.now(), 2000);
  const off = new RateLimiter({ rate: 0, clock });
  await Promise.all([off.acquire(), off.acquire()]);
  assert.deepEqual(clock.sleeps, [1000, 1000]);
  assert.throws(() => new RateLimiter({ rate: -1 }), RangeError);
});

Deno.test("market service - spaces upstream calls to one host with the injected clock", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const clock = manualClock();
  const market = createMarketService({
    eastmoneyUrl: fake.url,
    clock,
    random: () => 0,
    rateLimit: 1,
  });
  for (const code of ["510300", "510500", "588000"]) {
    assert.ok((await market.getMarket({ ...ETF, code })).success);
  }
  assert.deepEqual(clock.sleeps, [1000, 1000]);
  market.close();
});

function serviceFor(url: string, options: MarketServiceOptions = {}) {
  return createMarketService({
    eastmoneyUrl: url,
    tencentUrl: url,
    rateLimit: 0,
    random: () => 0.5,
    ...options,
  });
}

Deno.test("retry - an HTTP 503 is retried with jittered back-off, then succeeds", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  fake.fail({ mode: "http503", times: 2 });
  const clock = manualClock();
  const market = serviceFor(fake.url, { clock, retries: 3, retryBaseMs: 400 });
  const result = await market.getMarket(ETF);
  assert.ok(result.success);
  assert.equal(fake.calls, 3);
  assert.deepEqual(clock.sleeps, [200, 400]); // random 0.5 × 400, × 800
  assert.deepEqual(market.blockedSources(), [], "a 503 is trouble, not a ban");
  market.close();
});

Deno.test("retry - 503 on every attempt fails as UPSTREAM_UNAVAILABLE, retriable", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    failMode: "http503",
  });
  const market = serviceFor(fake.url, { clock: manualClock(), retries: 2 });
  const result = await market.getMarket(ETF);
  assert.deepEqual(result, {
    success: false,
    code: "510300",
    error: `Upstream host "${new URL(fake.url).host}" failed: HTTP 503`,
    error_code: "UPSTREAM_UNAVAILABLE",
    retriable: true,
  });
  assert.equal(fake.calls, 3);
  market.close();
});

Deno.test("breaker - opens after resets, refuses without calling, half-opens after the cool-down", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    failMode: "reset",
  });
  const clock = manualClock();
  const market = serviceFor(fake.url, {
    clock,
    retries: 0,
    breaker: { threshold: 3, coolDownMs: 30_000 },
  });
  for (let i = 0; i < 3; i++) {
    const result = await market.getMarket(ETF);
    assert.equal(
      !result.success && result.error_code,
      "UPSTREAM_BLOCKED",
      `attempt ${i}`,
    );
    assert.equal(!result.success && result.retriable, true);
  }
  assert.equal(fake.calls, 3);
  assert.deepEqual(market.blockedSources(), ["eastmoney"]);

  const refused = await market.getMarket({ ...ETF, code: "159915" });
  assert.equal(!refused.success && refused.error_code, "UPSTREAM_BLOCKED");
  assert.match(!refused.success ? refused.error : "", /circuit breaker open/);
  assert.equal(fake.calls, 3, "no call while open");

  clock.advance(30_000);
  assert.deepEqual(
    market.blockedSources(),
    [],
    "half-open is not reported as blocked",
  );
  const stillBad = await market.getMarket(ETF); // the probe fails: open again
  assert.equal(!stillBad.success && stillBad.error_code, "UPSTREAM_BLOCKED");
  assert.equal(fake.calls, 4);
  assert.deepEqual(market.blockedSources(), ["eastmoney"]);

  clock.advance(30_000);
  fake.clearFailures();
  assert.ok(
    (await market.getMarket(ETF)).success,
    "the probe succeeds and closes the breaker",
  );
  assert.ok((await market.getMarket({ ...ETF, code: "159915" })).success);
  assert.deepEqual(market.blockedSources(), []);
  market.close();
});

Deno.test("breaker - suspicious empty answers for a code that had data count as a ban", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const market = serviceFor(fake.url, {
    clock: manualClock(),
    breaker: { threshold: 2 },
  });
  assert.ok((await market.getMarket(ETF)).success);
  fake.fail({ mode: "empty" });
  for (const adjust of ["qfq", "hfq"]) {
    const result = await market.getMarket({ ...ETF, adjust });
    assert.equal(!result.success && result.error_code, "UPSTREAM_BLOCKED");
    assert.match(
      !result.success ? result.error : "",
      /suspicious empty answer/,
    );
  }
  assert.deepEqual(market.blockedSources(), ["eastmoney"]);
  assert.equal(fake.calls, 3, "suspicious answers are not retried");
  market.close();
});

Deno.test("breaker - HTTP 429 and HTML pages count as blocks; 429 is retried", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  fake.fail({ mode: "http429", times: 1 });
  fake.fail({ mode: "html", times: 1 });
  const market = serviceFor(fake.url, {
    clock: manualClock(),
    retries: 2,
    breaker: { threshold: 2 },
  });
  const result = await market.getMarket(ETF);
  assert.equal(!result.success && result.error_code, "UPSTREAM_BLOCKED");
  assert.equal(fake.calls, 2);
  assert.deepEqual(market.blockedSources(), ["eastmoney"]);
  market.close();
});

Deno.test("market service - every fetch honours the action's abort signal", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    latencyMs: 200,
  });
  const market = serviceFor(fake.url);
  const controller = new AbortController();
  const pending = market.getMarket(ETF, controller.signal);
  setTimeout(
    () => controller.abort(new DOMException("Deadline", "TimeoutError")),
    10,
  );
  await assert.rejects(pending, { name: "TimeoutError" });
  assert.deepEqual(market.blockedSources(), []);
  market.close();
});
