// Items rendered straight from their frame's text give byte for byte what parsing gives.

import assert from "node:assert/strict";
import { renderMarketFile } from "../lib/requester/market_files.ts";
import { readItemText } from "../lib/requester/market_text.ts";
import { runMarketsJob } from "../lib/requester/markets_job.ts";
import { createMarketService } from "../lib/market/service.ts";
import { RequesterClient } from "../lib/requester/requester_client.ts";
import { startFakeEastmoney } from "./_fake_eastmoney.ts";
import { startTestServer, startWorker } from "./_helpers.ts";
import { parse } from "npm:csv-parse@7.0.3/sync";

const decode = (bytes: Uint8Array | undefined) =>
  bytes === undefined ? undefined : new TextDecoder().decode(bytes);

const frame = (result: unknown, index = 3) =>
  JSON.stringify({ request_id: "r1", item: { index, result } });

const bars = [
  {
    date: "2025-01-02",
    open: 3.5,
    high: 3.75,
    low: 3.25,
    close: 3.6,
    volume: 123456,
    amount: 98765432.1,
    amplitude: 1.23,
    change_pct: -0.45,
    change: -0.01,
    turnover: 0.56,
  },
  // Missing fields, nulls, numbers JavaScript prints its own way, unknown keys.
  {
    date: "2025-01-03",
    open: 1e-7,
    high: 1e21,
    low: -0,
    close: 12345678901234567890,
    volume: null,
    extra: { x: 1 },
  },
  // Text that needs CSV quoting or JSON unescaping, a boolean, a key written with an escape.
  {
    date: 'a,"b"\nc',
    open: 0.1,
    high: 2,
    low: "\u4e2d\u6587",
    close: true,
    volume: false,
    turnover: "x\\y",
  },
];

Deno.test("readItemText: CSV from the text equals renderMarketFile on the parsed result, every column style", () => {
  const result = {
    success: true,
    code: "600000",
    symbol_type: "stock",
    adjust: "qfq",
    data: bars,
  };
  // Written with the odd spacing and number forms other JSON writers use.
  const texts = [
    frame(result),
    JSON.stringify({ request_id: "r1", item: { index: 3, result } }, null, 2),
    frame(result).replace("98765432.1", "98765432.10").replace(
      "123456",
      "1.23456E5",
    ).replace('"date":"2025-01-03"', '"d\\u0061te":"2025-01-03"'),
  ];
  for (const text of texts) {
    const view = readItemText(text)!;
    assert.ok(view, text.slice(0, 80));
    const parsed = JSON.parse(text).item.result;
    assert.equal(view.index, 3);
    assert.equal(view.bars, 3);
    assert.deepEqual(view.result, {
      success: true,
      code: "600000",
      symbol_type: "stock",
      adjust: "qfq",
    });
    for (const columns of ["english", "akshare"] as const) {
      assert.equal(
        decode(view.csv(columns)),
        renderMarketFile(parsed, "csv", columns),
      );
      const symbol = { symbol_type: "stock", code: "600000" };
      for (const header of [true, false]) {
        assert.equal(
          decode(view.csv(columns, { symbol, header })),
          renderMarketFile(parsed, "csv", columns, { symbol, header }),
        );
      }
    }
  }
});

Deno.test("CSV round trip: every field kind comes back from both writers as it went in", () => {
  // One bar per field kind, each kind in the date column (the one text column) and in a number
  // column: what a worker in another language, or a CSV provider, may send.
  const kinds: [string, unknown, string][] = [
    ["plain text", "2025-01-02", "2025-01-02"],
    ["a comma", "2025,01,02", "2025,01,02"],
    ["a comma and text", "Kweichow Moutai, Inc", "Kweichow Moutai, Inc"],
    ["a quote", 'say "hi"', 'say "hi"'],
    ["a quote and a comma", 'a "b", c', 'a "b", c'],
    ["a line end", "a\nb", "a\nb"],
    ["a carriage return", "a\rb", "a\rb"],
    ["CJK", "贵州茅台", "贵州茅台"],
    ["an escaped CJK", "\u4e2d", "\u4e2d"],
    ["a backslash", "x\\y", "x\\y"],
    // An escape sends the writer down its slow path, which must quote the comma too.
    ["a backslash and a comma", "x\\y, z", "x\\y, z"],
    ["an integer", 123456, "123456"],
    ["a fraction", 3.75, "3.75"],
    ["a negative", -0.45, "-0.45"],
    ["a tiny number", 1e-7, "1e-7"],
    ["a huge number", 1e21, "1e+21"],
    ["true", true, "1"],
    ["false", false, ""],
    ["null", null, ""],
  ];
  for (const [name, value, expected] of kinds) {
    for (const field of ["date", "open"]) {
      const bar: Record<string, unknown> = {
        date: "2025-01-02",
        open: 1,
        high: 2,
        low: 0.5,
        close: 1.5,
        volume: 10,
      };
      bar[field] = value;
      const result = { success: true, code: "600000", data: [bar] };
      const written = {
        parsed: renderMarketFile(result, "csv"),
        bytes: decode(readItemText(frame(result))!.csv())!,
        "bytes, spaced": decode(
          readItemText(
            JSON.stringify(
              { request_id: "r1", item: { index: 3, result } },
              null,
              1,
            ),
          )!.csv(),
        )!,
      };
      for (const [writer, csv] of Object.entries(written)) {
        const rows = parse(csv, { columns: true }) as Record<string, string>[];
        assert.equal(rows.length, 1, `${name} in ${field}, ${writer}: ${csv}`);
        assert.equal(
          rows[0][field],
          expected,
          `${name} in ${field}, ${writer}: ${csv}`,
        );
        assert.equal(rows[0].volume, "10", `${name} in ${field}, ${writer}`);
      }
    }
  }
});

