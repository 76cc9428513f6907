// Streamed batch items are spliced: the worker's result text goes to the requester inside the
// item frame, not parsed and stringified again. The frames must be the bytes the re-encoding
// path gave, and every other path (one-frame answers, small items, failed items) unchanged.

import assert from "node:assert/strict";
import { parseSpliced, RawResult } from "../lib/broker/raw_result.ts";
import {
  connectClient,
  RawPeer,
  startTestServer,
  startWorker,
} from "./_helpers.ts";

interface Item {
  symbol_type: string;
  code: string;
}

/** A get_market-like result: `bars` bars, some text not ASCII, numbers of every kind. */
function bars(code: string, count: number) {
  return {
    success: true,
    code,
    name: '沪深300ETF "quoted" \\ back',
    data: Array.from({ length: count }, (_, i) => ({
      date: `2020-01-${String(1 + (i % 28)).padStart(2, "0")}`,
      open: 3.1 + i / 1000,
      close: -0.5e-7 * (i + 1),
      volume: 123456789 + i,
      note: i % 7 === 0 ? null : "a,b}c]",
    })),
  };
}

Deno.test("splice - streamed item frames are byte for byte what re-encoding gave, large and small, successful and failed", async () => {
  await using server = startTestServer();
  const sizes = [0, 5, 400, 2000];
  await using worker = await startWorker(server, {
    actions: {
      get_markets: (params, ctx) => {
        const list = params as Item[];
        const results = list.map((p, i) =>
          i === 4
            ? { success: false, code: p.code, error: "upstream down", data: [] }
            : bars(p.code, sizes[i % sizes.length])
        );
        results.forEach((result, index) =>
          ctx.progress?.(index + 1, list.length, { index, result })
        );
        return results.map(() => null);
      },
    },
  });
  await using peer = await RawPeer.open(server.requesterUrl);
  const items = Array.from({ length: 9 }, (_, i) => ({
    symbol_type: "etf",
    code: `51030${i}`,
  }));
  const frames: string[] = [];
  peer.socket.on("message", (data: Uint8Array) => {
    const text = new TextDecoder().decode(data);
    if (text.includes('"item"')) frames.push(text);
  });
  peer.send({
    request_id: "b1",
    command: "get_markets",
    data: items,
    stream: true,
  });
  const final = await peer.next(
    (f) => f.request_id === "b1" && "success" in f,
    30_000,
  );
  assert.equal(final.success, true);
  assert.equal(frames.length, items.length);
  const id = (worker as unknown as { id?: string }).id;
  for (const text of frames) {
    const frame = JSON.parse(text);
    const index = frame.item.index as number;
    const expected = index === 4
      ? {
        success: false,
        code: items[4].code,
        error: "upstream down",
        data: [],
        processed_by: frame.item.result.processed_by,
      }
      : {
        ...bars(items[index].code, sizes[index % sizes.length]),
        processed_by: frame.item.result.processed_by,
      };
    assert.equal(typeof frame.item.result.processed_by, "string", `${id}`);
    // The bytes re-encoding gave: the same object through JSON.stringify.
    assert.equal(
      text,
      JSON.stringify({ request_id: "b1", item: { index, result: expected } }),
      `item ${index}`,
    );
  }
});

Deno.test("splice - a batch answered in one frame, and the library's stream, see the same results as before", async () => {
  await using server = startTestServer();
  await using _worker = await startWorker(server, {
    actions: {
      get_markets: (params, ctx) => {
        const list = params as Item[];
        const results = list.map((p) => bars(p.code, 800));
        results.forEach((result, index) =>
          ctx.progress?.(index + 1, list.length, { index, result })
        );
        return results.map(() => null);
      },
    },
  });
  await using client = await connectClient(server.requesterUrl);
  const items = Array.from({ length: 4 }, (_, i) => ({
    symbol_type: "etf",
    code: `15991${i}`,
  }));
  const answer = await client.request("get_markets", items);
  const results = (answer.data as { results: Record<string, unknown>[] })
    .results;
  results.forEach((r, i) => {
    const { processed_by, ...rest } = r;
    assert.equal(typeof processed_by, "string");
    assert.deepEqual(rest, bars(items[i].code, 800));
  });
  const stream = client.stream("get_markets", items);
  const seen: unknown[] = [];
  for await (const item of stream) {
    const { processed_by: _, ...rest } = item.result as Record<string, unknown>;
    seen[item.index] = rest;
  }
  assert.deepEqual(seen, items.map((i) => bars(i.code, 800)));
});

Deno.test("parseSpliced() takes large successful item results out of lone and batched envelopes, and leaves everything else parsed", () => {
  const big = JSON.stringify(bars("510300", 500));
  const small = JSON.stringify(bars("510301", 1));
  const failed = JSON.stringify({ success: false, error: "x".repeat(20_000) });
  const envelope = (index: number, result: string) =>
    `{"type":"progress","msg_id":"m${index}","timestamp":1,"data":{"request_id":"r","done":${index},"total":9,"item":{"index":${index},"result":${result}}}}`;
  const lone = parseSpliced(envelope(0, big)) as {
    data: { item: { result: unknown } };
  };
  assert.ok(lone.data.item.result instanceof RawResult);
  assert.equal((lone.data.item.result as RawResult).text, big);
  const batched = parseSpliced(
    `[${envelope(0, small)}, ${envelope(1, big)},${envelope(2, failed)} , ${
      envelope(3, big)
    }]`,
  ) as { data: { item: { result: unknown } } }[];
  assert.deepEqual(batched[0].data.item.result, JSON.parse(small));
  assert.equal((batched[1].data.item.result as RawResult).text, big);
  assert.deepEqual(batched[2].data.item.result, JSON.parse(failed));
  assert.equal((batched[3].data.item.result as RawResult).text, big);
  // Nothing to splice: parsed as usual by the caller.
  assert.equal(parseSpliced(envelope(0, small)), undefined);
  assert.equal(
    parseSpliced(`{"type":"response","data":{"result":${big}}}`),
    undefined,
  );
  // Not JSON where a splice would not look, or inside the result: never spliced.
  assert.throws(() =>
    parseSpliced(envelope(0, big).replace('"total":9', '"total":9x'))
  );
  assert.equal(
    parseSpliced(envelope(0, big.replace('"open":3.1', '"open":3.1#'))),
    undefined,
  );
  // A spliced result annotated as the batch does it, and serialized as a value.
  const raw = new RawResult(big);
  const annotated = raw.annotated("w1") as RawResult;
  assert.deepEqual(JSON.parse(annotated.text), {
    ...JSON.parse(big),
    processed_by: "w1",
  });
  assert.equal(
    JSON.stringify({ r: annotated }),
    JSON.stringify({ r: JSON.parse(annotated.text) }),
  );
});
