import assert from "node:assert/strict";
import {
  Balancer,
  hash32,
  isCandidate,
  loadScore,
  rendezvousOrder,
  type Strategy,
  type WorkerLoad,
} from "../lib/broker/balancer.ts";
import { mulberry32 } from "./_helpers.ts";

function load(id: string, fields: Partial<WorkerLoad> = {}): WorkerLoad {
  return {
    id,
    weight: 1,
    inFlight: 0,
    maxConcurrency: 8,
    ewmaMs: 10,
    failureRate: 0,
    healthy: true,
    draining: false,
    actions: null,
    ...fields,
  };
}

function counts(balancer: Balancer, workers: WorkerLoad[], draws: number) {
  const seen = new Map<string, number>();
  for (let i = 0; i < draws; i++) {
    const w = balancer.pick(workers, "get_time")!;
    seen.set(w.id, (seen.get(w.id) ?? 0) + 1);
  }
  return seen;
}

Deno.test("balancer - pick() returns undefined for an empty pool", () => {
  for (
    const strategy of [
      "least_loaded",
      "round_robin",
      "random",
      "weighted_random",
    ] as const
  ) {
    assert.equal(new Balancer(strategy).pick([], "get_time"), undefined);
  }
});

Deno.test("balancer - rejects an unknown strategy with a RangeError naming it", () => {
  assert.throws(
    () => new Balancer("fastest" as Strategy),
    /Unknown strategy 'fastest'/,
  );
});

Deno.test("balancer - only healthy, non-draining, non-saturated workers that offer the action are candidates", () => {
  const workers = [
    load("sick", { healthy: false }),
    load("leaving", { draining: true }),
    load("full", { inFlight: 8, maxConcurrency: 8 }),
    load("other", { actions: new Set(["get_markets"]) }),
    load("good", { actions: new Set(["get_time"]), ewmaMs: 1000, inFlight: 7 }),
  ];
  assert.deepEqual(workers.map((w) => isCandidate(w, "get_time")), [
    false,
    false,
    false,
    false,
    true,
  ]);
  for (
    const strategy of [
      "least_loaded",
      "round_robin",
      "random",
      "weighted_random",
    ] as const
  ) {
    const balancer = new Balancer(strategy, { random: mulberry32(1) });
    for (let i = 0; i < 20; i++) {
      assert.equal(balancer.pick(workers, "get_time")?.id, "good", strategy);
    }
  }
  assert.equal(new Balancer().pick(workers.slice(0, 4), "get_time"), undefined);
});

Deno.test("balancer - least_loaded prefers the worker with fewer requests in flight", () => {
  const balancer = new Balancer("least_loaded");
  const workers = [
    load("busy", { inFlight: 3 }),
    load("idle", { inFlight: 0 }),
    load("mid", { inFlight: 1 }),
  ];
  assert.equal(balancer.pick(workers, "get_time")?.id, "idle");
});

Deno.test("balancer - least_loaded weighs in-flight count against weight", () => {
  const balancer = new Balancer("least_loaded");
  // Three in flight on a weight-4 worker is lighter than one in flight on a weight-1 worker.
  const workers = [
    load("small", { inFlight: 1, weight: 1 }),
    load("big", { inFlight: 3, weight: 4 }),
  ];
  assert.equal(balancer.pick(workers, "get_time")?.id, "big");
  assert.ok(loadScore(workers[1]) < loadScore(workers[0]));
});

Deno.test("balancer - least_loaded prefers the faster of two equally loaded workers", () => {
  const balancer = new Balancer("least_loaded");
  const workers = [load("slow", { ewmaMs: 200 }), load("fast", { ewmaMs: 20 })];
  assert.equal(balancer.pick(workers, "get_time")?.id, "fast");
});

Deno.test("balancer - least_loaded avoids a worker with a high failure rate even when it is fast", () => {
  const balancer = new Balancer("least_loaded");
  const workers = [
    load("fast-failing", { ewmaMs: 5, failureRate: 0.9 }),
    load("steady", { ewmaMs: 40 }),
  ];
  for (let i = 0; i < 10; i++) {
    assert.equal(balancer.pick(workers, "get_time")?.id, "steady");
  }
});

Deno.test("balancer - least_loaded respects weight when filling idle workers", () => {
  // Simulate filling: each pick adds one in flight. A weight-3 worker ends with 3× the load.
  const balancer = new Balancer("least_loaded");
  const workers = [
    load("w1", { weight: 1, maxConcurrency: 100 }),
    load("w3", { weight: 3, maxConcurrency: 100 }),
  ];
  for (let i = 0; i < 40; i++) balancer.pick(workers, "get_time")!.inFlight++;
  assert.deepEqual(workers.map((w) => w.inFlight), [10, 30]);
});

