import assert from "node:assert/strict";
import {
  createMarketService,
  type MarketResult,
  type MarketSuccess,
} from "../lib/market/mod.ts";
import {
  FIXTURES_DIR,
  fixturesAvailable,
  startFakeEastmoney,
} from "./_fake_eastmoney.ts";

const available = fixturesAvailable();
const SKIP = available ? "" : " (skipped: ../shared/fixtures absent)";

interface FixtureRow {
  date: string;
  open: number;
  close: number;
  high: number;
  low: number;
  volume: number;
  amount: number;
  rest: number[];
}

/** Reads a fixture by position (the test's own reading, independent of the CSV provider). */
async function fixture(file: string): Promise<FixtureRow[]> {
  const text = await Deno.readTextFile(new URL(file, FIXTURES_DIR));
  return text.trim().split("\n").slice(1).map((line) => {
    const [date, ...numbers] = line.split(",");
    const [open, close, high, low, volume, amount, ...rest] = numbers.map(
      Number,
    );
    return { date, open, close, high, low, volume, amount, rest };
  });
}

function ok(result: MarketResult): MarketSuccess {
  assert.ok(result.success, `expected success, got ${JSON.stringify(result)}`);
  return result;
}

function assertSameBars(
  actual: MarketSuccess,
  expected: FixtureRow[],
  withAmount = true,
) {
  assert.equal(actual.data.length, expected.length);
  expected.forEach((row, i) => {
    const got = actual.data[i];
    const want = {
      date: row.date,
      open: row.open,
      close: row.close,
      high: row.high,
      low: row.low,
      volume: row.volume,
    };
    const have = {
      date: got.date,
      open: got.open,
      close: got.close,
      high: got.high,
      low: got.low,
      volume: got.volume,
    };
    assert.deepEqual(have, want, `row ${i}`);
    if (withAmount) {
      assert.equal(got.amount, row.amount, `amount of ${row.date}`);
    }
  });
}

async function withFake(
  fn: (url: string) => Promise<void>,
  options: Parameters<typeof startFakeEastmoney>[0] = {},
) {
  await using fake = await startFakeEastmoney(options);
  await fn(fake.url);
}

Deno.test({
  name: `eastmoney provider - returns the fixture rows for 510300 qfq${SKIP}`,
  ignore: !available,
  fn: () =>
    withFake(async (url) => {
      const market = createMarketService({ eastmoneyUrl: url, rateLimit: 0 });
      const result = ok(
        await market.getMarket({
          symbol_type: "etf",
          code: "510300",
          adjust: "qfq",
        }),
      );
      assert.equal(result.name, "沪深300ETF华泰柏瑞");
      assert.equal(result.source, "eastmoney");
      assert.equal(result.adjust, "qfq");
      assertSameBars(result, await fixture("etf_510300_daily_qfq.csv"));
      market.close();
    }),
});

Deno.test({
  name:
    `eastmoney provider - returns the fixture rows for 510300 unadjusted, all 11 fields${SKIP}`,
  ignore: !available,
  fn: () =>
    withFake(async (url) => {
      const market = createMarketService({ eastmoneyUrl: url, rateLimit: 0 });
      const result = ok(
        await market.getMarket({
          symbol_type: "etf",
          code: "510300",
          adjust: "",
        }),
      );
      assert.equal(result.adjust, "none");
      const rows = await fixture("etf_510300_daily_none_11cols.csv");
      assertSameBars(result, rows);
      rows.forEach((row, i) => {
        const { amplitude, pct_change, change, turnover } = result.data[i];
        assert.deepEqual(
          [amplitude, pct_change, change, turnover],
          row.rest,
          row.date,
        );
      });
      market.close();
    }),
});

Deno.test({
  name: `eastmoney provider - returns the fixture rows for 159915${SKIP}`,
  ignore: !available,
  fn: () =>
    withFake(async (url) => {
      const market = createMarketService({ eastmoneyUrl: url, rateLimit: 0 });
      const rows = await fixture("etf_159915_daily_qfq.csv");
      for (const adjust of ["qfq", "none"]) {
        const result = ok(
          await market.getMarket({
            symbol_type: "etf",
            code: "159915",
            adjust,
          }),
        );
        assert.equal(result.name, "创业板ETF易方达");
        assertSameBars(result, rows);
        assert.equal(
          "turnover" in result.data[0],
          false,
          "unknown fields are omitted, not null",
        );
      }
      market.close();
    }),
});

type Period = "weekly" | "monthly";

/**
 * The test's own weekly and monthly bars from fixture rows: weeks counted from the Monday before
 * the Unix epoch (1970-01-01 was a Thursday), months by the date's first seven characters.
 */
