import assert from "node:assert/strict";
import type { ActionHandler } from "../lib/action.ts";
import { createMarketService } from "../lib/market/mod.ts";
import type { RequesterClient } from "../lib/requester/requester_client.ts";
import type { ServerOptions } from "../lib/broker/server.ts";
import type { Worker } from "../lib/worker/worker_client.ts";
import {
  connectClient,
  type Frame,
  group,
  idOf,
  RawPeer,
  releasing,
  startTestServer,
  startWorker,
  type TestServer,
  type TestWorker,
  waitFor,
} from "./_helpers.ts";

interface Item {
  code: string;
  symbol_type?: string;
}

/** A stub `get_markets`: one success per item, naming the worker that served it. */
function stubMarkets(name: string, calls: Item[][] = []): ActionHandler {
  return (params, ctx) => {
    const items = params as Item[];
    calls.push(items);
    items.forEach((_, i) => ctx.progress?.(i + 1, items.length));
    return items.map((item) => ({
      success: true,
      code: item.code,
      name: `${name}:${item.code}`,
      data: [],
    }));
  };
}

/** What a worker whose upstream refuses it (HTTP 403) answers for each item. */
function blockedItems(params: unknown) {
  return (params as Item[]).map((item) => ({
    success: false,
    code: item.code,
    error: "Upstream refused: HTTP 403",
    error_code: "UPSTREAM_BLOCKED",
    retriable: true,
  }));
}

/** One worker per handler; `await using` stops them all at the end of the scope. */
async function startPool(
  server: TestServer,
  handlers: ActionHandler[],
): Promise<TestWorker[] & AsyncDisposable> {
  const workers = group<TestWorker>();
  try {
    for (const [i, handler] of handlers.entries()) {
      workers.push(
        await startWorker(server, {
          name: `w${i}`,
          actions: { get_markets: handler },
        }),
      );
    }
  } catch (error) {
    await workers[Symbol.asyncDispose]();
    throw error;
  }
  return workers;
}

async function withPool(
  handlers: ActionHandler[],
  test: (
    server: TestServer,
    client: RequesterClient,
    workers: Worker[],
  ) => Promise<void>,
  options: ServerOptions = {},
) {
  await using server = startTestServer(options);
  await using workers = await startPool(server, handlers);
  await using client = await connectClient(server.requesterUrl);
  await test(server, client, workers);
}

const CODES = Array.from({ length: 30 }, (_, i) => String(510000 + i * 7));

Deno.test("batch - spreads get_markets over workers and merges results in input order", async () => {
  await withPool(
    [stubMarkets("a"), stubMarkets("b"), stubMarkets("c")],
    async (_server, client, workers) => {
      const items = CODES.map((code) => ({ symbol_type: "etf", code }));
      const answer = await client.request("get_markets", items);
      assert.equal(answer.success, true);
      assert.equal(answer.error, null);
      const data = answer.data as {
        results: { code: string; success: boolean; processed_by: string }[];
        summary: unknown;
        distributed: {
          workers_used: number;
          elapsed_time: number;
          errors: unknown;
        };
      };
      assert.deepEqual(data.results.map((r) => r.code), CODES);
      assert.deepEqual(data.summary, { total: 30, success: 30, failed: 0 });
      const used = new Set(data.results.map((r) => r.processed_by));
      assert.equal(data.distributed.workers_used, used.size);
      assert.equal(used.size, 3, "30 codes land on all three workers");
      assert.equal(answer.processed_by, `distributed_${used.size}_workers`);
      assert.equal(data.distributed.errors, null);
      assert.equal(typeof data.distributed.elapsed_time, "number");
      const ids = new Set(workers.map(idOf));
      for (const id of used) assert.ok(ids.has(id));
    },
  );
});

