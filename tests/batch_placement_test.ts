import assert from "node:assert/strict";
import {
  fetchCapacity,
  fetchRate,
  planPlacement,
  type UpstreamReport,
} from "../lib/broker/batch_placement.ts";
import { itemsInHand } from "../lib/broker/batch.ts";
import {
  connectClient,
  emptyBars,
  group,
  idOf,
  releasing,
  startTestServer,
  startWorker,
  type TestWorker,
} from "./_helpers.ts";
import { startFakeEastmoney } from "./_fake_eastmoney.ts";
import { createMarketService } from "../lib/market/mod.ts";
import type { Worker } from "../lib/worker/worker_client.ts";

type Item = { symbol_type: string; code: string };

function etfs(n: number): Item[] {
  return Array.from({ length: n }, (_, i) => ({
    symbol_type: "etf",
    code: `51${String(1000 + i).slice(-4)}`,
  }));
}

/** A worker that answers every item and counts what it was given. */
async function counting(
  server: ReturnType<typeof startTestServer>,
  name: string,
  asked: Map<string, number>,
): Promise<TestWorker> {
  return await startWorker(server, {
    name,
    actions: {
      get_markets: (params) => {
        const list = params as Item[];
        asked.set(name, (asked.get(name) ?? 0) + list.length);
        return emptyBars(list);
      },
    },
  });
}

/** Sets what a worker's heartbeat would say of its upstream, as the server keeps it. */
function report(
  server: ReturnType<typeof startTestServer>,
  worker: Worker,
  upstream: UpstreamReport,
): void {
  const peer = server.broker.dispatcher.registry.get(idOf(worker));
  assert.ok(peer);
  (peer as unknown as { upstream: UpstreamReport }).upstream = upstream;
}

function host(fields: Partial<UpstreamReport["hosts"][string]>) {
  return {
    hosts: {
      "push2his.eastmoney.com": {
        cooldown_until: 0,
        budget_hour: 1000,
        budget_day: 1000,
        rate: 1,
        ...fields,
      },
    },
  };
}

Deno.test("placement - a worker cooling down past the deadline gets no item; the others share by their rates", async () => {
  await using server = startTestServer();
  const asked = new Map<string, number>();
  await using workers = group<TestWorker>();
  for (const name of ["cool", "fast", "slow"]) {
    workers.push(await counting(server, name, asked));
  }
  await using client = await connectClient(server.requesterUrl);
  report(
    server,
    workers[0],
    host({ cooldown_until: Date.now() + 3_600_000 }),
  );
  report(server, workers[1], host({ rate: 3 }));
  report(server, workers[2], host({ rate: 1 }));
  const answer = await client.request("get_markets", etfs(120), {
    timeout: 120,
  });
  assert.equal(answer.success, true, answer.error ?? "");
  const data = answer.data as { summary: { success: number } };
  assert.equal(data.summary.success, 120);
  assert.equal(asked.get("cool") ?? 0, 0, "the cooling worker was asked");
  const fast = asked.get("fast") ?? 0;
  const slow = asked.get("slow") ?? 0;
  assert.equal(fast + slow, 120);
  assert.ok(fast > 2 * slow, `fast ${fast}, slow ${slow}`);
});

Deno.test("placement - items beyond what the budgets allow before the deadline are refused at once, retriable, and never sent", async () => {
  await using server = startTestServer();
  const asked = new Map<string, number>();
  await using workers = group<TestWorker>();
  for (const name of ["a", "b"]) {
    workers.push(await counting(server, name, asked));
  }
  await using client = await connectClient(server.requesterUrl);
  report(server, workers[0], host({ budget_hour: 8 }));
  report(server, workers[1], host({ budget_hour: 50, budget_day: 12 }));
  const items = etfs(30);
  const results = new Map<number, Record<string, unknown>>();
  const batch = client.stream("get_markets", items, { timeout: 60 });
  for await (const { index, result } of batch) {
    results.set(index, result as Record<string, unknown>);
  }
  const answer = await batch.answer;
  assert.equal(answer.success, true);
  assert.equal(results.size, 30);
  const refused = [...results.values()].filter((r) =>
    r.error_code === "UPSTREAM_BUDGET"
  );
  assert.equal(refused.length, 10);
  for (const r of refused) {
    assert.equal(r.success, false);
    assert.equal(r.retriable, true);
    assert.match(String(r.error), /allow about 20 of 30 items/);
  }
  // Whole input order: the first 20 went, the last 10 did not.
  assert.deepEqual(
    [...results.entries()].filter(([, r]) => r.success).map(([i]) => i)
      .sort((a, b) => a - b),
    Array.from({ length: 20 }, (_, i) => i),
  );
  assert.equal((asked.get("a") ?? 0) + (asked.get("b") ?? 0), 20);
  assert.ok((asked.get("a") ?? 0) <= 8);
});

