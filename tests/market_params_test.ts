import assert from "node:assert/strict";
import {
  MarketParamsError,
  parseProviderList,
  RETRIABLE_ERROR_CODES,
  secidFor,
  UnknownCodeError,
  validateMarketParams,
} from "../lib/market/mod.ts";

const GOOD = { symbol_type: "etf", code: "510300" };

Deno.test("validateMarketParams() fills defaults and normalises dates and adjust", () => {
  assert.deepEqual(validateMarketParams(GOOD, { today: "2026-03-20" }), {
    symbol_type: "etf",
    code: "510300",
    period: "daily",
    start_date: "1990-01-01",
    end_date: "2026-03-20",
    adjust: "qfq",
  });
  const p = validateMarketParams({
    ...GOOD,
    period: "weekly",
    start_date: "20240102",
    end_date: "2024-12-31",
    adjust: "",
    extra: "ignored",
  });
  assert.equal(p.start_date, "2024-01-02");
  assert.equal(p.end_date, "2024-12-31");
  assert.equal(p.adjust, "none");
  assert.equal(p.period, "weekly");
  assert.equal(
    validateMarketParams({ ...GOOD, adjust: "none" }).adjust,
    "none",
  );
  assert.equal(validateMarketParams({ ...GOOD, adjust: "hfq" }).adjust, "hfq");
});

Deno.test("validateMarketParams() names the field and quotes the value for every mistake", () => {
  const cases: [unknown, string][] = [
    [null, "Invalid market params null: expected an object"],
    [["510300"], 'Invalid market params ["510300"]: expected an object'],
    [
      { code: "510300" },
      "Missing symbol_type: expected one of etf, stock, index",
    ],
    [
      { ...GOOD, symbol_type: "fund" },
      'Invalid symbol_type "fund": expected one of etf, stock, index',
    ],
    [
      { symbol_type: "etf" },
      'Missing code: expected a 6-digit string such as "510300"',
    ],
    [
      { ...GOOD, code: 510300 },
      'Invalid code 510300: expected a 6-digit string such as "510300"',
    ],
    [
      { ...GOOD, code: "51030" },
      'Invalid code "51030": expected a 6-digit string such as "510300"',
    ],
    [
      { ...GOOD, code: "sh510300" },
      'Invalid code "sh510300": expected a 6-digit string such as "510300"',
    ],
    [
      { ...GOOD, period: "yearly" },
      'Invalid period "yearly": expected one of daily, weekly, monthly, 1m, 5m, 15m, 30m, 60m',
    ],
    [
      { ...GOOD, start_date: "2024/01/02" },
      'Invalid start_date "2024/01/02": expected YYYY-MM-DD or YYYYMMDD',
    ],
    [
      { ...GOOD, start_date: "2024-0102" },
      'Invalid start_date "2024-0102": expected YYYY-MM-DD or YYYYMMDD',
    ],
    [
      { ...GOOD, end_date: 20240102 },
      "Invalid end_date 20240102: expected YYYY-MM-DD or YYYYMMDD",
    ],
    [
      { ...GOOD, end_date: "2023-02-29" },
      'Invalid end_date "2023-02-29": no such calendar date',
    ],
    [
      { ...GOOD, start_date: "2025-01-02", end_date: "2025-01-01" },
      'Invalid date range: start_date "2025-01-02" is after end_date "2025-01-01"',
    ],
    [
      { ...GOOD, adjust: "QFQ" },
      'Invalid adjust "QFQ": expected one of "qfq", "hfq", "" or "none"',
    ],
  ];
  for (const [params, message] of cases) {
    assert.throws(() => validateMarketParams(params), (error: unknown) => {
      assert.ok(
        error instanceof MarketParamsError,
        `not a MarketParamsError for ${message}`,
      );
      assert.equal(error.name, "MarketParamsError");
      assert.equal(error.errorCode, "INVALID_PARAMS");
      assert.equal(error.message, message);
      return true;
    });
  }
});

Deno.test("secidFor() maps codes to Eastmoney markets by kind", () => {
  const table: [Parameters<typeof secidFor>[0], string, string][] = [
    ["etf", "510300", "1.510300"],
    ["etf", "588000", "1.588000"],
    ["etf", "562500", "1.562500"],
    ["etf", "159915", "0.159915"],
    ["stock", "600519", "1.600519"],
    ["stock", "688981", "1.688981"],
    ["stock", "900901", "1.900901"],
    ["stock", "000001", "0.000001"], // Ping An Bank
    ["stock", "300750", "0.300750"],
    ["stock", "200002", "0.200002"],
    ["stock", "430047", "0.430047"],
    ["stock", "830799", "0.830799"],
    ["stock", "920002", "0.920002"],
    ["index", "000001", "1.000001"], // Shanghai Composite
    ["index", "000300", "1.000300"],
    ["index", "399006", "0.399006"],
    ["index", "899050", "0.899050"],
    ["index", "930050", "2.930050"],
    ["index", "950096", "2.950096"],
  ];
  for (const [kind, code, secid] of table) {
    assert.equal(secidFor(kind, code), secid, `${kind} ${code}`);
  }
});

Deno.test("secidFor() rejects codes no exchange uses for that kind", () => {
  for (
    const [kind, code] of [["etf", "600519"], ["stock", "510300"], [
      "index",
      "600000",
    ]] as const
  ) {
    assert.throws(() => secidFor(kind, code), UnknownCodeError);
  }
  assert.throws(() => secidFor("etf", "700000"), {
    message: 'Unknown etf code "700000": no exchange uses it',
  });
});

Deno.test("parseProviderList() keeps the fallback order and rejects unknown names", () => {
  assert.deepEqual(parseProviderList("eastmoney,tencent"), [
    "eastmoney",
    "tencent",
  ]);
  assert.deepEqual(parseProviderList(" Tencent , eastmoney tencent "), [
    "tencent",
    "eastmoney",
  ]);
  assert.deepEqual(parseProviderList("csv"), ["csv"]);
  assert.throws(() => parseProviderList("eastmoney,sina"), {
    name: "TypeError",
    message:
      'Unknown market provider "sina": expected one of eastmoney, tencent, csv, demo',
  });
  assert.throws(() => parseProviderList(" , "), TypeError);
});

Deno.test("RETRIABLE_ERROR_CODES lists only the upstream failures", () => {
  assert.deepEqual([...RETRIABLE_ERROR_CODES], [
    "UPSTREAM_BLOCKED",
    "UPSTREAM_UNAVAILABLE",
  ]);
  assert.ok(Object.isFrozen(RETRIABLE_ERROR_CODES));
});