Deno.test("batch - keeps every item of a code on the same worker, batch after batch", async () => {
  await withPool(
    [stubMarkets("a"), stubMarkets("b"), stubMarkets("c")],
    async (_server, client) => {
      const homes = async (codes: string[]) => {
        const items = codes.flatMap((
          code,
        ) => [{ code, period: "daily" }, { code, period: "weekly" }]);
        const answer = await client.request("get_markets", { markets: items });
        const results =
          (answer.data as { results: { code: string; processed_by: string }[] })
            .results;
        const home = new Map<string, string>();
        for (const r of results) {
          if (home.has(r.code)) {
            assert.equal(
              home.get(r.code),
              r.processed_by,
              `both items of ${r.code} together`,
            );
          }
          home.set(r.code, r.processed_by);
        }
        return home;
      };
      const first = await homes(CODES);
      const second = await homes(CODES);
      for (const code of CODES) {
        assert.equal(
          second.get(code),
          first.get(code),
          code,
        );
      }
    },
  );
});

Deno.test("batch - a code keeps its home worker when the workers reconnect with new client ids", async () => {
  await using server = startTestServer();
  await using client = await connectClient(server.requesterUrl);
  await using workers = group<TestWorker>();
  const names = ["w0", "w1", "w2"];
  const start = async (order: string[]) => {
    for (const name of order) {
      workers.push(
        await startWorker(server, {
          name,
          actions: { get_markets: stubMarkets(name) },
        }),
      );
    }
  };
  /** Code to the name of the worker that served it (stubs put it in the result's name). */
  const homes = async () => {
    const answer = await client.request(
      "get_markets",
      CODES.map((code) => ({
        code,
      })),
    );
    const results =
      (answer.data as { results: { code: string; name: string }[] })
        .results;
    return new Map(results.map((r) => [r.code, r.name.split(":")[0]]));
  };
  await start(names);
  const ids = new Set(workers.map(idOf));
  const first = await homes();
  assert.equal(new Set(first.values()).size, 3, "every worker has codes");
  for (const worker of workers) await worker.stop();
  workers.length = 0;
  await start(names.toReversed());
  assert.equal(
    workers.some((w) => ids.has(idOf(w))),
    false,
    "new client ids",
  );
  const second = await homes();
  assert.deepEqual([...second], [...first]);
});

Deno.test("batch - accepts both a list and {markets: [...]}", async () => {
  await withPool([stubMarkets("a")], async (_server, client) => {
    const items = [{ code: "510300" }, { code: "159915" }];
    const asList = await client.request("get_markets", items);
    const asObject = await client.request("get_markets", { markets: items });
    for (const answer of [asList, asObject]) {
      assert.equal(answer.success, true);
      assert.equal(answer.processed_by, "distributed_1_workers");
      assert.deepEqual((answer.data as { summary: unknown }).summary, {
        total: 2,
        success: 2,
        failed: 0,
      });
    }
  });
});

Deno.test("batch - re-sends items that a worker's blocked upstream failed to another worker", async () => {
  const blockedCalls: Item[][] = [];
  const blocked: ActionHandler = (params) => {
    blockedCalls.push(params as Item[]);
    return blockedItems(params);
  };
  await withPool(
    [blocked, stubMarkets("b"), stubMarkets("c")],
    async (_server, client, workers) => {
      const answer = await client.request(
        "get_markets",
        CODES.map((code) => ({ code })),
      );
      const data = answer.data as {
        results: { code: string; success: boolean; processed_by: string }[];
        summary: unknown;
        distributed: { errors: string[] | null };
      };
      assert.ok(
        blockedCalls.length > 0,
        "the blocked worker got a share first",
      );
      assert.deepEqual(data.summary, { total: 30, success: 30, failed: 0 });
      assert.deepEqual(data.results.map((r) => r.code), CODES);
      const blockedId = idOf(workers[0]);
      for (const r of data.results) assert.notEqual(r.processed_by, blockedId);
      assert.ok(
        data.distributed.errors?.some((e) =>
          e.includes(`re-sent: upstream of worker ${blockedId}`)
        ),
      );
    },
  );
});