Deno.test("balancer - least_loaded shares exact ties instead of piling onto the first worker", () => {
  const balancer = new Balancer("least_loaded");
  const workers = [load("a"), load("b"), load("c")];
  const seen = counts(balancer, workers, 30);
  assert.deepEqual([...seen.values()], [10, 10, 10]);
});

Deno.test("balancer - round_robin cycles through the candidates in order", () => {
  const balancer = new Balancer("round_robin");
  const workers = [load("a"), load("b"), load("c")];
  const picks = Array.from(
    { length: 7 },
    () => balancer.pick(workers, "get_time")!.id,
  );
  assert.deepEqual(picks, ["a", "b", "c", "a", "b", "c", "a"]);
});

Deno.test("balancer - random with a seeded source is reproducible and covers every candidate", () => {
  const workers = [load("a"), load("b"), load("c"), load("d")];
  const one = new Balancer("random", { random: mulberry32(99) });
  const two = new Balancer("random", { random: mulberry32(99) });
  const a = Array.from({ length: 50 }, () => one.pick(workers, "x")!.id);
  const b = Array.from({ length: 50 }, () => two.pick(workers, "x")!.id);
  assert.deepEqual(a, b);
  assert.equal(new Set(a).size, 4);
});

Deno.test("balancer - weighted_random follows the weights within 2% over 20000 draws", () => {
  const balancer = new Balancer("weighted_random", {
    random: mulberry32(2024),
  });
  const workers = [
    load("w1", { weight: 1 }),
    load("w2", { weight: 2 }),
    load("w5", { weight: 5 }),
  ];
  const draws = 20_000;
  const seen = counts(balancer, workers, draws);
  for (
    const [id, expected] of [["w1", 1 / 8], ["w2", 2 / 8], [
      "w5",
      5 / 8,
    ]] as const
  ) {
    const share = (seen.get(id) ?? 0) / draws;
    assert.ok(
      Math.abs(share - expected) < 0.02,
      `${id}: ${share} vs ${expected}`,
    );
  }
});

Deno.test("hash32() is stable and spreads keys that differ in one character", () => {
  assert.equal(hash32("510300"), hash32("510300"));
  const buckets = new Array(8).fill(0);
  for (let i = 0; i < 8000; i++) buckets[hash32(`code${i}`) % 8]++;
  for (const n of buckets) assert.ok(n > 850 && n < 1150, `bucket ${n}`);
});

Deno.test("rendezvousOrder() is stable and independent of the input order", () => {
  const workers = [{ id: "a", weight: 1 }, { id: "b", weight: 1 }, {
    id: "c",
    weight: 1,
  }];
  const first = rendezvousOrder("510300", workers).map((w) => w.id);
  assert.deepEqual(rendezvousOrder("510300", workers).map((w) => w.id), first);
  assert.deepEqual(
    rendezvousOrder("510300", [...workers].reverse()).map((w) => w.id),
    first,
  );
  assert.deepEqual([...first].sort(), ["a", "b", "c"]);
});

Deno.test("rendezvousOrder() moves only the keys the added worker takes home", () => {
  const before = [{ id: "a", weight: 1 }, { id: "b", weight: 1 }, {
    id: "c",
    weight: 1,
  }];
  const after = [...before, { id: "d", weight: 1 }];
  const keys = Array.from({ length: 2000 }, (_, i) => String(100000 + i));
  let moved = 0;
  for (const key of keys) {
    const oldHome = rendezvousOrder(key, before)[0].id;
    const newHome = rendezvousOrder(key, after)[0].id;
    if (oldHome !== newHome) {
      moved++;
      assert.equal(newHome, "d", `key ${key} moved between old workers`);
    }
  }
  // About a quarter should move to the new worker, and nothing else.
  assert.ok(moved > 2000 * 0.2 && moved < 2000 * 0.3, `moved ${moved}`);
});

Deno.test("rendezvousOrder() gives a weight-2 worker about twice the keys", () => {
  const workers = [{ id: "a", weight: 1 }, { id: "b", weight: 2 }];
  let b = 0;
  for (let i = 0; i < 6000; i++) {
    if (rendezvousOrder(`k${i}`, workers)[0].id === "b") b++;
  }
  assert.ok(Math.abs(b / 6000 - 2 / 3) < 0.03, `share ${b / 6000}`);
});
