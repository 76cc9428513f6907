// The HTTP API on the requester port, over real HTTP against a server with real workers on the
// offline demo market provider.

import assert from "node:assert/strict";
import { createMarketService } from "../lib/market/mod.ts";
import { BAR_FIELDS } from "../lib/market/types.ts";
import { barColumns } from "../lib/broker/http_api.ts";
import { renderMarketFile } from "../lib/requester/market_files.ts";
import { startFakeEastmoney } from "./_fake_eastmoney.ts";
import type { ActionContext } from "../lib/action.ts";
import {
  releasing,
  startTestServer,
  startWorker,
  type TestServer,
  within,
} from "./_helpers.ts";

const TOKEN = "api-token";

async function marketServer(
  options: Parameters<typeof startTestServer>[0] = {},
  marketOptions: Parameters<typeof createMarketService>[0] = {
    providers: ["demo"],
  },
) {
  await using stack = new AsyncDisposableStack();
  const server = stack.use(
    startTestServer({ requesterToken: TOKEN, ...options }),
  );
  const market = stack.use(releasing(
    createMarketService(marketOptions),
    (m) => m.close(),
  ));
  stack.use(
    await startWorker(server, {
      name: "demo",
      actions: market.actions(),
    }),
  );
  const release = stack.move();
  return {
    server,
    base: `http://127.0.0.1:${server.requesterPort}`,
    [Symbol.asyncDispose]: () => release.disposeAsync(),
  };
}

const auth = { authorization: `Bearer ${TOKEN}` };

function parseCsv(text: string): Record<string, string>[] {
  const [header, ...rows] = text.trimEnd().split("\n");
  const columns = header.split(",");
  return rows.map((row) => {
    const cells = row.split(",");
    assert.equal(cells.length, columns.length, row);
    return Object.fromEntries(columns.map((c, i) => [c, cells[i]]));
  });
}

Deno.test("http api - GET /v1/market gives CSV and JSON of the same bars", async () => {
  await using s = await marketServer();
  const query =
    "symbol_type=etf&code=510300&start_date=2025-09-01&end_date=2025-09-30&adjust=qfq";
  const csv = await fetch(`${s.base}/v1/market?${query}&format=csv`, {
    headers: auth,
  });
  assert.equal(csv.status, 200);
  assert.match(csv.headers.get("content-type")!, /^text\/csv/);
  const rows = parseCsv(await csv.text());
  const json = await fetch(`${s.base}/v1/market?${query}&format=json`, {
    headers: auth,
  });
  assert.equal(json.status, 200);
  const result = await json.json();
  assert.equal(result.success, true);
  assert.equal(result.code, "510300");
  assert.ok(result.data.length > 15);
  assert.equal(rows.length, result.data.length);
  assert.deepEqual(
    Object.keys(rows[0]).slice(0, 6),
    ["date", "open", "high", "low", "close", "volume"],
  );
  for (let i = 0; i < rows.length; i++) {
    assert.equal(rows[i].date, result.data[i].date);
    assert.equal(Number(rows[i].close), result.data[i].close);
    assert.equal(Number(rows[i].volume), result.data[i].volume);
  }
  // The token as a query parameter works too (pandas.read_csv(url) cannot set headers).
  const viaQuery = await fetch(
    `${s.base}/v1/market?${query}&format=csv&token=${TOKEN}`,
  );
  assert.equal(viaQuery.status, 200);
  assert.equal(parseCsv(await viaQuery.text()).length, rows.length);
});

