import assert from "node:assert/strict";
import {
  answerOf,
  connectClient,
  group,
  RawPeer,
  startTestServer,
  startWorker,
  type TestWorker,
  waitFor,
} from "./_helpers.ts";
import type { ActionHandler } from "../lib/action.ts";

type Item = { code: string };

Deno.test("batch - a worker that dies mid-chunk loses only its unfinished items; streamed ones stand", async () => {
  await using server = startTestServer();
  // Worker A is scripted: it streams half of its chunk back, then vanishes.
  await using a = await RawPeer.open(server.workerUrl);
  const { data: hello } = await a.envelope("connect");
  a.sendEnvelope("connect", {
    name: "a",
    actions: ["get_markets"],
    max_concurrency: 4,
  });
  await waitFor(() => server.broker.workers().some((w) => w.registered));

  await using client = await connectClient(server.requesterUrl);
  const items = ["510300", "510500", "159915", "588000", "512880", "512690"]
    .map((code) => ({
      symbol_type: "etf",
      code,
    }));
  const answer = answerOf(
    client.request("get_markets", items, { timeout: 10 }),
    "the batch",
    15_000,
  );

  const request = await a.envelope("request");
  assert.equal(request.data.action, "get_markets");
  assert.equal(request.data.stream, true, "the broker asks for streamed items");
  assert.deepEqual(
    request.data.params.map((p: Item) => p.code),
    items.map((i) => i.code),
  );
  for (const index of [0, 1, 2]) {
    a.sendEnvelope("progress", {
      request_id: request.msg_id,
      done: index + 1,
      total: 6,
      item: {
        index,
        result: { success: true, code: items[index].code, data: [], by: "a" },
      },
    });
  }

  // Worker B is real, and counts what it is asked for.
  const asked: string[][] = [];
  await using _b = await startWorker(server, {
    name: "b",
    actions: {
      get_markets: (params) => {
        const list = params as Item[];
        asked.push(list.map((p) => p.code));
        return list.map((p) => ({
          success: true,
          code: p.code,
          data: [],
          by: "b",
        }));
      },
    },
  });
  // Let the streamed items reach the broker before A dies.
  await new Promise((r) => setTimeout(r, 50));
  a.socket.terminate();
  const done = await answer;
  assert.equal(done.success, true, done.error ?? "");
  const data = done.data as {
    results: { code: string; by: string; processed_by: string }[];
    summary: { total: number; success: number };
  };
  assert.deepEqual(data.results.map((r) => r.code), items.map((i) => i.code));
  assert.deepEqual(data.results.map((r) => r.by), [
    "a",
    "a",
    "a",
    "b",
    "b",
    "b",
  ]);
  assert.equal(data.results[0].processed_by, hello.client_id);
  assert.deepEqual(
    asked,
    [["588000", "512880", "512690"]],
    "B got only the unfinished items",
  );
  assert.deepEqual(data.summary, { total: 6, success: 6, failed: 0 });
});

Deno.test("batch - a worker that streams every item still yields the whole answer, in order", async () => {
  await using server = startTestServer();
  await using _worker = await startWorker(server, {
    actions: {
      get_markets: (params, ctx) => {
        const list = params as Item[];
        const results = list.map((p) => ({
          success: true,
          code: p.code,
          data: [],
        }));
        results.forEach((result, index) =>
          ctx.progress?.(index + 1, list.length, { index, result })
        );
        return results;
      },
    },
  });
  await using client = await connectClient(server.requesterUrl);
  const items = Array.from(
    { length: 40 },
    (_, i) => ({
      symbol_type: "etf",
      code: `5100${String(i).padStart(2, "0")}`,
    }),
  );
  const answer = await client.request("get_markets", items);
  const results = (answer.data as { results: Item[] }).results;
  assert.deepEqual(results.map((r) => r.code), items.map((i) => i.code));
});

/**
 * A worker whose items wait, each, until the test lets it go (standing for its rate-limit slot),
 * and that streams each one back as it goes. `held` counts what it holds now.
 */
