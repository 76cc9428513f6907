import assert from "node:assert/strict";
import {
  answerOf,
  connectClient,
  RawPeer,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";

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