Deno.test("http api - errors keep the WebSocket API's texts, with a fitting HTTP status", async () => {
  await using s = await marketServer({ maxRequesterFrameBytes: 2000 });
  const get = async (path: string, headers: HeadersInit = auth) => {
    const res = await fetch(`${s.base}${path}`, { headers });
    return { status: res.status, body: await res.json() };
  };
  const post = async (path: string, body: string) => {
    const res = await fetch(`${s.base}${path}`, {
      method: "POST",
      headers: auth,
      body,
    });
    return { status: res.status, body: await res.json() };
  };

  let r = await get("/v1/market?symbol_type=etf&code=510300", {});
  assert.equal(r.status, 401);
  assert.equal(r.body.error_code, "UNAUTHORIZED");
  r = await get("/v1/market?symbol_type=etf&code=510300", {
    authorization: "Bearer wrong",
  });
  assert.equal(r.status, 401);

  r = await get("/v1/market?symbol_type=etf&code=51030x");
  assert.equal(r.status, 400);
  assert.equal(r.body.success, false);
  assert.equal(r.body.error_code, "INVALID_PARAMS");
  assert.match(r.body.error, /Invalid code "51030x"/);

  r = await get("/v1/market?symbol_type=etf&code=510300&format=xlsx");
  assert.equal(r.status, 400);
  assert.match(r.body.error, /Invalid format 'xlsx': expected json or csv/);

  r = await post("/v1/request", '{"command": ');
  assert.equal(r.status, 400);
  assert.equal(r.body.error_code, "INVALID_JSON");
  assert.match(r.body.error, /^Cannot parse frame as JSON/);

  r = await post("/v1/request", '{"command": "no_such_command"}');
  assert.equal(r.status, 503);
  assert.equal(r.body.error, "No available workers");

  r = await post("/v1/request", JSON.stringify({ command: "x".repeat(3000) }));
  assert.equal(r.status, 413);
  assert.equal(r.body.error_code, "FRAME_TOO_LARGE");

  r = await post("/v1/request", '{"command": "get_time", "timeout": "soon"}');
  assert.equal(r.status, 400);
  assert.equal(r.body.error_code, "INVALID_FIELD");

  const wrongMethod = await fetch(`${s.base}/v1/request`, { headers: auth });
  assert.equal(wrongMethod.status, 405);
  assert.equal(wrongMethod.headers.get("allow"), "POST");
  await wrongMethod.body?.cancel();
  const missing = await fetch(`${s.base}/v1/nothing`, { headers: auth });
  assert.equal(missing.status, 404);
  assert.match(await missing.text(), /GET \/v1\/market/);

  // Nothing was lost: the server still answers.
  r = await post("/v1/request", '{"command": "get_time", "request_id": "t1"}');
  assert.equal(r.status, 200);
  assert.equal(r.body.request_id, "t1");
  assert.equal(r.body.success, true);
});

Deno.test("http api - POST /v1/request gives the WebSocket answer", async () => {
  await using s = await marketServer();
  const res = await fetch(`${s.base}/v1/request`, {
    method: "POST",
    headers: { ...auth, "content-type": "application/json" },
    body: JSON.stringify({
      request_id: "abc",
      command: "get_markets",
      data: [
        { symbol_type: "etf", code: "510300", start_date: "2025-10-01" },
        { symbol_type: "etf", code: "zz" },
      ],
    }),
  });
  assert.equal(res.status, 200);
  const answer = await res.json();
  assert.equal(answer.request_id, "abc");
  assert.equal(answer.success, true);
  assert.equal(answer.processed_by, "distributed_1_workers");
  assert.equal(answer.data.results.length, 2);
  assert.equal(answer.data.results[0].success, true);
  assert.equal(answer.data.results[1].error_code, "INVALID_PARAMS");
  assert.deepEqual(answer.data.summary, { total: 2, success: 1, failed: 1 });
});