Deno.test("batch - sends progress frames only when the requester asks", async () => {
  await withPool([stubMarkets("a"), stubMarkets("b")], async (server) => {
    await using peer = await RawPeer.open(server.requesterUrl);
    const items = CODES.map((code) => ({ code }));
    peer.send({ request_id: "quiet", command: "get_markets", data: items });
    await peer.answer("quiet");
    peer.send({
      request_id: "loud",
      command: "get_markets",
      data: items,
      progress: true,
    });
    const loud = await peer.answer("loud");
    assert.equal(loud.success, true);
    const frames: Frame[] = peer.received;
    assert.deepEqual(
      frames.filter((f) => f.request_id === "quiet").length,
      1,
      "one frame, the answer",
    );
    const progress = frames.filter((f) =>
      f.request_id === "loud" && "progress" in f
    );
    assert.ok(progress.length >= 1);
    for (const f of progress) {
      assert.equal(f.progress.total, 30);
      assert.ok(!("success" in f));
    }
    assert.deepEqual(progress.at(-1).progress, { done: 30, total: 30 });
    assert.ok(
      frames.indexOf(progress.at(-1)) < frames.indexOf(loud),
      "progress comes before the answer",
    );
  });
});

Deno.test("batch - RequesterClient delivers progress to onProgress", async () => {
  await withPool([stubMarkets("a")], async (_server, client) => {
    const seen: { done: number; total?: number }[] = [];
    const answer = await client.request(
      "get_markets",
      CODES.map((code) => ({ code })),
      {
        onProgress: (p) => seen.push(p),
      },
    );
    assert.equal(answer.success, true);
    assert.deepEqual(seen.at(-1), { done: 30, total: 30 });
  });
});

Deno.test("batch - answers BATCH_TOO_LARGE over the item limit", async () => {
  await withPool([stubMarkets("a")], async (_server, client) => {
    const answer = await client.request("get_markets", [{ code: "1" }, {
      code: "2",
    }, { code: "3" }]);
    assert.equal(answer.success, false);
    assert.equal(answer.error_code, "BATCH_TOO_LARGE");
    assert.equal(answer.error, "Batch too large: 3 items (limit 2)");
    assert.equal(
      (await client.request("get_markets", [{ code: "1" }])).success,
      true,
      "connection still works",
    );
  }, { maxBatchItems: 2 });
});

Deno.test("batch - answers INVALID_DATA when data is neither a list nor {markets: [...]}", async () => {
  await withPool([stubMarkets("a")], async (_server, client) => {
    for (
      const data of ["510300", { markets: "510300" }, { code: "510300" }, 5]
    ) {
      const answer = await client.request("get_markets", data);
      assert.equal(answer.success, false, JSON.stringify(data));
      assert.equal(answer.error_code, "INVALID_DATA");
      assert.match(
        answer.error!,
        /^Field 'data' of get_markets must be a list/,
      );
    }
  });
});

Deno.test("batch - an invalid item fails alone, not the batch", async () => {
  await withPool([stubMarkets("a")], async (_server, client) => {
    const answer = await client.request("get_markets", [
      { code: "510300" },
      42,
      { code: "159915" },
    ]);
    assert.equal(answer.success, true);
    const data = answer.data as {
      results: { success: boolean; error_code?: string }[];
      summary: unknown;
    };
    assert.deepEqual(data.results.map((r) => r.success), [true, false, true]);
    assert.equal(data.results[1].error_code, "INVALID_PARAMS");
    assert.deepEqual(data.summary, { total: 3, success: 2, failed: 1 });
  });
});

Deno.test("batch - answers No available workers when no worker offers get_markets", async () => {
  await using server = startTestServer();
  await using _worker = await startWorker(server);
  await using client = await connectClient(server.requesterUrl);
  const answer = await client.request("get_markets", [{ code: "510300" }]);
  assert.equal(answer.success, false);
  assert.equal(answer.error, "No available workers");
  assert.equal(answer.error_code, "NO_WORKERS");
});

