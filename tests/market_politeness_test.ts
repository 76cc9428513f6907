import assert from "node:assert/strict";
import {
  createMarketService,
  type MarketServiceOptions,
} from "../lib/market/mod.ts";
import { RateLimiter } from "../lib/market/rate_limiter.ts";
import { manualClock, startFakeEastmoney } from "./_fake_eastmoney.ts";
import { within } from "./_helpers.ts";

const ETF = { symbol_type: "etf", code: "510300", adjust: "none" };

Deno.test("rate limiter - jitter spreads the interval both ways, so the rate is the one asked for", async () => {
  const clock = manualClock(0);
  const draws = [0, 1, 0.5, 0.25];
  const limiter = new RateLimiter({
    rate: 2,
    jitter: 0.2,
    clock,
    random: () => draws.shift()!,
  });
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    await limiter.acquire();
    times.push(clock.now());
  }
  // 500 ms ± 20 %: 400, 600, 500, 450; four intervals average to the nominal within the jitter.
  assert.deepEqual(times, [0, 400, 1000, 1500, 1950]);
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
  // A draw of 0 is the shortest spacing the default jitter allows: 1 s - 30 %.
  assert.deepEqual(clock.sleeps, [700, 700]);
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

Deno.test("breaker - opens after resets, refuses without calling, half-opens after a cool-down that doubles", async () => {
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
  const stillBad = await market.getMarket(ETF); // the probe fails: open again, twice as long
  assert.equal(!stillBad.success && stillBad.error_code, "UPSTREAM_BLOCKED");
  assert.equal(fake.calls, 4);
  assert.deepEqual(market.blockedSources(), ["eastmoney"]);
  clock.advance(30_000);
  assert.deepEqual(market.blockedSources(), ["eastmoney"]);
  assert.equal((await market.getMarket(ETF)).success, false);
  assert.equal(fake.calls, 4, "still cooling down after the first period");

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

/**
 * A clock whose sleeps end only when their signal aborts: it shows whether a wait was given the
 * caller's signal at all.
 */
function heldClock() {
  const first = Promise.withResolvers<void>();
  const clock = {
    time: Date.parse("2026-03-23T08:00:00Z"),
    sleeps: 0,
    abortedSleeps: 0,
    firstSleep: first.promise,
    now: () => clock.time,
    sleep(_ms: number, signal?: AbortSignal): Promise<void> {
      if (signal?.aborted) return Promise.reject(signal.reason);
      clock.sleeps++;
      first.resolve();
      return new Promise((_, reject) => {
        signal?.addEventListener("abort", () => {
          clock.abortedSleeps++;
          reject(signal.reason);
        }, { once: true });
      });
    },
  };
  return clock;
}

Deno.test("market service - an abort cancels the upstream HTTP request itself", async () => {
  const received = Promise.withResolvers<void>();
  const cancelled = Promise.withResolvers<void>();
  // An upstream that holds every request until its client goes away, seen as the end of the
  // connection (plain TCP: no server-side request signal, whose legacy abort Deno warns about).
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const upstream = {
    addr: listener.addr as Deno.NetAddr,
    serving: (async () => {
      for await (const conn of listener) {
        conns.add(conn);
        void (async () => {
          const buffer = new Uint8Array(4096);
          let first = true;
          try {
            while ((await conn.read(buffer)) !== null) {
              if (first) received.resolve();
              first = false;
            }
          } catch {
            // Reset by the client: gone all the same.
          }
          cancelled.resolve();
          conns.delete(conn);
          try {
            conn.close();
          } catch {
            // Closed already.
          }
        })();
      }
    })(),
    async shutdown() {
      listener.close();
      // A fetch that ignored the abort ends here, so that nothing outlives the test.
      for (const conn of conns) conn.close();
      await this.serving.catch(() => {});
    },
  };
  // Every HTTP exchange is read to the end here, so cleanup can wait for it even when a
  // regression leaves it running past the abort.
  const exchanges = new Set<Promise<unknown>>();
  const market = serviceFor(`http://127.0.0.1:${upstream.addr.port}`, {
    retries: 0,
    fetch: (input, init) => {
      const exchange = fetch(input, init).then(async (response) =>
        new Response(await response.text(), {
          status: response.status,
          headers: response.headers,
        })
      );
      exchanges.add(exchange);
      return exchange;
    },
  });
  try {
    const controller = new AbortController();
    const pending = market.getMarket(ETF, controller.signal);
    await within(received.promise, "the upstream request");
    const reason = new DOMException("Deadline", "TimeoutError");
    controller.abort(reason);
    await assert.rejects(pending, (e) => e === reason);
    // Only a fetch given the signal drops its connection; the service's own timeout is 20 s.
    await within(cancelled.promise, "the upstream to see the request dropped");
    assert.deepEqual(market.blockedSources(), []);
  } finally {
    market.close();
    await upstream.shutdown();
    await Promise.allSettled(exchanges);
  }
});

Deno.test("market service - an abort ends the wait for the rate limiter", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  const clock = heldClock();
  const market = serviceFor(fake.url, { clock, rateLimit: 1 });
  try {
    assert.ok((await market.getMarket(ETF)).success);
    assert.equal(clock.sleeps, 0, "the first request needs no wait");
    const controller = new AbortController();
    const pending = market.getMarket(
      { ...ETF, code: "510500" },
      controller.signal,
    );
    await within(clock.firstSleep, "the limiter to wait");
    controller.abort(new Error("caller went away"));
    await assert.rejects(pending, { message: "caller went away" });
    assert.equal(clock.abortedSleeps, 1, "the limiter's wait saw the abort");
    assert.equal(fake.calls, 1, "nothing sent after the abort");
  } finally {
    market.close();
  }
});

Deno.test("market service - an abort ends the back-off sleep between retries", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    failMode: "http503",
  });
  const clock = heldClock();
  const market = serviceFor(fake.url, { clock, retries: 3 });
  try {
    const controller = new AbortController();
    const pending = market.getMarket(ETF, controller.signal);
    await within(clock.firstSleep, "the back-off after the first 503");
    assert.equal(fake.calls, 1);
    controller.abort(new Error("caller went away"));
    await assert.rejects(pending, { message: "caller went away" });
    assert.equal(clock.abortedSleeps, 1, "the back-off saw the abort");
    assert.equal(fake.calls, 1, "no retry after the abort");
  } finally {
    market.close();
  }
});

Deno.test("retry - every attempt waits for the rate limiter, retries included", async () => {
  const clock = manualClock();
  const sentAt: number[] = [];
  await using fake = await startFakeEastmoney({
    synthetic: true,
    // Called as each request arrives: when, on the service's clock, it was let through.
    hook: () => {
      sentAt.push(clock.now());
      return sentAt.length <= 2 ? "http503" : undefined;
    },
  });
  const market = serviceFor(fake.url, {
    clock,
    rateLimit: 1,
    random: () => 0, // no back-off, the shortest jittered spacing: only the limiter spaces them
    retries: 2,
  });
  try {
    assert.ok((await market.getMarket(ETF)).success);
    const start = sentAt[0];
    assert.deepEqual(sentAt.map((t) => t - start), [0, 700, 1400]);
  } finally {
    market.close();
  }
});

Deno.test("tests - the upstream that holds requests prints no Deno.serve legacy request.signal warning", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "test",
      "-A",
      "--no-check",
      "--filter",
      "an abort cancels the upstream HTTP request itself",
      new URL(import.meta.url).pathname,
    ],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder().decode(out.stdout) +
    new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, text);
  assert.match(text, /1 passed/);
  assert.doesNotMatch(text, /legacy behavior/);
});