Deno.test("http api - batches stream as JSON lines and as one CSV table", async () => {
  await using s = await marketServer();
  const items = [
    { symbol_type: "etf", code: "510300", start_date: "2025-10-01" },
    { symbol_type: "etf", code: "zz" },
    { symbol_type: "etf", code: "159915", start_date: "2025-10-10" },
  ];
  const lines = await fetch(`${s.base}/v1/markets`, {
    method: "POST",
    headers: auth,
    body: JSON.stringify(items),
  });
  assert.equal(lines.status, 200);
  assert.match(lines.headers.get("content-type")!, /ndjson/);
  const frames = (await lines.text()).trimEnd().split("\n").map((l) =>
    JSON.parse(l)
  );
  const itemFrames = frames.filter((f) => "index" in f);
  assert.deepEqual(itemFrames.map((f) => f.index).sort(), [0, 1, 2]);
  assert.equal(itemFrames.find((f) => f.index === 1).result.success, false);
  const final = frames.at(-1);
  assert.equal(final.success, true);
  assert.deepEqual(final.data.summary, { total: 3, success: 2, failed: 1 });
  assert.equal(final.data.results, undefined);

  const csv = await fetch(`${s.base}/v1/markets?format=csv`, {
    method: "POST",
    headers: auth,
    body: JSON.stringify({ markets: items }),
  });
  assert.equal(csv.status, 200);
  const rows = parseCsv(await csv.text());
  const codes = new Set(rows.map((r) => r.code));
  assert.deepEqual([...codes].sort(), ["159915", "510300"]);
  const first = itemFrames.find((f) => f.index === 0).result.data;
  assert.equal(rows.filter((r) => r.code === "510300").length, first.length);

  // POST /v1/request with "stream": true gives the WebSocket frames as lines.
  const streamed = await fetch(`${s.base}/v1/request`, {
    method: "POST",
    headers: auth,
    body: JSON.stringify({
      request_id: "s1",
      command: "get_markets",
      stream: true,
      data: items.slice(0, 1),
    }),
  });
  const sFrames = (await streamed.text()).trimEnd().split("\n").map((l) =>
    JSON.parse(l)
  );
  assert.equal(sFrames.at(-1).request_id, "s1");
  assert.equal(sFrames.at(-1).success, true);
  assert.equal(sFrames.filter((f) => "index" in f).length, 1);
});

Deno.test("http api - a batch that fails before any item is a plain error with its status", async () => {
  await using server: TestServer = startTestServer();
  const base = `http://127.0.0.1:${server.requesterPort}`;
  // No worker at all.
  const res = await fetch(`${base}/v1/markets?format=csv`, {
    method: "POST",
    body: JSON.stringify([{ symbol_type: "etf", code: "510300" }]),
  });
  assert.equal(res.status, 503);
  const body = await res.json();
  assert.equal(body.error, "No available workers");
  const bad = await fetch(`${base}/v1/markets`, {
    method: "POST",
    body: JSON.stringify({ not: "a list" }),
  });
  assert.equal(bad.status, 400);
  assert.match((await bad.json()).error, /must be a list of market params/);
});

Deno.test("http api - a client that stops reading a stream cancels its request on the worker", async () => {
  await using server: TestServer = startTestServer();
  const cancelled = Promise.withResolvers<void>();
  await using _worker = await startWorker(server, {
    actions: {
      slow: (_params: unknown, ctx: ActionContext) =>
        new Promise((_, reject) => {
          ctx.progress?.(1, 10);
          ctx.signal.addEventListener("abort", () => {
            cancelled.resolve();
            reject(ctx.signal.reason);
          });
        }),
    },
  });
  const res = await fetch(
    `http://127.0.0.1:${server.requesterPort}/v1/request?format=ndjson`,
    {
      method: "POST",
      body: '{"command": "slow", "timeout": 60, "progress": true}',
    },
  );
  assert.equal(res.status, 200);
  const reader = res.body!.getReader();
  const first = new TextDecoder().decode((await reader.read()).value);
  assert.deepEqual(JSON.parse(first).progress, { done: 1, total: 10 });
  await reader.cancel();
  await within(cancelled.promise, "the request to be cancelled");
});

