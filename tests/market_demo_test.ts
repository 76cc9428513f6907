import assert from "node:assert/strict";
import {
  aggregateBars,
  type Bar,
  createMarketService,
  type MarketResult,
  type MarketSuccess,
} from "../lib/market/mod.ts";
import { createDemoProvider, demoBars } from "../lib/market/demo.ts";
import type { SymbolType } from "../lib/market/types.ts";

/**
 * The generator as it was before the series were cached and the calendar walked by hand, kept
 * verbatim (a `Date` per day) as the reference the fast one must match bar for bar.
 */
function referenceBars(
  symbolType: SymbolType,
  code: string,
  lastDate: string,
): Bar[] {
  const DAY_MS = 86_400_000;
  const dayNumber = (date: string) =>
    Date.UTC(+date.slice(0, 4), +date.slice(5, 7) - 1, +date.slice(8, 10)) /
    DAY_MS;
  const dateOfDay = (day: number) =>
    new Date(day * DAY_MS).toISOString().slice(0, 10);
  const isWeekend = (date: string) => {
    const weekday = new Date(dayNumber(date) * DAY_MS).getUTCDay();
    return weekday === 0 || weekday === 6;
  };
  const round = (value: number, digits: number) => {
    const factor = 10 ** digits;
    return Math.round(value * factor) / factor;
  };
  let h = 0x811c9dc5;
  const text = `${symbolType}:${code}`;
  for (let i = 0; i < text.length; i++) {
    h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  }
  let a = h >>> 0;
  const random = () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const digits = symbolType === "etf" ? 3 : 2;
  const scale = symbolType === "index"
    ? 1000 + 4000 * random()
    : symbolType === "etf"
    ? 0.8 + 4 * random()
    : 3 + 60 * random();
  let previous = round(scale, digits);
  const bars: Bar[] = [];
  for (let day = dayNumber("2015-01-05"); day <= dayNumber(lastDate); day++) {
    const date = dateOfDay(day);
    if (isWeekend(date)) continue;
    const open = round(previous * (1 + (random() - 0.5) * 0.01), digits);
    const close = round(
      Math.max(previous * (1 + (random() - 0.5) * 0.04), 0.01),
      digits,
    );
    const high = round(Math.max(open, close) * (1 + random() * 0.01), digits);
    const low = round(Math.min(open, close) * (1 - random() * 0.01), digits);
    const volume = Math.round(100_000 + random() * 5_000_000);
    bars.push({
      date,
      open,
      high,
      low,
      close,
      volume,
      amount: Math.round(volume * 100 * (open + close) / 2),
      amplitude: round((high - low) / previous * 100, 2),
      pct_change: round((close - previous) / previous * 100, 2),
      change: round(close - previous, digits),
    });
    previous = close;
  }
  return bars;
}

function ok(result: MarketResult): MarketSuccess {
  assert.ok(result.success, JSON.stringify(result));
  return result;
}

/** A clock whose "now" the test moves. */
function manualClock(iso: string) {
  let now = Date.parse(iso);
  return {
    now: () => now,
    sleep: () => Promise.resolve(),
    set: (next: string) => {
      now = Date.parse(next);
    },
  };
}

const SYMBOLS: [SymbolType, string][] = [
  ["etf", "510300"],
  ["etf", "159915"],
  ["stock", "600519"],
  ["stock", "000001"],
  ["index", "000300"],
  ["index", "399006"],
];

Deno.test("demoBars() matches the reference generator bar for bar, across leap days and year ends", () => {
  for (const [type, code] of SYMBOLS) {
    for (
      const last of [
        "2015-01-04",
        "2015-01-05",
        "2016-02-29",
        "2016-03-01",
        "2020-12-31",
        "2024-02-29",
        "2026-11-27",
        "2031-06-15",
      ]
    ) {
      assert.deepEqual(
        demoBars(type, code, last),
        referenceBars(type, code, last),
        `${type}:${code} up to ${last}`,
      );
    }
  }
});

Deno.test("demo provider - get_market answers what the reference generator gives, for every period and range", async () => {
  const clock = manualClock("2026-03-23T08:00:00Z");
  const market = createMarketService({ providers: ["demo"], clock });
  try {
    for (const [type, code] of SYMBOLS) {
      const reference = referenceBars(type, code, "2026-03-23");
      for (const period of ["daily", "weekly", "monthly"] as const) {
        const series = aggregateBars(reference, period);
        for (
          const [start, end] of [
            ["1990-01-01", "2026-03-23"],
            ["2025-09-01", "2026-03-23"],
            ["2024-02-26", "2024-03-08"],
            ["2016-01-01", "2016-12-31"],
          ]
        ) {
          // Twice: the second answer comes from the provider's memory.
          for (let round = 0; round < 2; round++) {
            const result = ok(
              await market.getMarket({
                symbol_type: type,
                code,
                period,
                start_date: start,
                end_date: end,
                adjust: "qfq",
              }),
            );
            assert.deepEqual(
              result.data,
              series.filter((bar) => bar.date >= start && bar.date <= end),
              `${type}:${code} ${period} ${start}..${end}`,
            );
          }
        }
      }
    }
  } finally {
    market.close();
  }
});

Deno.test("demo provider - a new day extends the series, and answers never share the cached bars", async () => {
  const clock = manualClock("2026-03-20T08:00:00Z"); // a Friday
  const market = createMarketService({ providers: ["demo"], clock });
  try {
    const params = {
      symbol_type: "etf",
      code: "510300",
      start_date: "2026-03-01",
    };
    const friday = ok(await market.getMarket(params));
    assert.equal(friday.data.at(-1)!.date, "2026-03-20");
    friday.data[0].close = -1; // a caller scribbling on its answer
    const again = ok(await market.getMarket(params));
    assert.notEqual(again.data[0].close, -1);
    assert.deepEqual(again.data.slice(1), friday.data.slice(1));
    clock.set("2026-03-23T08:00:00Z"); // the next Monday
    const monday = ok(await market.getMarket(params));
    assert.equal(monday.data.at(-1)!.date, "2026-03-23");
    assert.deepEqual(
      monday.data,
      referenceBars("etf", "510300", "2026-03-23").filter((bar) =>
        bar.date >= "2026-03-01"
      ),
    );
  } finally {
    market.close();
  }
});

Deno.test("demo provider - keeps at most cacheSeries series and still answers evicted ones correctly", async () => {
  const clock = manualClock("2026-03-23T08:00:00Z");
  const provider = createDemoProvider({ clock, cacheSeries: 2 });
  const signal = new AbortController().signal;
  const query = (code: string) => ({
    symbolType: "stock" as const,
    code,
    period: "daily" as const,
    adjust: "qfq" as const,
  });
  const first = await provider.fetchSeries(query("600519"), signal);
  assert.equal(
    (await provider.fetchSeries(query("600519"), signal)).bars,
    first.bars,
    "a repeated query is served from memory",
  );
  await provider.fetchSeries(query("000001"), signal);
  await provider.fetchSeries(query("300750"), signal); // evicts 600519, the least recent
  const again = await provider.fetchSeries(query("600519"), signal);
  assert.notEqual(again.bars, first.bars, "evicted, so generated anew");
  assert.deepEqual(again.bars, referenceBars("stock", "600519", "2026-03-23"));
});