function heldWorker(bytes: number) {
  const waiting: (() => void)[] = [];
  const state = { received: 0, waiting };
  const handler: ActionHandler = (params, ctx) => {
    const list = params as Item[];
    state.received += list.length;
    return Promise.all(
      list.map((item, index) =>
        new Promise<unknown>((resolve) => {
          waiting.push(() => {
            const result = {
              success: true,
              code: item.code,
              // Daily histories of ten years are about this large as frames.
              data: [{ date: "2025-01-02", note: "x".repeat(bytes) }],
            };
            ctx.progress?.(index + 1, list.length, { index, result });
            resolve(result);
          });
        })
      ),
    );
  };
  return { state, handler, release: () => waiting.shift()?.() };
}

Deno.test("batch - streamed, rate-limited workers: none idles while items wait, and none holds a long tail", async () => {
  await using server = startTestServer({ heartbeatIntervalMs: 50 });
  const names = ["a", "b", "c"];
  const held = names.map(() => heldWorker(200_000));
  await using workers = group<TestWorker>();
  for (const [i, name] of names.entries()) {
    workers.push(
      await startWorker(server, {
        name,
        heartbeatData: () => ({
          upstream: {
            hosts: { "quotes.example": { cooldown_until: 0, rate: 2 } },
          },
        }),
        actions: { get_markets: held[i].handler },
      }),
    );
  }
  await waitFor(
    () => server.broker.workers().every((w) => w.upstream !== undefined),
    "every worker to report its upstream",
  );
  await using client = await connectClient(server.requesterUrl);
  const total = 60;
  const items = Array.from({ length: total }, (_, i) => ({
    symbol_type: "etf",
    code: String(510000 + i),
  }));
  const seen = new Set<number>();
  const stream = client.stream("get_markets", items, { timeout: 120 });
  const reading = (async () => {
    for await (const { index } of stream) seen.add(index);
    return await stream.answer;
  })();
  // Awaited below; when a check fails first, its error is the one to report.
  reading.catch(() => {});
  const released = names.map(() => 0);
  const holding = (i: number) => held[i].state.received - released[i];
  const handedOut = () => held.reduce((s, h) => s + h.state.received, 0);
  try {
    // Only worker a's items are let go: b and c hold theirs, as workers whose slots are later.
    // Each of a's items is a slot that must not pass idle while the batch has items left.
    while (handedOut() < total) {
      await waitFor(
        () => handedOut() === total || names.every((_, i) => holding(i) > 0),
        `every worker to hold an item while ${
          total - handedOut()
        } wait (held: ${names.map((_, i) => holding(i)).join(", ")})`,
        20_000,
      );
      if (handedOut() === total) break;
      held[0].release();
      released[0]++;
    }
    // Nothing waits: b and c hold only what they can start within about a second (2/s), so
    // the batch ends about one fetch after a runs out.
    for (const i of [1, 2]) {
      assert.ok(
        holding(i) <= 2,
        `${names[i]} holds ${holding(i)} items at the end`,
      );
    }
  } finally {
    for (const h of held) while (h.state.waiting.length > 0) h.release();
  }
  const answer = await reading;
  assert.equal(answer.success, true, answer.error ?? "");
  assert.equal(seen.size, total);
});

Deno.test("batch - a null where the final answer says an item was streamed, but no report came, is re-sent, never a success", async () => {
  await using server = startTestServer();
  let calls = 0;
  await using _worker = await startWorker(server, {
    actions: {
      get_markets: (params) => {
        calls++;
        const list = params as Item[];
        // The first answer stands for one whose streamed reports were lost on the way: the
        // items it claims to have streamed are null, and no report ever arrived.
        return list.map((p, i) =>
          calls === 1 && i % 2 === 1
            ? null
            : { success: true, code: p.code, data: [], call: calls }
        );
      },
    },
  });
  await using client = await connectClient(server.requesterUrl);
  const items = ["510300", "510500", "159915", "588000"].map((code) => ({
    symbol_type: "etf",
    code,
  }));
  const answer = await client.request("get_markets", items);
  assert.equal(answer.success, true, answer.error ?? "");
  const data = answer.data as {
    results: ({ code: string; success: boolean; call: number } | null)[];
    summary: { total: number; success: number };
  };
  assert.ok(data.results.every((r) => r !== null), "no null item");
  assert.deepEqual(data.results.map((r) => r!.code), items.map((i) => i.code));
  assert.deepEqual(data.results.map((r) => r!.call), [1, 2, 1, 2]);
  assert.deepEqual(data.summary, { total: 4, success: 4, failed: 0 });
});
