import assert from "node:assert/strict";
import { Backoff, sleep } from "../lib/backoff.ts";
import { mulberry32 } from "./_helpers.ts";

Deno.test("backoff - ceilings grow by the factor up to the cap", () => {
  const backoff = new Backoff({ initialMs: 100, maxMs: 1000, factor: 2 });
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((n) => backoff.ceiling(n)), [
    100,
    200,
    400,
    800,
    1000,
    1000,
  ]);
});

Deno.test("backoff - full jitter keeps every delay within [0, ceiling]", () => {
  const backoff = new Backoff({
    initialMs: 100,
    maxMs: 5000,
    random: mulberry32(7),
  });
  for (let i = 0; i < 200; i++) {
    const ceiling = backoff.ceiling();
    const delay = backoff.next();
    assert.ok(
      delay >= 0 && delay <= ceiling,
      `${delay} within [0, ${ceiling}]`,
    );
    assert.ok(delay <= 5000);
  }
  assert.equal(backoff.attempt, 200);
});

Deno.test("backoff - the extremes of the random source give 0 and the ceiling", () => {
  const low = new Backoff({ initialMs: 100, random: () => 0 });
  assert.deepEqual([low.next(), low.next()], [0, 0]);
  const high = new Backoff({
    initialMs: 100,
    maxMs: 300,
    random: () => 0.999999,
  });
  assert.deepEqual([high.next(), high.next(), high.next()], [100, 200, 300]);
});

Deno.test("backoff - the same seed gives the same schedule and jitter spreads it", () => {
  const a = new Backoff({ random: mulberry32(42) });
  const b = new Backoff({ random: mulberry32(42) });
  const sa = Array.from({ length: 10 }, () => a.next());
  const sb = Array.from({ length: 10 }, () => b.next());
  assert.deepEqual(sa, sb);
  // A crowd at the same attempt spreads over its window instead of arriving together.
  const crowd = Array.from(
    { length: 100 },
    (_, i) => new Backoff({ initialMs: 1000, random: mulberry32(i) }).next(),
  );
  assert.ok(new Set(crowd).size > 80, "delays are spread");
  const mean = crowd.reduce((s, d) => s + d, 0) / crowd.length;
  assert.ok(mean > 350 && mean < 650, `mean ${mean} near half the ceiling`);
});

Deno.test("backoff - reset() starts the schedule over", () => {
  const backoff = new Backoff({ initialMs: 100, random: () => 0.999999 });
  backoff.next();
  backoff.next();
  assert.equal(backoff.ceiling(), 400);
  backoff.reset();
  assert.equal(backoff.attempt, 0);
  assert.equal(backoff.next(), 100);
});

Deno.test("backoff - rejects a nonsensical configuration with a RangeError", () => {
  assert.throws(() => new Backoff({ initialMs: 0 }), RangeError);
  assert.throws(() => new Backoff({ initialMs: 100, maxMs: 50 }), RangeError);
  assert.throws(() => new Backoff({ factor: 0.5 }), RangeError);
});

Deno.test("sleep() resolves after the delay and rejects with the signal's reason on abort", async () => {
  await sleep(1);
  const controller = new AbortController();
  const reason = new Error("stop");
  const waiting = sleep(10_000, controller.signal);
  controller.abort(reason);
  await assert.rejects(waiting, (e) => e === reason);
  await assert.rejects(
    sleep(5, AbortSignal.abort(reason)),
    (e) => e === reason,
  );
});
