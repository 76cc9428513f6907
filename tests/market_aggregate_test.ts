import assert from "node:assert/strict";
import { aggregateBars, type Bar, parseCsvBars } from "../lib/market/mod.ts";
import { FIXTURES_DIR, fixturesAvailable } from "./_fake_eastmoney.ts";

const available = fixturesAvailable();
const SKIP = available ? "" : " (skipped: ../shared/fixtures absent)";

function bar(
  date: string,
  open: number,
  high: number,
  low: number,
  close: number,
): Bar {
  return { date, open, high, low, close, volume: 100, amount: 1000 };
}

const DAYS: Bar[] = [
  bar("2024-12-27", 10, 11, 9, 10), // Friday, ISO week 2024-W52
  bar("2024-12-30", 10, 12, 9.5, 11), // Monday, ISO week 2025-W01
  bar("2024-12-31", 11, 13, 10, 12),
  bar("2025-01-02", 12, 12.5, 8, 9), // same ISO week, next calendar year
  bar("2025-01-03", 9, 10, 8.5, 9.5),
  bar("2025-01-06", 9.5, 10, 9, 10), // Monday, 2025-W02
];

Deno.test("aggregateBars() builds ISO weeks across a year end, dated by their last day", () => {
  const weeks = aggregateBars(DAYS, "weekly");
  assert.deepEqual(weeks.map((w) => w.date), [
    "2024-12-27",
    "2025-01-03",
    "2025-01-06",
  ]);
  assert.deepEqual(weeks[1], {
    date: "2025-01-03",
    open: 10,
    high: 13,
    low: 8,
    close: 9.5,
    volume: 400,
    amount: 4000,
    amplitude: 50, // (13 - 8) / 10
    pct_change: -5, // (9.5 - 10) / 10
    change: -0.5,
  });
  assert.equal(
    weeks[0].pct_change,
    undefined,
    "the first period has no previous close",
  );
});

Deno.test("aggregateBars() builds calendar months and omits sums of partly unknown fields", () => {
  const days = DAYS.map((b) => ({ ...b }));
  delete days[4].amount;
  const months = aggregateBars(days, "monthly");
  assert.deepEqual(
    months.map((m) => [m.date, m.open, m.high, m.low, m.close, m.volume]),
    [
      ["2024-12-31", 10, 13, 9, 12, 300],
      ["2025-01-06", 12, 12.5, 8, 10, 300],
    ],
  );
  assert.equal(months[0].amount, 3000);
  assert.equal("amount" in months[1], false);
  assert.deepEqual(aggregateBars(days, "daily"), days);
});

Deno.test({
  name:
    `aggregateBars() on the 510300 fixture matches hand-checked weeks and months${SKIP}`,
  ignore: !available,
  fn: async () => {
    const text = await Deno.readTextFile(
      new URL("etf_510300_daily_none_11cols.csv", FIXTURES_DIR),
    );
    const daily = parseCsvBars(text);
    const weeks = aggregateBars(daily, "weekly");
    // 2012-05-28 (Mon) .. 2012-06-01 (Fri), read off the fixture by hand.
    assert.deepEqual(
      [
        weeks[0].date,
        weeks[0].open,
        weeks[0].high,
        weeks[0].low,
        weeks[0].close,
      ],
      ["2012-06-01", 2.551, 2.661, 2.544, 2.63],
    );
    assert.equal(
      weeks[0].volume,
      12775188 + 7149490 + 2658872 + 1781560 + 1793500,
    );
    const months = aggregateBars(daily, "monthly");
    assert.equal(
      months.length,
      new Set(daily.map((d) => d.date.slice(0, 7))).size,
    );
    const total = (bars: Bar[]) => bars.reduce((s, b) => s + b.volume, 0);
    assert.equal(total(months), total(daily));
    assert.equal(total(weeks), total(daily));
    for (const m of months) {
      const days = daily.filter((d) =>
        d.date.slice(0, 7) === m.date.slice(0, 7)
      );
      assert.equal(m.date, days.at(-1)!.date);
      assert.equal(m.high, Math.max(...days.map((d) => d.high)));
      assert.equal(m.low, Math.min(...days.map((d) => d.low)));
    }
  },
});