function periodRows(rows: FixtureRow[], period: Period): FixtureRow[] {
  const keyOf = (date: string) =>
    period === "monthly"
      ? date.slice(0, 7)
      : String(Math.floor((Date.parse(date) / 86_400_000 + 3) / 7));
  const out: FixtureRow[] = [];
  let key: string | undefined;
  for (const row of rows) {
    const k = keyOf(row.date);
    const last = out.at(-1);
    if (k !== key || last === undefined) {
      out.push({ ...row, rest: [] });
      key = k;
      continue;
    }
    last.date = row.date;
    last.close = row.close;
    last.high = Math.max(last.high, row.high);
    last.low = Math.min(last.low, row.low);
    last.volume += row.volume;
  }
  return out;
}

/** Hand-checked bars of 510300 qfq: the first ISO week and June 2012. */
const FIRST_WEEK = {
  date: "2012-06-01",
  open: 1.671,
  close: 1.75,
  high: 1.781,
  low: 1.664,
  volume: 26158610,
};
const JUNE_2012 = {
  date: "2012-06-29",
  open: 1.749,
  close: 1.605,
  high: 1.78,
  low: 1.568,
  volume: 38903174,
};

function assertPeriodBars(
  result: MarketSuccess,
  daily: FixtureRow[],
  period: Period,
) {
  const expected = periodRows(daily, period);
  assert.ok(expected.length < daily.length / 4, "fewer bars than days");
  assertSameBars(result, expected, false);
  const anchor = period === "weekly" ? FIRST_WEEK : JUNE_2012;
  const bar = result.data.find((b) => b.date === anchor.date);
  assert.deepEqual(
    bar && {
      date: bar.date,
      open: bar.open,
      close: bar.close,
      high: bar.high,
      low: bar.low,
      volume: bar.volume,
    },
    anchor,
  );
}

Deno.test({
  name:
    `eastmoney provider - weekly and monthly requests ask for klt 102 and 103 and return the fixture's week and month bars${SKIP}`,
  ignore: !available,
  fn: async () => {
    await using fake = await startFakeEastmoney();
    const market = createMarketService({
      eastmoneyUrl: fake.url,
      rateLimit: 0,
    });
    try {
      const daily = await fixture("etf_510300_daily_qfq.csv");
      const base = { symbol_type: "etf", code: "510300", adjust: "qfq" };
      for (
        const [period, klt] of [["weekly", "102"], ["monthly", "103"]] as const
      ) {
        const before = fake.requests.length;
        const result = ok(await market.getMarket({ ...base, period }));
        assertPeriodBars(result, daily, period);
        assert.deepEqual(
          fake.requests.slice(before).map((r) => r.url.searchParams.get("klt")),
          [klt],
          period,
        );
      }
    } finally {
      market.close();
    }
  },
});

Deno.test({
  name:
    `tencent provider - weekly and monthly requests ask for week and month bars and return the fixture's${SKIP}`,
  ignore: !available,
  fn: async () => {
    await using fake = await startFakeEastmoney();
    const market = createMarketService({
      providers: ["tencent"],
      tencentUrl: fake.url,
      rateLimit: 0,
      clock: {
        now: () => Date.parse("2026-03-23T08:00:00Z"),
        sleep: () => Promise.resolve(),
      },
    });
    try {
      const daily = await fixture("etf_510300_daily_qfq.csv");
      const base = { symbol_type: "etf", code: "510300", adjust: "qfq" };
      for (
        const [period, unit] of [["weekly", "week"], [
          "monthly",
          "month",
        ]] as const
      ) {
        const before = fake.requests.length;
        const result = ok(await market.getMarket({ ...base, period }));
        assert.equal(result.source, "tencent");
        assertPeriodBars(result, daily, period);
        const units = fake.requests.slice(before).map((r) =>
          r.url.searchParams.get("param")!.split(",")[1]
        );
        assert.ok(units.length > 0);
        assert.deepEqual(new Set(units), new Set([unit]), period);
      }
    } finally {
      market.close();
    }
  },
});

Deno.test("eastmoney provider - slices a synthetic series by start and end date", () =>
  withFake(async (url) => {
    const market = createMarketService({ eastmoneyUrl: url, rateLimit: 0 });
    const result = ok(
      await market.getMarket({
        symbol_type: "stock",
        code: "600519",
        start_date: "2024-01-01",
        end_date: "20240131",
        adjust: "none",
      }),
    );
    assert.equal(result.name, "合成证券600519");
    assert.equal(result.data.length, 23); // weekdays of January 2024
    assert.equal(result.data[0].date, "2024-01-01");
    assert.equal(result.data.at(-1)!.date, "2024-01-31");
    market.close();
  }, { synthetic: true }));

Deno.test({
  name:
    `tencent provider - pages through years and returns the fixture rows for 510300 qfq${SKIP}`,
  ignore: !available,
  fn: async () => {
    await using fake = await startFakeEastmoney();
    const market = createMarketService({
      providers: ["tencent"],
      tencentUrl: fake.url,
      rateLimit: 0,
      clock: {
        now: () => Date.parse("2026-03-23T08:00:00Z"),
        sleep: () => Promise.resolve(),
      },
    });
    const result = ok(
      await market.getMarket({
        symbol_type: "etf",
        code: "510300",
        adjust: "qfq",
      }),
    );
    assert.equal(result.source, "tencent");
    assert.equal(result.name, "沪深300ETF华泰柏瑞");
    // newfqkline rows carry amount (in 10k CNY) and turnover; ETF volume is already in lots.
    assertSameBars(result, await fixture("etf_510300_daily_qfq.csv"));
    assert.ok(result.data.some((b) => typeof b.turnover === "number"));
    // 2025-26, 2023-24, ..., 2011-12, then 2009-10 comes back empty.
    assert.equal(fake.callsFor("510300", "tencent"), 9);
    assert.ok(
      fake.requests.every((r) =>
        r.url.searchParams.get("param")!.endsWith(",640,qfq")
      ),
    );
    market.close();
  },
});

