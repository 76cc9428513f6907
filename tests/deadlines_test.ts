import assert from "node:assert/strict";
import { Deadlines } from "../lib/broker/_deadlines.ts";
import { releasing, within } from "./_helpers.ts";
import { ManualTimers } from "./_manual_timers.ts";

Deno.test("deadlines - expire in due order across durations, and never after cancel", async () => {
  const expired: string[] = [];
  const all = Promise.withResolvers<void>();
  await using deadlines = releasing(
    new Deadlines<string>((item) => {
      expired.push(item);
      if (expired.length === 4) all.resolve();
    }),
    (d) => d.close(),
  );
  deadlines.add("b-30", 30);
  const cancelled = deadlines.add("x-10", 10);
  deadlines.add("a-5", 5);
  deadlines.add("c-30", 30);
  deadlines.add("d-40", 40);
  cancelled.cancel();
  cancelled.cancel();
  await within(all.promise, "four deadlines to expire");
  assert.deepEqual(expired, ["a-5", "b-30", "c-30", "d-40"]);
});

Deno.test("deadlines - cancelled items never expire, even once their deadline has passed", async () => {
  const fired: string[] = [];
  const sentinels = Promise.withResolvers<void>();
  const deadlines = new Deadlines<string>((item) => {
    fired.push(item);
    if (fired.includes("last-short") && fired.includes("last-long")) {
      sentinels.resolve();
    }
  });
  try {
    // Two lanes (about 10 ms and about 110 ms), each with a later item left alone: a lane
    // expires in due order, so once that item fires every cancelled deadline before it has passed.
    const handles = Array.from(
      { length: 60 },
      (_, i) =>
        i % 2 === 0
          ? deadlines.add(`short-${i}`, 5 + (i % 10))
          : deadlines.add(`long-${i}`, 100 + (i % 10)),
    );
    // Out of order: heads, tails and middles.
    for (const i of [30, 0, 59, ...handles.keys()]) handles[i].cancel();
    deadlines.add("last-short", 30);
    deadlines.add("last-long", 130);
    await within(sentinels.promise, "both lanes' last items");
    assert.deepEqual(fired.sort(), ["last-long", "last-short"]);
  } finally {
    deadlines.close();
  }
});

Deno.test("deadlines - close() stops the timers", () => {
  let fired = 0;
  const deadlines = new Deadlines<number>(() => fired++);
  try {
    deadlines.add(1, 1000).cancel();
    deadlines.add(2, 5);
    assert.equal(
      deadlines.armed,
      true,
      "a lane keeps its timer until it fires, even when emptied",
    );
    deadlines.close();
    assert.equal(deadlines.armed, false);
    assert.equal(fired, 0);
    // The sanitizer fails this test if any timer is still pending.
  } finally {
    deadlines.close(); // again, in case an assertion above failed first
  }
});

Deno.test("deadlines - a head cancelled early re-arms for the next item", () => {
  const timers = new ManualTimers();
  const expired: number[] = [];
  const deadlines = new Deadlines<number>((item) => expired.push(item), timers);
  const first = deadlines.add(1, 5);
  timers.advance(2);
  deadlines.add(2, 5);
  first.cancel();
  timers.advance(3);
  assert.deepEqual(
    expired,
    [],
    "the cancelled head's time came, and nothing else was due",
  );
  assert.equal(deadlines.armed, true, "the lane re-armed for the next item");
  timers.advance(1);
  assert.deepEqual(expired, []);
  timers.advance(1);
  assert.deepEqual(expired, [2]);
  assert.equal(timers.pending, 0, "an emptied lane retires its timer");
});

Deno.test("deadlines - an earlier deadline in a lane re-arms its timer sooner", () => {
  const timers = new ManualTimers();
  const expired: string[] = [];
  const deadlines = new Deadlines<string>((item) => expired.push(item), timers);
  deadlines.add("late", 140);
  deadlines.add("early", 60); // the same 100 ms lane, due before the armed head
  timers.advance(60);
  assert.deepEqual(expired, ["early"]);
  timers.advance(80);
  assert.deepEqual(expired, ["early", "late"]);
  deadlines.close();
  assert.equal(timers.pending, 0);
});
