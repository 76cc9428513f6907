/**
 * What the store may compute locally, checked on real Eastmoney bars (../shared/fixtures/market).
 */
import assert from "node:assert/strict";
import { deriveBar } from "../lib/store/derive.ts";
import { FIXTURES_DIR, fixturesAvailable } from "./_fake_eastmoney.ts";

function rows(file: string): (string | number)[][] {
  return Deno.readTextFileSync(new URL(file, FIXTURES_DIR)).trim().split(
    /\r?\n/,
  ).slice(1).map((line) =>
    line.split(",").map((x, i) => i === 0 || Number.isNaN(+x) ? x : +x)
  );
}

Deno.test({
  name:
    "fixtures - a bar appended from a snapshot gets Eastmoney's amplitude, pct and change on every day of 510300, ex-dates included",
  ignore: !fixturesAvailable(),
  fn() {
    const none = rows("etf_510300_daily_none_11cols.csv");
    const wrong: string[] = [];
    for (let i = 1; i < none.length; i++) {
      const [date, open, close, high, low, volume] = none[i] as [
        string,
        number,
        number,
        number,
        number,
        number,
      ];
      const bar = deriveBar(
        { date, open, high, low, close, volume },
        none[i - 1][2] as number,
      );
      const want = none[i].slice(7, 10);
      const got = [bar.amplitude, bar.pct_change, bar.change];
      if (got.some((v, k) => v !== want[k])) {
        wrong.push(`${date}: ${got} ≠ ${want}`);
      }
    }
    assert.equal(none.length - 1, 3336);
    assert.deepEqual(wrong, []);
  },
});

Deno.test({
  name:
    "fixtures - qfq is the unadjusted price less a step that moves only on ex-dates: derivable for cash dividends, re-fetched all the same",
  ignore: !fixturesAvailable(),
  fn() {
    const none = new Map(
      rows("etf_510300_daily_none_11cols.csv").map((r) => [r[0], r]),
    );
    const qfq = rows("etf_510300_daily_qfq.csv");
    const steps: string[] = [];
    let offset: number | undefined;
    let common = 0;
    for (const q of qfq) {
      const raw = none.get(q[0]);
      if (raw === undefined) continue;
      common++;
      const here = [1, 2, 3, 4].map((k) =>
        Math.round(((raw[k] as number) - (q[k] as number)) * 1000) / 1000
      );
      // One offset for open, close, high and low: a shift, not a ratio.
      assert.ok(here.every((x) => x === here[0]), `${q[0]}: ${here}`);
      if (here[0] !== offset) steps.push(`${q[0]} ${here[0]}`);
      offset = here[0];
      assert.equal(raw[5], q[5]); // volume is never adjusted
    }
    assert.equal(common, 3337);
    // The fourteen cash dividends of 2012–2026, and 0 since the last one.
    assert.equal(steps.length, 15);
    assert.equal(steps[0], "2012-05-28 0.88");
    assert.equal(steps.at(-1), "2026-01-19 0");
  },
});