Deno.test("batch - runs on three workers with the real market service on the demo provider", async () => {
  await using services = group(
    [0, 1, 2].map(() =>
      releasing(
        createMarketService({ providers: ["demo"] }),
        (service) => service.close(),
      )
    ),
  );
  await using server = startTestServer();
  await using workers = group<TestWorker>();
  for (const [i, service] of services.entries()) {
    workers.push(
      await startWorker(server, {
        name: `demo${i}`,
        actions: service.actions(),
      }),
    );
  }
  await using client = await connectClient(server.requesterUrl);
  const items = [
    {
      symbol_type: "etf",
      code: "510300",
      period: "daily",
      start_date: "2024-01-01",
      end_date: "2024-01-31",
      adjust: "qfq",
    },
    {
      symbol_type: "stock",
      code: "600519",
      period: "weekly",
      start_date: "2024-01-01",
      end_date: "2024-03-31",
    },
    {
      symbol_type: "index",
      code: "000300",
      period: "monthly",
      start_date: "2023-01-01",
      end_date: "2023-12-31",
    },
    {
      symbol_type: "etf",
      code: "159915",
      period: "daily",
      start_date: "2024-02-01",
      end_date: "2024-02-29",
    },
    { symbol_type: "bond", code: "123456" },
  ];
  const answer = await client.request("get_markets", { markets: items });
  assert.equal(answer.success, true);
  const data = answer.data as {
    results: {
      success: boolean;
      code: string;
      data?: { date: string; close: number }[];
      source?: string;
    }[];
    summary: { total: number; success: number; failed: number };
  };
  assert.deepEqual(data.results.map((r) => r.code), items.map((i) => i.code));
  assert.deepEqual(data.summary, { total: 5, success: 4, failed: 1 });
  for (const r of data.results.slice(0, 4)) {
    assert.equal(r.success, true);
    assert.ok(r.data!.length > 0, `${r.code} has bars`);
    assert.equal(r.source, "demo");
  }
  assert.equal(
    data.results[4].success,
    false,
    "an invalid symbol_type fails that item alone",
  );
  assert.match(answer.processed_by!, /^distributed_[1-3]_workers$/);
});

Deno.test("batch - a code goes back to the worker that served it last, not to a newer rendezvous home", async () => {
  await using server = startTestServer();
  const calls: Item[][][] = [[], [], []];
  await using workers = group<TestWorker>();
  workers.push(
    await startWorker(server, {
      name: "w1",
      actions: { get_markets: stubMarkets("w1", calls[1]) },
    }),
  );
  workers.push(
    await startWorker(server, {
      name: "w2",
      actions: { get_markets: stubMarkets("w2", calls[2]) },
    }),
  );
  await using client = await connectClient(server.requesterUrl);
  const items = CODES.map((code) => ({ code }));
  assert.ok((await client.request("get_markets", items)).success);
  // A third worker joins: some of the codes hash to it now, but their caches are elsewhere.
  workers.push(
    await startWorker(server, {
      name: "w0",
      actions: { get_markets: stubMarkets("w0", calls[0]) },
    }),
  );
  const before = calls[1].flat().length + calls[2].flat().length;
  assert.ok((await client.request("get_markets", items)).success);
  assert.deepEqual(
    calls[0],
    [],
    "the newcomer took a code another worker holds",
  );
  assert.equal(calls[1].flat().length + calls[2].flat().length, before + 30);
  // New codes do reach it.
  const fresh = CODES.map((code) => ({ code: String(Number(code) + 1) }));
  assert.ok((await client.request("get_markets", fresh)).success);
  assert.ok(calls[0].flat().length > 0, "the newcomer got no new code");
});

async function ranDry(streamed: boolean): Promise<void> {
  await using server = startTestServer({ heartbeatIntervalMs: 30 });
  const served = { slow: 0, fast: 0 };
  const handler = (slow: boolean): ActionHandler => async (params) => {
    const items = params as Item[];
    const out = [];
    for (const item of items) {
      // The slow worker stands for one waiting on its rate limit.
      if (slow) await new Promise((r) => setTimeout(r, 30));
      served[slow ? "slow" : "fast"]++;
      out.push({ success: true, code: item.code, data: [] });
    }
    return out;
  };
  // All say they may fetch 30 times a second: placement holds back what they cannot start.
  const heartbeatData = () => ({
    upstream: { hosts: { "quotes.example": { cooldown_until: 0, rate: 30 } } },
  });
  await using workers = group<TestWorker>();
  for (const name of ["slow", "fast1", "fast2", "fast3"]) {
    workers.push(
      await startWorker(server, {
        name,
        heartbeatData,
        actions: { get_markets: handler(name === "slow") },
      }),
    );
  }
  await using client = await connectClient(server.requesterUrl);
  await waitFor(
    () => server.broker.workers().every((w) => w.upstream !== undefined),
    "every worker to report its upstream",
  );
  // Fresh codes: none is in anyone's cache, so any worker may take any of them.
  const items = Array.from({ length: 200 }, (_, i) => ({
    code: String(600000 + i),
  }));
  if (streamed) {
    const seen = new Set<number>();
    const stream = client.stream("get_markets", items);
    for await (const { index, result } of stream) {
      assert.equal((result as { success: boolean }).success, true);
      seen.add(index);
    }
    assert.equal((await stream.answer).success, true);
    assert.equal(seen.size, 200);
  } else {
    const answer = await client.request("get_markets", items);
    assert.equal(answer.success, true);
    const results = (answer.data as { results: { success: boolean }[] })
      .results;
    assert.equal(results.length, 200);
    assert.ok(results.every((r) => r.success));
  }
  assert.equal(served.slow + served.fast, 200);
  // Rendezvous alone gives the slow one 39 of these codes. It is sent two chunks (16 items)
  // at a time, and the fast ones drain their own queues, then the rest of its.
  assert.ok(
    served.slow <= 25,
    `slow served ${served.slow}, the fast ones ${served.fast}`,
  );
}