Deno.test("placement - when every worker is cooling down, each item says so with when to come back, and no worker is asked", async () => {
  await using server = startTestServer();
  const asked = new Map<string, number>();
  await using workers = group<TestWorker>();
  for (const name of ["a", "b"]) {
    workers.push(await counting(server, name, asked));
  }
  await using client = await connectClient(server.requesterUrl);
  const soon = Date.now() + 600_000;
  report(server, workers[0], host({ cooldown_until: soon }));
  report(server, workers[1], host({ cooldown_until: soon + 60_000 }));
  const answer = await client.request("get_markets", etfs(4), {
    timeout: 30,
  });
  assert.equal(answer.success, true);
  const results = (answer.data as { results: Record<string, unknown>[] })
    .results;
  for (const r of results) {
    assert.equal(r.error_code, "UPSTREAM_BUDGET");
    assert.equal(r.retriable, true);
    assert.equal(r.retry_at, soon);
    assert.match(String(r.error), /cooling down or out of budget/);
  }
  assert.equal(asked.size, 0);
});

Deno.test("placement - workers that report nothing are placed as before", async () => {
  await using server = startTestServer();
  const asked = new Map<string, number>();
  await using workers = group<TestWorker>();
  for (const name of ["a", "b"]) {
    workers.push(await counting(server, name, asked));
  }
  await using client = await connectClient(server.requesterUrl);
  const answer = await client.request("get_markets", etfs(60));
  assert.equal(
    (answer.data as { summary: { success: number } }).summary.success,
    60,
  );
  assert.ok((asked.get("a") ?? 0) > 0 && (asked.get("b") ?? 0) > 0);
});

Deno.test("placement - a worker banned mid-batch: its items move to the others, none lost, none twice, and the banned host is not pressed", async () => {
  await using upstream = await startFakeEastmoney({
    synthetic: true,
    syntheticEnd: "2015-12-31",
    latencyMs: 20,
  });
  await using server = startTestServer();
  await using services = group(["w0", "w1", "w2"].map((name) =>
    releasing(
      createMarketService({
        eastmoneyUrl: upstream.url,
        rateLimit: 0,
        headers: { "x-fake-identity": name },
      }),
      (market) => market.close(),
    )
  ));
  await using workers = group<TestWorker>();
  for (const [i, market] of services.entries()) {
    workers.push(
      await startWorker(server, {
        name: `w${i}`,
        concurrency: 2,
        actions: market.actions(),
      }),
    );
  }
  await using client = await connectClient(server.requesterUrl);
  const items = etfs(60).map((item) => ({
    ...item,
    start_date: "2015-01-01",
    end_date: "2015-03-31",
  }));
  const seen = new Map<number, number>();
  let callsAtBan = -1;
  const batch = client.stream("get_markets", items, { timeout: 60 });
  for await (const { index, result } of batch) {
    seen.set(index, (seen.get(index) ?? 0) + 1);
    const r = result as { success: boolean; code: string; error?: string };
    assert.equal(r.success, true, `${r.code}: ${r.error}`);
    assert.equal(r.code, items[index].code);
    if (callsAtBan < 0 && seen.size >= 10) {
      callsAtBan = upstream.callsFrom("w0");
      upstream.ban("w0");
    }
  }
  assert.ok(callsAtBan >= 0, "the batch ended before the ban");
  const answer = await batch.answer;
  assert.equal(answer.success, true);
  assert.deepEqual(
    (answer.data as { summary: unknown }).summary,
    { total: 60, success: 60, failed: 0 },
  );
  assert.equal(seen.size, 60);
  assert.ok([...seen.values()].every((n) => n === 1), "an item came twice");
  // A reset is a ban signal: no retry to the same host, and the breaker stops the rest.
  const afterBan = upstream.callsFrom("w0") - callsAtBan;
  assert.ok(afterBan <= 6, `${afterBan} requests to the banned host`);
  assert.ok(upstream.callsFrom("w1") + upstream.callsFrom("w2") > 0);
});