Deno.test("http api - the status is 2xx exactly when the body says success, a failed get_market inside a successful answer included", async () => {
  await using upstream = await startFakeEastmoney({
    synthetic: true,
    unknownCodes: ["510999"],
  });
  await using s = await marketServer({}, {
    eastmoneyUrl: upstream.url,
    rateLimit: 0,
    retries: 0,
  });
  const post = async (frame: unknown) => {
    const res = await fetch(`${s.base}/v1/request`, {
      method: "POST",
      headers: auth,
      body: JSON.stringify(frame),
    });
    return { status: res.status, body: await res.json() };
  };
  const market = (code: string) => ({
    request_id: `m-${code}`,
    command: "get_market",
    data: { symbol_type: "etf", code, start_date: "2024-01-01" },
  });

  const unknown = await post(market("510999"));
  assert.equal(unknown.status, 404);
  assert.equal(unknown.body.success, false);
  assert.equal(unknown.body.error_code, "UNKNOWN_CODE");
  assert.match(unknown.body.error, /510999/);
  assert.equal(unknown.body.request_id, "m-510999");
  // The result is still there as the worker gave it.
  assert.equal(unknown.body.data.success, false);
  assert.equal(unknown.body.data.error_code, "UNKNOWN_CODE");

  const invalid = await post(market("51030x"));
  assert.equal(invalid.status, 400);
  assert.equal(invalid.body.success, false);
  assert.equal(invalid.body.error_code, "INVALID_PARAMS");

  // The same as JSON lines: a failure known before the first line is a plain error.
  const lines = await fetch(`${s.base}/v1/request?format=ndjson`, {
    method: "POST",
    headers: auth,
    body: JSON.stringify(market("510999")),
  });
  assert.equal(lines.status, 404);
  assert.equal((await lines.json()).success, false);

  const ok = await post(market("510300"));
  assert.equal(ok.status, 200);
  assert.equal(ok.body.success, true);
  assert.equal(ok.body.data.success, true);

  // A batch ran, whatever its items did: 200, and the items say which failed.
  const batch = await post({
    command: "get_markets",
    data: [market("510300").data, market("510999").data],
  });
  assert.equal(batch.status, 200);
  assert.equal(batch.body.success, true);
  assert.deepEqual(batch.body.data.summary, {
    total: 2,
    success: 1,
    failed: 1,
  });

  for (const r of [unknown, invalid, ok, batch]) {
    assert.equal(r.status >= 200 && r.status < 300, r.body.success === true);
  }
});

Deno.test("http api - /v1/market CSV, batch CSV and market files share one column order", async () => {
  await using s = await marketServer();
  const query = "symbol_type=etf&code=510300&start_date=2025-09-01&adjust=qfq";
  const csv = await (await fetch(`${s.base}/v1/market?${query}&format=csv`, {
    headers: auth,
  })).text();
  const json = await (await fetch(`${s.base}/v1/market?${query}`, {
    headers: auth,
  })).json();
  const header = csv.split("\n")[0].split(",");
  const inOrder = (columns: string[]) =>
    columns.filter((c) => (BAR_FIELDS as string[]).includes(c));
  assert.deepEqual(header.slice(0, 6), [
    "date",
    "open",
    "high",
    "low",
    "close",
    "volume",
  ]);
  assert.deepEqual(
    inOrder(header),
    BAR_FIELDS.filter((f) => header.includes(f)),
  );
  const file = renderMarketFile(json, "csv").split("\n")[0].split(",");
  assert.deepEqual(file, [...BAR_FIELDS]);
  assert.deepEqual(file.filter((c) => header.includes(c)), header);
  const batch = await (await fetch(`${s.base}/v1/markets?format=csv`, {
    method: "POST",
    headers: auth,
    body: JSON.stringify([{ symbol_type: "etf", code: "510300" }]),
  })).text();
  assert.deepEqual(batch.split("\n")[0].split(","), ["code", ...header]);

  // A provider that lists its fields in another order is written in the one order all the same.
  assert.deepEqual(
    barColumns([{
      turnover: 1,
      close: 1,
      extra: "x",
      date: "2025-01-02",
      low: 1,
      amount: 2,
      high: 1,
      volume: 3,
      open: 1,
    }]),
    [
      "date",
      "open",
      "high",
      "low",
      "close",
      "volume",
      "amount",
      "turnover",
      "extra",
    ],
  );
});
