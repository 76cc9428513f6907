import assert from "node:assert/strict";
import {
  createMarketService,
  createProxyFetch,
  type MarketResult,
  type MarketServiceOptions,
  parseCookieFile,
} from "../lib/market/mod.ts";
import { manualClock, startFakeEastmoney } from "./_fake_eastmoney.ts";

const ETF = { symbol_type: "etf", code: "510300", start_date: "2026-01-01" };
const codes = (n: number) =>
  Array.from({ length: n }, (_, i) => String(510300 + i * 5));

function serviceFor(url: string, options: MarketServiceOptions = {}) {
  return createMarketService({
    eastmoneyUrl: url,
    tencentUrl: url,
    rateLimit: 0,
    random: () => 0.5,
    ...options,
  });
}

function blocked(result: MarketResult): string {
  assert.equal(result.success, false, JSON.stringify(result));
  assert.equal(!result.success && result.error_code, "UPSTREAM_BLOCKED");
  assert.equal(!result.success && result.retriable, true);
  return !result.success ? result.error : "";
}

Deno.test("upstreamStatus() reports the conservative defaults of the real hosts before any call", () => {
  const market = createMarketService({ providers: ["eastmoney", "tencent"] });
  const status = market.upstreamStatus();
  assert.deepEqual(status.hosts["push2his.eastmoney.com"], {
    cooldown_until: 0,
    budget_hour: 60,
    budget_day: 500,
    rate: 1 / 30,
  });
  assert.deepEqual(status.hosts["proxy.finance.qq.com"], {
    cooldown_until: 0,
    budget_hour: 1000,
    budget_day: 4000,
    rate: 1,
  });
  assert.deepEqual(status.cache, { hits: 0, misses: 0 });
  market.close();
});

Deno.test("budgets - a spent hourly budget fails items at once, retriable, until the hour rolls on", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const clock = manualClock();
  const market = serviceFor(fake.url, { clock, budgetHour: 3, budgetDay: 5 });
  const host = new URL(fake.url).host;
  for (const code of codes(3)) {
    assert.ok((await market.getMarket({ ...ETF, code })).success);
    clock.advance(60_000);
  }
  assert.equal(market.upstreamStatus().hosts[host].budget_hour, 0);
  assert.equal(market.upstreamStatus().hosts[host].budget_day, 2);
  const refused = await market.getMarket({ ...ETF, code: "159915" });
  assert.match(blocked(refused), /hourly budget of 3 requests spent/);
  // The first request leaves the window one hour after it was sent.
  assert.equal(
    !refused.success && refused.retry_at,
    Date.parse("2026-03-23T09:00:00Z"),
  );
  assert.equal(fake.calls, 3, "no request past the budget");
  assert.ok((await market.getMarket(ETF)).success, "the cache still answers");

  clock.advance(60 * 60_000 - 3 * 60_000);
  assert.equal(market.upstreamStatus().hosts[host].budget_hour, 1);
  assert.ok((await market.getMarket({ ...ETF, code: "159915" })).success);
  clock.advance(2 * 60_000);
  assert.ok((await market.getMarket({ ...ETF, code: "510500" })).success);
  const day = await market.getMarket({ ...ETF, code: "510050" });
  assert.match(blocked(day), /daily budget of 5 requests spent/);
  assert.equal(market.upstreamStatus().hosts[host].budget_day, 0);
  market.close();
});

Deno.test("ban - resets are not retried, the cool-down doubles per failed probe, and a day holds few probes", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    banAfter: { requests: 3 },
  });
  const clock = manualClock();
  const market = serviceFor(fake.url, {
    clock,
    retries: 3,
    headers: { "X-Fake-Identity": "worker-1" },
  });
  const host = new URL(fake.url).host;
  const cooldowns: number[] = [];
  let i = 0;
  // A worker asked for a new item every minute for a day, while the host bans it.
  for (let minute = 0; minute < 24 * 60; minute++) {
    const result = await market.getMarket({ ...ETF, code: codes(2000)[i++] });
    if (!result.success) {
      const until = market.upstreamStatus().hosts[host].cooldown_until;
      if (until > 0 && until !== cooldowns.at(-1)) cooldowns.push(until);
    }
    clock.advance(60_000);
  }
  const calls = fake.callsFrom("worker-1");
  // 3 good answers, 2 resets to open the breaker, then one probe per cool-down:
  // 5, 10, 20, 40, 80, 160, 320, 480, 480 minutes fill the day.
  assert.ok(calls <= 3 + 2 + 9, `${calls} requests in a day of ban`);
  const gaps = cooldowns.slice(1).map((t, k) => t - cooldowns[k]);
  assert.ok(gaps.length >= 4, JSON.stringify(gaps));
  for (let k = 1; k < gaps.length; k++) {
    assert.ok(gaps[k] >= gaps[k - 1], `cool-down shrank: ${gaps}`);
  }
  assert.ok(gaps.at(-1)! >= 4 * 3_600_000, "it grows to hours");
  // Lifted ban: the next probe succeeds and the cool-down starts over.
  fake.unban("worker-1");
  clock.advance(8 * 3_600_000);
  assert.ok((await market.getMarket({ ...ETF, code: "588000" })).success);
  assert.equal(market.upstreamStatus().hosts[host].cooldown_until, 0);
  market.close();
});