Deno.test("placement - what a worker can fetch before the deadline: one now, then one per interval, within its budgets", () => {
  const now = 1_000_000;
  const minute = now + 60_000;
  const at = (fields: Partial<UpstreamReport["hosts"][string]>) =>
    fetchCapacity(host(fields), now, minute);
  // 0.5/s for 60 s: one at once, then one every 2 s.
  assert.equal(at({ rate: 0.5, budget_hour: null, budget_day: null }), 31);
  assert.equal(at({ rate: 0.5, budget_hour: 20 }), 20, "the hour's budget");
  assert.equal(at({ rate: 0.5, budget_day: 7 }), 7, "the day's budget");
  assert.equal(at({ rate: 0, budget_hour: 50, budget_day: 40 }), 40);
  assert.equal(at({ rate: 1, budget_hour: 0 }), 0, "no budget left");
  // A cool-down that ends before the deadline leaves the rest of the time.
  assert.equal(at({ rate: 1, cooldown_until: now + 30_000 }), 31);
  assert.equal(at({ rate: 1, cooldown_until: minute }), 0);
  // The best host counts; no host (or no report) is no limit.
  const two = {
    hosts: {
      ...host({ rate: 0.1 }).hosts,
      "quotes.example": { cooldown_until: 0, rate: 1, budget_hour: 100 },
    },
  };
  assert.equal(fetchCapacity(two, now, minute), 61);
  assert.equal(fetchCapacity({ hosts: {} }, now, minute), Infinity);
  assert.equal(fetchCapacity(undefined, now, minute), Infinity);
});

Deno.test("placement - the rate a worker fetches at now: its fastest open host; none for no limit", () => {
  const now = 1_000_000;
  assert.equal(fetchRate(host({ rate: 2 }), now), 2);
  assert.equal(fetchRate(host({ rate: 2, cooldown_until: now + 1 }), now), 0);
  assert.equal(fetchRate(host({ rate: 2, budget_day: 0 }), now), 0);
  assert.equal(fetchRate(host({ rate: 0 }), now), undefined);
  assert.equal(fetchRate(host({ rate: null }), now), undefined);
  assert.equal(fetchRate(undefined, now), undefined);
});

Deno.test("placement - a plan shares by rate, counts other batches' items against capacity, and says when a closed pool opens", () => {
  const now = 1_000_000;
  const deadline = now + 10_000;
  const workers = [
    { id: "fast", weight: 1, upstream: host({ rate: 2 }) },
    { id: "slow", weight: 1, upstream: host({ rate: 0.5 }) },
    {
      id: "cool",
      weight: 1,
      upstream: host({ rate: 2, cooldown_until: now + 60_000 }),
    },
  ];
  const plan = planPlacement(
    workers,
    now,
    deadline,
    (w) => w.id === "fast" ? 5 : 0,
  );
  assert.deepEqual(plan.usable.map((w) => w.id), ["fast", "slow"]);
  assert.equal(plan.capacity.get("fast"), 21 - 5);
  assert.equal(plan.capacity.get("slow"), 6);
  assert.equal(plan.total, 22);
  assert.deepEqual([...plan.weight], [["fast", 2], ["slow", 0.5]]);
  assert.equal(plan.earliest, undefined);
  const closed = planPlacement(workers.slice(2), now, deadline);
  assert.equal(closed.total, 0);
  assert.equal(closed.earliest, now + 60_000);
});

Deno.test("placement - a rate-limited worker holds the item it fetches and the next, more when its upstream is slow", () => {
  assert.equal(itemsInHand(2, undefined), 2);
  assert.equal(itemsInHand(2, 75), 2);
  // Its replacement takes over a second to arrive: two more slots pass meanwhile.
  assert.equal(itemsInHand(2, 1200), 6);
  assert.equal(itemsInHand(30, 10), 16);
  assert.equal(itemsInHand(1 / 30, 5000), 2);
  assert.equal(itemsInHand(0, 75), 1, "cooling down: one, for when it opens");
  assert.equal(itemsInHand(undefined, 75), Infinity);
});
