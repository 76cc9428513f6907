import assert from "node:assert/strict";
import { startFakeEastmoney } from "./_fake_eastmoney.ts";
import {
  connectClient,
  group,
  RawPeer,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";
import { marketWorkers } from "./_procs.ts";

type Item = { symbol_type: string; code: string };

function etfs(n: number): Item[] {
  const prefixes = ["510", "512", "159", "588", "513", "515"];
  return Array.from({ length: n }, (_, i) => ({
    symbol_type: "etf",
    code: `${prefixes[i % prefixes.length]}${
      String(100 + Math.floor(i / prefixes.length)).padStart(3, "0")
    }`,
  }));
}

function echoMarkets(by: string) {
  return {
    get_markets: (params: unknown) =>
      (params as Item[]).map((p) => ({
        success: true,
        code: p.code,
        data: [{ date: "2025-01-02", close: 1 }],
        by,
      })),
  };
}

Deno.test("stream - a streamed 300-item batch over worker processes, one SIGKILLed mid-way, yields every item exactly once", async () => {
  await using upstream = await startFakeEastmoney({
    synthetic: true,
    syntheticEnd: "2015-12-31",
    latencyMs: 30,
  });
  // A worker token of its own: a worker process of another suite running on this machine,
  // retrying a port the system has since handed to this server, must not join this pool.
  const token = crypto.randomUUID();
  await using server = startTestServer({ workerToken: token });
  await using workers = group(
    marketWorkers(server.workerUrl, upstream.url, 3, [
      "--concurrency",
      "4",
      "--token",
      token,
    ]),
  );
  await waitFor(
    () => server.broker.workers().filter((w) => w.registered).length === 3,
    "three workers",
    60_000, // three process starts on a loaded machine
  );
  await using client = await connectClient(server.requesterUrl);
  const items = etfs(300);
  const seen = new Map<number, number>();
  let killed = false;
  const batch = client.stream("get_markets", items, { timeout: 60 });
  for await (const { index, result } of batch) {
    seen.set(index, (seen.get(index) ?? 0) + 1);
    const r = result as { success: boolean; code: string; data: unknown[] };
    assert.equal(r.success, true, JSON.stringify(r));
    assert.equal(r.code, items[index].code, `item ${index} is another's`);
    assert.ok(r.data.length > 0);
    if (!killed && seen.size >= 50) {
      killed = true;
      workers[1].kill("SIGKILL");
    }
  }
  assert.equal(killed, true, "the batch ended before a worker was killed");
  const answer = await batch.answer;
  assert.equal(answer.success, true, answer.error ?? "");
  const data = answer.data as Record<string, unknown>;
  assert.equal(
    "results" in data,
    false,
    "a streamed answer repeats no results",
  );
  assert.deepEqual(data.summary, { total: 300, success: 300, failed: 0 });
  assert.equal(seen.size, 300);
  assert.ok(
    [...seen.values()].every((n) => n === 1),
    "an item came twice",
  );
});

Deno.test("stream - item frames carry request_id, index and result, and the original one-frame format stands without stream", async () => {
  await using server = startTestServer();
  await using _worker = await startWorker(server, {
    actions: echoMarkets("w"),
  });
  await using peer = await RawPeer.open(server.requesterUrl);
  const items = etfs(5);
  peer.send({
    request_id: "s1",
    command: "get_markets",
    data: items,
    stream: true,
  });
  const final = await peer.next((f) => f.request_id === "s1" && "success" in f);
  const frames = peer.received.filter((f) =>
    f.request_id === "s1" && "item" in f
  );
  assert.equal(frames.length, 5);
  for (const f of frames) {
    assert.deepEqual(Object.keys(f).sort(), ["item", "request_id"]);
    assert.equal(f.item.result.code, items[f.item.index].code);
  }
  assert.equal(final.success, true);
  assert.deepEqual(Object.keys(final.data).sort(), [
    "distributed",
    "summary",
  ]);
  assert.deepEqual(final.data.summary, { total: 5, success: 5, failed: 0 });

  peer.send({
    request_id: "p1",
    command: "get_markets",
    data: { markets: items },
  });
  const plain = await peer.next((f) => f.request_id === "p1");
  assert.equal(plain.success, true);
  assert.deepEqual(
    plain.data.results.map((r: Item) => r.code),
    items.map((i) => i.code),
  );
  assert.equal(
    peer.received.filter((f) => f.request_id === "p1").length,
    1,
    "without stream: exactly one frame",
  );
});

Deno.test("stream - a one-frame answer past the answer limit fails clearly and names stream: true", async () => {
  await using server = startTestServer({ maxAnswerBytes: 2000 });
  await using _worker = await startWorker(server, {
    actions: echoMarkets("w"),
  });
  await using client = await connectClient(server.requesterUrl);
  const items = etfs(60);
  const answer = await client.request("get_markets", items);
  assert.equal(answer.success, false);
  assert.equal(answer.error_code, "ANSWER_TOO_LARGE");
  assert.match(answer.error!, /"stream": true/);
  // The connection is still good, and the same batch streams fine.
  const codes: string[] = [];
  const batch = client.stream("get_markets", items);
  for await (const { result } of batch) {
    codes.push((result as Item).code);
  }
  assert.equal((await batch.answer).success, true);
  assert.deepEqual(codes.sort(), items.map((i) => i.code).sort());
});

Deno.test("stream - with no worker the streamed batch gets one answer, No available workers, and no items", async () => {
  await using server = startTestServer();
  await using client = await connectClient(server.requesterUrl);
  const batch = client.stream("get_markets", etfs(3));
  const got: unknown[] = [];
  for await (const item of batch) got.push(item);
  const answer = await batch.answer;
  assert.deepEqual(got, []);
  assert.equal(answer.success, false);
  assert.equal(answer.error, "No available workers");
});

Deno.test("stream - a connection lost mid-stream ends the iteration with ConnectionClosedError after the items that came", async () => {
  // A scripted server: one item, then the line drops.
  await using fake = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: () => {},
  }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (event) => {
      const { request_id } = JSON.parse(event.data);
      socket.send(JSON.stringify({
        request_id,
        item: { index: 0, result: { success: true, code: "510300" } },
      }));
      socket.close(1011, "gone");
    };
    return response;
  });
  await using client = await connectClient(`ws://127.0.0.1:${fake.addr.port}`);
  const got: number[] = [];
  const batch = client.stream("get_markets", etfs(2));
  await assert.rejects(
    async () => {
      for await (const { index } of batch) got.push(index);
    },
    (e: Error) => e.name === "ConnectionClosedError",
  );
  assert.deepEqual(got, [0]);
  await assert.rejects(batch.answer);
});

Deno.test("stream - a requester that reads slowly gets its items slowly instead of being dropped", async () => {
  // Items of ~20 KB against a 64 KiB unread limit: without pacing the server would drop it.
  await using server = startTestServer({ maxBufferedBytes: 64 * 1024 });
  const pad = "x".repeat(20_000);
  await using _worker = await startWorker(server, {
    actions: {
      get_markets: (params, ctx) => {
        const list = params as Item[];
        const results = list.map((p) => ({ success: true, code: p.code, pad }));
        results.forEach((result, index) =>
          ctx.progress?.(index + 1, list.length, { index, result })
        );
        return results.map(() => null);
      },
    },
  });
  await using client = await connectClient(server.requesterUrl);
  const items = etfs(200);
  const seen = new Set<number>();
  const batch = client.stream("get_markets", items, { timeout: 60 });
  for await (const { index } of batch) {
    seen.add(index);
    await new Promise((r) => setTimeout(r, 2));
  }
  const answer = await batch.answer;
  assert.equal(answer.success, true, answer.error ?? "");
  assert.equal(seen.size, 200);
  assert.equal(client.connected, true);
});
