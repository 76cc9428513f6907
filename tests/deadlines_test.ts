import assert from "node:assert/strict";
import { Deadlines } from "../lib/_deadlines.ts";

Deno.test("deadlines - expire in due order across durations, and never after cancel", async () => {
  const expired: string[] = [];
  const all = Promise.withResolvers<void>();
  const deadlines = new Deadlines<string>((item) => {
    expired.push(item);
    if (expired.length === 4) all.resolve();
  });
  deadlines.add("b-30", 30);
  const cancelled = deadlines.add("x-10", 10);
  deadlines.add("a-5", 5);
  deadlines.add("c-30", 30);
  deadlines.add("d-40", 40);
  cancelled.cancel();
  cancelled.cancel();
  await all.promise;
  assert.deepEqual(expired, ["a-5", "b-30", "c-30", "d-40"]);
  deadlines.close();
});

Deno.test("deadlines - cancelled items never expire and close() stops the timers", async () => {
  let fired = 0;
  const deadlines = new Deadlines<number>(() => fired++);
  const handles = Array.from(
    { length: 100 },
    (_, i) => deadlines.add(i, 1000 + (i % 3)),
  );
  // Cancel out of order: heads, tails and middles.
  for (const i of [50, 0, 99, ...Array.from({ length: 100 }, (_, k) => k)]) {
    handles[i].cancel();
  }
  deadlines.add(7, 5).cancel();
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(fired, 0);
  assert.equal(
    deadlines.armed,
    true,
    "the 1 s lane keeps its timer until it fires",
  );
  deadlines.close();
  assert.equal(deadlines.armed, false);
  // The sanitizer fails this test if any timer is still pending.
});

Deno.test("deadlines - a head cancelled early re-arms for the next item", async () => {
  const expired: number[] = [];
  const done = Promise.withResolvers<void>();
  const deadlines = new Deadlines<number>((item) => {
    expired.push(item);
    done.resolve();
  });
  const first = deadlines.add(1, 5);
  await new Promise((r) => setTimeout(r, 2));
  deadlines.add(2, 5);
  first.cancel();
  await done.promise;
  assert.deepEqual(expired, [2]);
  deadlines.close();
});
