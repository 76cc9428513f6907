// Items rendered straight from their frame's text give byte for byte what parsing gives.

import assert from "node:assert/strict";
import { renderMarketFile } from "../lib/requester/market_files.ts";
import { readItemText } from "../lib/requester/market_text.ts";

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
      assert.equal(view.csv(columns), renderMarketFile(parsed, "csv", columns));
      const symbol = { symbol_type: "stock", code: "600000" };
      for (const header of [true, false]) {
        assert.equal(
          view.csv(columns, { symbol, header }),
          renderMarketFile(parsed, "csv", columns, { symbol, header }),
        );
      }
    }
  }
});

Deno.test("readItemText: an empty series and a failed item read the same as parsed", () => {
  const empty = readItemText(frame({ success: true, code: "1", data: [] }))!;
  assert.equal(empty.bars, 0);
  assert.equal(empty.csv(), renderMarketFile({ data: [] }, "csv"));
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