Deno.test("Retry-After - a short one is waited for, a long one quiets the whole host until then", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  fake.fail({ mode: "http503", times: 1, retryAfter: "2" });
  const clock = manualClock();
  const market = serviceFor(fake.url, {
    clock,
    retries: 2,
    breaker: { threshold: 5 },
  });
  assert.ok((await market.getMarket(ETF)).success);
  assert.deepEqual(clock.sleeps, [2000]);

  fake.fail({ mode: "http429", times: 1, retryAfter: "3600" });
  const long = await market.getMarket({ ...ETF, code: "159915" });
  blocked(long);
  const host = new URL(fake.url).host;
  assert.equal(
    market.upstreamStatus().hosts[host].cooldown_until,
    clock.now() + 3_600_000,
  );
  const calls = fake.calls;
  blocked(await market.getMarket({ ...ETF, code: "510500" }));
  assert.equal(fake.calls, calls, "nothing sent before Retry-After");
  clock.advance(3_600_000);
  assert.ok((await market.getMarket({ ...ETF, code: "510500" })).success);
  market.close();
});

Deno.test("headers and cookies - reach the upstream; cookies only the hosts they belong to", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const market = serviceFor(fake.url, {
    headers: { "X-Fake-Identity": "w2", "User-Agent": "switchyard-test" },
    cookies: parseCookieFile(
      "# Netscape HTTP Cookie File\n" +
        "127.0.0.1\tFALSE\t/\tFALSE\t0\tct\tlogin-token\n" +
        "#HttpOnly_.eastmoney.com\tTRUE\t/\tFALSE\t0\tqgqp_b_id\tx\n",
    ),
  });
  assert.ok((await market.getMarket(ETF)).success);
  const [request] = fake.requests;
  assert.equal(request.identity, "w2");
  assert.equal(request.headers.get("user-agent"), "switchyard-test");
  assert.equal(request.headers.get("cookie"), "ct=login-token");
  assert.equal(request.headers.get("referer"), "https://quote.eastmoney.com/");
  market.close();
});

Deno.test("parseCookieFile() reads a plain Cookie line and names a bad line", () => {
  const jar = parseCookieFile("Cookie: a=1; b=2\n");
  assert.equal(jar.headerFor("anything.example"), "a=1; b=2");
  const expired = parseCookieFile(
    ".eastmoney.com\tTRUE\t/\tFALSE\t1000\tct\told\n",
  );
  assert.equal(expired.headerFor("push2his.eastmoney.com"), undefined);
  assert.throws(() => parseCookieFile("a=1\nnot a cookie\n"), {
    name: "SyntaxError",
    message:
      'Cannot read cookie file line 2 "not a cookie": expected 7 tab-separated fields (cookies.txt) or name=value pairs',
  });
});

Deno.test("createProxyFetch() sends upstream requests through the proxy", async () => {
  // The fake answers absolute-form requests too, so it can stand in for an HTTP proxy: the
  // upstream host name below does not resolve, only the proxy can answer.
  await using proxy = await startFakeEastmoney({ synthetic: true });
  const through = createProxyFetch(proxy.url);
  const market = serviceFor("http://push2his.example.invalid", {
    fetch: through.fetch,
  });
  try {
    const result = await market.getMarket(ETF);
    assert.ok(result.success, JSON.stringify(result));
    assert.equal(proxy.calls, 1);
    assert.equal(
      proxy.requests[0].headers.get("host"),
      "push2his.example.invalid",
    );
  } finally {
    market.close();
    through.close();
  }
});