Deno.test("batch - streamed: a worker that ran dry takes items from a slower worker's queue", () =>
  ranDry(true));

Deno.test("batch - one answer: a worker that ran dry takes items from a slower worker's queue", () =>
  ranDry(false));

Deno.test("batch - a worker that reports its upstream reports it on registering, not a heartbeat interval later", async () => {
  await using server = startTestServer({ heartbeatIntervalMs: 60_000 });
  await using _worker = await startWorker(server, {
    name: "reports",
    heartbeatData: () => ({
      upstream: { hosts: { "quotes.example": { cooldown_until: 0, rate: 7 } } },
    }),
    actions: { get_markets: () => [] },
  });
  await waitFor(
    () =>
      server.broker.workers()[0]?.upstream?.hosts["quotes.example"]?.rate ===
        7,
    "the worker's upstream report",
  );
});

Deno.test("batch - a worker's served count takes each batch item as one request", async () => {
  await withPool(
    [stubMarkets("a"), stubMarkets("b")],
    async (server, client) => {
      const items = CODES.map((code) => ({ symbol_type: "etf", code }));
      const answer = await client.request("get_markets", items);
      assert.equal(answer.success, true);
      const served = server.broker.workers().map((w) => w.served);
      assert.equal(served.reduce((a, b) => a + b, 0), CODES.length);
      assert.ok(served.every((n) => n > 1), `served ${served}`);
      assert.deepEqual(server.broker.workers().map((w) => w.failures), [0, 0]);
    },
  );
});

Deno.test("batch - on the last round a failed item is final: not counted as re-sent, its worker not blocked", async () => {
  const tried: string[] = [];
  const refusing = (name: string): ActionHandler => (params) => {
    tried.push(name);
    return blockedItems(params);
  };
  await withPool(
    [refusing("w0"), refusing("w1"), refusing("w2")],
    async (server, client, workers) => {
      // Three rounds (the first and two re-sends), one worker each: every one refuses.
      const answer = await client.request("get_markets", [{ code: "510300" }]);
      assert.equal(answer.success, true, answer.error ?? "");
      const data = answer.data as {
        results: {
          success: boolean;
          error_code: string;
          processed_by: string;
        }[];
        distributed: { errors: string[] | null };
      };
      assert.equal(tried.length, 3, `tried on ${tried.join(", ")}`);
      assert.equal(new Set(tried).size, 3, "each round takes another worker");
      const [result] = data.results;
      assert.equal(result.success, false);
      assert.equal(result.error_code, "UPSTREAM_BLOCKED");
      const ids = workers.map(idOf);
      const last = result.processed_by;
      assert.ok(ids.includes(last));
      const resent = (data.distributed.errors ?? []).filter((e) =>
        e.includes("re-sent")
      );
      assert.equal(resent.length, 2, resent.join("; "));
      assert.ok(
        resent.every((e) => !e.includes(`worker ${last} `)),
        `the last round's failure counts as re-sent: ${resent.join("; ")}`,
      );
      const registry = server.broker.dispatcher.registry;
      for (const id of ids) {
        assert.equal(
          registry.get(id)?.blocked,
          id !== last,
          id === last
            ? "the last round's worker is blocked, though nothing went to another"
            : `worker ${id} was not blocked after its upstream refused`,
        );
      }
    },
  );
});