Deno.test("readItemText: an empty series and a failed item read the same as parsed", () => {
  const empty = readItemText(frame({ success: true, code: "1", data: [] }))!;
  assert.equal(empty.bars, 0);
  assert.equal(decode(empty.csv()), renderMarketFile({ data: [] }, "csv"));
  const failed = readItemText(
    frame({ success: false, error: "no", error_code: "UNKNOWN_CODE" }),
  )!;
  assert.deepEqual(failed.result, {
    success: false,
    error: "no",
    error_code: "UNKNOWN_CODE",
  });
  assert.equal(failed.bars, 0);
  assert.equal(failed.csv(), undefined);
});

Deno.test("readItemText: a bar holding an object or array is left to the full parse", () => {
  const view = readItemText(
    frame({ success: true, data: [{ date: "2025-01-02", open: [1] }] }),
  )!;
  assert.equal(view.bars, 1);
  assert.equal(view.csv(), undefined);
});

Deno.test("readItemText: anything but a valid item frame is undefined, never half read", () => {
  const good = frame({ success: true, data: bars });
  const bad = [
    good.slice(0, -1),
    good + "x",
    good.replace("2025-01-02", "2025-01-02\u0001"),
    good.replace("3.75", "03.75"),
    good.replace("3.75", "3."),
    good.replace("3.75", "3.75,"),
    good.replace('"index":3', '"index":"3"'),
    good.replace("\\n", "\\q"),
    JSON.stringify({ request_id: "r1", progress: { done: 1, total: 2 } }),
    JSON.stringify({ request_id: "r1", item: { index: 1, result: [1] } }),
    "[" + good + "]",
    "{".repeat(100) + "}".repeat(100),
  ];
  for (const text of bad) {
    let view;
    try {
      view = readItemText(text);
    } catch {
      view = undefined; // the small parse of the result's other fields may throw too
    }
    assert.equal(view?.csv(), undefined, text.slice(0, 120));
  }
});

Deno.test("markets job: files written from the frames' bytes equal the parsed series rendered", async () => {
  await using upstream = await startFakeEastmoney({
    synthetic: true,
    syntheticEnd: "2020-12-31",
  });
  await using server = startTestServer();
  const market = createMarketService({
    eastmoneyUrl: upstream.url,
    rateLimit: 0,
  });
  await using _worker = await startWorker(server, {
    actions: market.actions(),
  });
  const client = new RequesterClient(server.requesterUrl);
  const out = await Deno.makeTempDir();
  try {
    await client.connect();
    const symbols = ["510300", "159915", "588000"].map((code) => ({
      symbol_type: "etf" as const,
      code,
    }));
    for (const columns of ["english", "akshare"] as const) {
      const report = await runMarketsJob(client, {
        symbols,
        outDir: out,
        columns,
        write: () => Promise.resolve(),
      });
      assert.equal(report.ok, 3);
      for (const s of symbols) {
        const answer = await client.request("get_market", s);
        const path = [...report.files.values()].find((p) =>
          p.includes(s.code)
        )!;
        const written = await Deno.readTextFile(path);
        // Large enough that the job took it as bytes, not as a string.
        assert.ok(written.length > 16 * 1024, `${written.length} bytes`);
        assert.equal(written, renderMarketFile(answer.data!, "csv", columns));
      }
    }
  } finally {
    await client.close();
    market.close();
    await Deno.remove(out, { recursive: true });
  }
});