Deno.test({
  name:
    `csv provider - reads the akshare Chinese-header fixture in place${SKIP}`,
  ignore: !available,
  fn: async () => {
    const market = createMarketService({
      providers: ["csv"],
      csvDir: FIXTURES_DIR,
    });
    const none = ok(
      await market.getMarket({
        symbol_type: "etf",
        code: "510300",
        adjust: "none",
      }),
    );
    assert.equal(none.source, "csv");
    const rows = await fixture("etf_510300_daily_none_11cols.csv");
    assertSameBars(none, rows);
    rows.forEach((row, i) => {
      const { amplitude, pct_change, change, turnover } = none.data[i];
      assert.deepEqual(
        [amplitude, pct_change, change, turnover],
        row.rest,
        row.date,
      );
    });
    // The adjust token in the file name picks the qfq file for qfq requests.
    const qfq = ok(
      await market.getMarket({
        symbol_type: "etf",
        code: "510300",
        adjust: "qfq",
      }),
    );
    assertSameBars(qfq, await fixture("etf_510300_daily_qfq.csv"));
    const hfq = await market.getMarket({
      symbol_type: "etf",
      code: "510300",
      adjust: "hfq",
    });
    assert.equal(hfq.success, false);
    assert.equal(!hfq.success && hfq.error_code, "UNKNOWN_CODE");
    market.close();
  },
});

Deno.test("csv provider - reads an English header by column name, in any order", async () => {
  const dir = await Deno.makeTempDir({ prefix: "switchyard_csv_" });
  try {
    await Deno.writeTextFile(
      `${dir}/600519.csv`,
      "\uFEFFcode,date,close,open,low,high,amount,volume\r\n" +
        "600519,2024-01-03,101.5,100,99,102,5000000,500\r\n" +
        "600519,2024-01-02,100,98,97.5,100.5,4000000,400\r\n" +
        "600519,2024-01-08,103,101.5,101,104,6000000,600\r\n",
    );
    await Deno.writeTextFile(`${dir}/bad.csv`, "nothing,to,see\n");
    const market = createMarketService({ providers: ["csv"], csvDir: dir });
    const daily = ok(
      await market.getMarket({
        symbol_type: "stock",
        code: "600519",
        adjust: "none",
      }),
    );
    assert.deepEqual(daily.data[0], {
      date: "2024-01-02",
      open: 98,
      high: 100.5,
      low: 97.5,
      close: 100,
      volume: 400,
      amount: 4000000,
    });
    assert.equal(daily.data.length, 3);
    const weekly = ok(
      await market.getMarket({
        symbol_type: "stock",
        code: "600519",
        period: "weekly",
      }),
    );
    assert.deepEqual(
      weekly.data.map((
        b,
      ) => [b.date, b.open, b.high, b.low, b.close, b.volume]),
      [
        ["2024-01-03", 98, 102, 97.5, 101.5, 900],
        ["2024-01-08", 101.5, 104, 101, 103, 600],
      ],
    );
    const missing = await market.getMarket({
      symbol_type: "stock",
      code: "000001",
    });
    assert.equal(!missing.success && missing.error_code, "UNKNOWN_CODE");
    market.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("demo provider - deterministic weekday bars labelled demo, only when asked for", async () => {
  const clock = {
    now: () => Date.parse("2026-03-23T08:00:00Z"),
    sleep: () => Promise.resolve(),
  };
  const a = createMarketService({ providers: ["demo"], clock });
  const b = createMarketService({ providers: ["demo"], clock });
  const params = {
    symbol_type: "etf",
    code: "510300",
    start_date: "2025-01-01",
  };
  const first = ok(await a.getMarket(params));
  const second = ok(await b.getMarket(params));
  assert.deepEqual(first, second);
  assert.equal(first.source, "demo");
  assert.match(first.name, /演示/);
  assert.equal(first.data.at(-1)!.date, "2026-03-23");
  for (const bar of first.data) {
    const weekday = new Date(bar.date).getUTCDay();
    assert.ok(weekday !== 0 && weekday !== 6, bar.date);
    assert.ok(
      bar.low <= Math.min(bar.open, bar.close) &&
        bar.high >= Math.max(bar.open, bar.close),
    );
  }
  const other = ok(await a.getMarket({ ...params, code: "159915" }));
  assert.notDeepEqual(other.data[0], first.data[0]);
  a.close();
  b.close();
});
