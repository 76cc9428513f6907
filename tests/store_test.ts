import assert from "node:assert/strict";
import type { DuckDBConnection } from "npm:@duckdb/node-api@1.5.6-r.1";
import {
  holidaysBetween,
  latestClosedDay,
  MarketStore,
  previousTradingDay,
  type SeriesKey,
} from "../lib/store/mod.ts";
import {
  type Bar,
  OPTIONAL_BAR_FIELDS,
  REQUIRED_BAR_FIELDS,
} from "../lib/market/types.ts";
import { STORE_BAR_FIELDS } from "../lib/store/database.ts";
import { READ_COLUMNS } from "../lib/store/rows.ts";
import { tempDir } from "./_helpers.ts";
import { FIXTURES_DIR, fixturesAvailable } from "./_fake_eastmoney.ts";

const KEY: SeriesKey = { symbolType: "etf", code: "510300", adjust: "qfq" };
const STORE_MOD = JSON.stringify(
  new URL("../lib/store/mod.ts", import.meta.url).href,
);

/** Runs `use` on a plain DuckDB connection to a store's file, as another program reads it. */
async function withFile<T>(
  path: string,
  use: (conn: DuckDBConnection) => Promise<T>,
): Promise<T> {
  const { DuckDBInstance } = await import("npm:@duckdb/node-api@1.5.6-r.1");
  const instance = await DuckDBInstance.create(path, { threads: "1" });
  const conn = await instance.connect();
  try {
    return await use(conn);
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
}

/** What `code` prints when run by another Deno process, with `MarketStore` imported. */
async function inChild(code: string, v8Flags: string[] = []): Promise<string> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      ...v8Flags.map((flag) => `--v8-flags=${flag}`),
      `import { MarketStore } from ${STORE_MOD};\n${code}`,
    ],
    stdout: "piped",
    stderr: "inherit",
  });
  return new TextDecoder().decode((await child.output()).stdout);
}

function bars(n: number, from = "2024-01-01", price = 1): Bar[] {
  const out: Bar[] = [];
  let t = Date.parse(from);
  while (out.length < n) {
    const weekday = new Date(t).getUTCDay();
    if (weekday !== 0 && weekday !== 6) {
      const p = price + out.length / 1000;
      out.push({
        date: new Date(t).toISOString().slice(0, 10),
        open: p,
        high: p + 0.01,
        low: p - 0.01,
        close: p + 0.005,
        volume: 1000 + out.length,
        amount: 123456.5,
        turnover: 0.5,
      });
    }
    t += 86_400_000;
  }
  return out;
}

Deno.test("store - a replaced series reads back bar for bar, optional fields stay absent", async () => {
  await using dir = await tempDir("store_");
  const store = await MarketStore.open(`${dir.path}/s.duckdb`);
  try {
    const series = bars(300);
    delete series[5].amount;
    await store.commit({ replace: [{ key: KEY, bars: series }] });
    assert.deepEqual(await store.readSeries(KEY), series);
    assert.deepEqual(
      await store.readSeries(KEY, series[10].date, series[12].date),
      series.slice(10, 13),
    );
    const info = (await store.seriesInfo()).get("etf|510300|qfq");
    assert.equal(info?.bars, 300);
    assert.equal(info?.lastDate, series.at(-1)!.date);
    assert.equal(info?.lastClose, series.at(-1)!.close);
    // A second replace drops the old bars rather than adding to them.
    await store.commit({ replace: [{ key: KEY, bars: series.slice(0, 10) }] });
    assert.equal((await store.readSeries(KEY)).length, 10);
    // Replacing another series later drops only that series' old bars.
    const other: SeriesKey = { ...KEY, code: "159915" };
    await store.commit({ replace: [{ key: other, bars: bars(20) }] });
    await store.commit({ replace: [{ key: other, bars: bars(30) }] });
    assert.deepEqual(await store.readSeries(KEY), series.slice(0, 10));
    assert.equal((await store.readSeries(other)).length, 30);
  } finally {
    await store.close();
  }
});

Deno.test("store - an empty history is refused and the write leaves nothing behind", async () => {
  await using dir = await tempDir("store_");
  const store = await MarketStore.open(`${dir.path}/s.duckdb`);
  try {
    const other: SeriesKey = { ...KEY, code: "159915" };
    await assert.rejects(
      store.commit({
        replace: [{ key: other, bars: bars(5) }, { key: KEY, bars: [] }],
      }),
      /Cannot store an empty history for etf\|510300\|qfq/,
    );
    assert.equal(await store.barCount(), 0);
    assert.equal((await store.seriesInfo()).size, 0);
  } finally {
    await store.close();
  }
});

Deno.test("store - appends, cross-sections, raw bars, gone symbols and status", async () => {
  await using dir = await tempDir("store_");
  const store = await MarketStore.open(`${dir.path}/s.duckdb`);
  try {
    const a = bars(20);
    const b = bars(19);
    const keyB: SeriesKey = { ...KEY, code: "159915" };
    await store.commit({
      replace: [{ key: KEY, bars: a.slice(0, 19) }, { key: keyB, bars: b }],
      symbols: [
        { symbolType: "etf", code: "510300", name: "沪深300ETF" },
        { symbolType: "etf", code: "159915", name: "创业板ETF" },
      ],
    });
    let status = await store.status();
    assert.deepEqual(status.map((s) => [s.series, s.bars, s.behind]), [[
      2,
      38,
      0,
    ]]);
    await store.commit({
      append: [{ key: KEY, bars: [a[19]] }],
      raw: [{ symbolType: "etf", code: "510300", bar: a[19] }],
      gone: [{ symbolType: "etf", code: "159915", date: a[19].date }],
      calendar: a.map((x) => x.date),
      meta: { last_sync_day: a[19].date },
    });
    status = await store.status();
    assert.equal(status[0].lastDate, a[19].date);
    assert.equal(status[0].behind, 1);
    assert.deepEqual(await store.crossSection("etf", "qfq", a[18].date), [
      { symbolType: "etf", code: "159915", bar: b[18] },
      { symbolType: "etf", code: "510300", bar: a[18] },
    ]);
    const many = await store.readMany("etf", "qfq", ["510300", "159915"]);
    assert.deepEqual(many.get("159915"), b);
    const symbols = await store.symbols();
    assert.equal(symbols.get("etf|159915")?.goneSince, a[19].date);
    assert.equal(symbols.get("etf|510300")?.raw?.close, a[19].close);
    assert.deepEqual(await store.calendar(), a.map((x) => x.date));
    assert.equal(await store.meta("last_sync_day"), a[19].date);
    await store.compact();
    assert.deepEqual(await store.readSeries(KEY), a);
  } finally {
    await store.close();
  }
});

Deno.test("store - bars written out of order are sorted by series once past a threshold; reads stay exact", async () => {
  await using dir = await tempDir("store_");
  const path = `${dir.path}/s.duckdb`;
  const later = { ...KEY, code: "510500" };
  const store = await MarketStore.open(path);
  try {
    await store.commit({
      replace: [{ key: later, bars: bars(200, "2024-01-01", 5) }],
    });
    await store.commit({ replace: [{ key: KEY, bars: bars(150) }] });
    await store.commit({ append: [{ key: KEY, bars: bars(160).slice(150) }] });
    assert.equal(await store.meta("unsorted_bars"), "360");
    assert.equal(await store.compactIfScattered(361), false);
    assert.equal(await store.compactIfScattered(360), true);
    assert.equal(await store.meta("unsorted_bars"), undefined);
    // Reads of several series at once, through the one prepared statement, each get their own.
    const [a, b, day] = await Promise.all([
      store.readSeries(KEY),
      store.readSeries(later),
      store.crossSection("etf", "qfq", "2024-01-03"),
      store.readSeries(KEY, "2024-01-02", "2024-01-02"),
    ]);
    assert.deepEqual(a, bars(160));
    assert.deepEqual(b, bars(200, "2024-01-01", 5));
    assert.deepEqual(day.map((r) => r.code), ["510300", "510500"]);
    await assert.rejects(
      store.readSeries(KEY, "2024-1-2"),
      /Invalid bar date "2024-1-2": expected YYYY-MM-DD/,
    );
  } finally {
    await store.close();
  }
  await withFile(path, async (conn) => {
    // Physical order, which DuckDB's per-row-group min/max pruning depends on.
    const codes = (await conn.runAndReadAll("SELECT code FROM bars")).getRows()
      .map((r) => r[0]);
    assert.equal(codes.indexOf("510500"), 160);
    assert.equal(codes.lastIndexOf("510300"), 159);
  });
});

Deno.test("store - exports Parquet and CSV that DuckDB reads back without our schema", async () => {
  await using dir = await tempDir("store_");
  const store = await MarketStore.open(`${dir.path}/s.duckdb`);
  const series = bars(50);
  try {
    await store.commit({ replace: [{ key: KEY, bars: series }] });
    const files = await store.export("parquet", `${dir.path}/out`);
    assert.deepEqual(files.map((f) => f.split("/").pop()), [
      "bars.parquet",
      "symbols.parquet",
      "calendar.parquet",
    ]);
    await store.export("csv", `${dir.path}/csv`);
  } finally {
    await store.close();
  }
  const { DuckDBInstance } = await import("npm:@duckdb/node-api@1.5.6-r.1");
  const db = await DuckDBInstance.create(":memory:");
  const conn = await db.connect();
  try {
    const rows = (await conn.runAndReadAll(
      `SELECT count(*), sum(volume), max(CAST(date AS VARCHAR)) FROM '${dir.path}/out/bars.parquet'`,
    )).getRows();
    assert.deepEqual(rows[0], [
      50n,
      series.reduce((s, b) => s + b.volume, 0),
      series.at(-1)!.date,
    ]);
    const csv = await Deno.readTextFile(`${dir.path}/csv/bars.csv`);
    assert.match(csv.split("\n")[0], /^symbol_type,code,adjust,date,open/);
    assert.equal(csv.trim().split("\n").length, 51);
  } finally {
    conn.closeSync();
    db.closeSync();
  }
});

Deno.test("store - a second writer is refused at once with a lock error naming the holder", async () => {
  await using dir = await tempDir("store_");
  const path = `${dir.path}/s.duckdb`;
  const store = await MarketStore.open(path);
  try {
    const out = await inChild(
      `try { await MarketStore.open(${
        JSON.stringify(path)
      }); console.log("opened"); }
       catch (e) { console.log(e.name + ": " + e.message); }`,
    );
    assert.match(
      out,
      /^StoreLockedError: Store .* is locked by another process \(PID \d+\)/,
    );
    assert.ok(out.includes(`PID ${Deno.pid}`), out);
  } finally {
    await store.close();
  }
});

Deno.test("store - the bars table holds every bar field, each in its own column of the file's fixed order", async () => {
  // A bar field the store does not hold would be dropped on every write.
  assert.deepEqual(
    new Set(STORE_BAR_FIELDS),
    new Set([...REQUIRED_BAR_FIELDS, ...OPTIONAL_BAR_FIELDS]),
  );
  assert.equal(new Set(STORE_BAR_FIELDS).size, STORE_BAR_FIELDS.length);
  await using dir = await tempDir("store_");
  const path = `${dir.path}/s.duckdb`;
  const bar: Bar = {
    date: "2024-01-02",
    ...{ open: 1, high: 2, low: 0.5, close: 1.5, volume: 100, amount: 200 },
    ...{ amplitude: 3, pct_change: 4, change: 5, turnover: 6 },
  };
  const store = await MarketStore.open(path);
  try {
    await store.commit({ replace: [{ key: KEY, bars: [bar] }] });
    assert.deepEqual(await store.readSeries(KEY), [bar]);
  } finally {
    await store.close();
  }
  await withFile(path, async (conn) => {
    // The column order is the file's format (files written before hold it), whatever order
    // bars are written out in: reading a file by position must keep working.
    const columns = (await conn.runAndReadAll("DESCRIBE bars")).getRows();
    assert.deepEqual(columns.map((c) => c[0]), [
      ...["symbol_type", "code", "adjust", "date", "open", "high", "low"],
      ...["close", "volume", "amount", "amplitude", "pct_change", "change"],
      "turnover",
    ]);
    // Hot reads decode by position: what they select is the table's own order.
    assert.equal(READ_COLUMNS, columns.slice(3).map((c) => c[0]).join(", "));
    // The fields every bar has are NOT NULL, the others may be absent.
    assert.deepEqual(
      columns.filter((c) => c[2] === "NO").map((c) => c[0]).sort(),
      ["symbol_type", "code", "adjust", "date", ...REQUIRED_BAR_FIELDS].sort(),
    );
    const [row] = (await conn.runAndReadAll(
      `SELECT ${STORE_BAR_FIELDS.join(", ")} FROM bars`,
    )).getRows();
    assert.deepEqual(row, STORE_BAR_FIELDS.map((f) => bar[f]));
  });
});

Deno.test("store - a failed commit's bars never land, even when its appender is collected later", async () => {
  await using dir = await tempDir("store_");
  // In a process of its own, to collect garbage on demand.
  const out = await inChild(
    `const bar = (date) => ({ date, open: 1, high: 1, low: 1, close: 1, volume: 1 });
     const key = (code) => ({ symbolType: "etf", code, adjust: "qfq" });
     const store = await MarketStore.open(${
      JSON.stringify(`${dir.path}/s.duckdb`)
    });
     await store.commit({ replace: [{ key: key("159915"), bars: [bar("2024-01-05")] }] });
     try {
       await store.commit({
         replace: [{ key: key("510300"), bars: [bar("2024-01-02"), bar("2024-01-03")] }],
         append: [{ key: key("159915"), bars: [bar("2024-01-04")] }],
       });
     } catch (e) { console.log(e.message); }
     for (let i = 0; i < 5; i++) {
       globalThis.gc();
       await new Promise((r) => setTimeout(r, 20));
     }
     console.log(await store.barCount());
     await store.close();`,
    ["--expose-gc"],
  );
  assert.equal(
    out,
    "Cannot append bar 2024-01-04 to etf|159915|qfq: the series ends 2024-01-05\n1\n",
  );
});

Deno.test("store - a file whose tables cannot be made is refused, and not left open", async () => {
  await using dir = await tempDir("store_");
  const path = `${dir.path}/s.duckdb`;
  await withFile(path, async (conn) => {
    // Another program's file: its raw_last is a view of a table that is gone.
    await conn.run(
      "CREATE TABLE x (a INT); CREATE VIEW raw_last AS SELECT * FROM x; DROP TABLE x",
    );
  });
  await assert.rejects(
    MarketStore.open(path),
    /Table with name x does not exist/,
  );
  // Another process may open it at once: the failed open released the file's lock.
  const out = await inChild(
    `try { await (await MarketStore.open(${
      JSON.stringify(path)
    }, { readOnly: true })).close(); console.log("opened"); }
     catch (e) { console.log(e.name + ": " + e.message); }`,
  );
  assert.equal(out, "opened\n");
});

Deno.test("calendar - the latest closed day, the day before, and holidays as weekdays without bars", () => {
  const days = ["2024-09-27", "2024-09-30", "2024-10-08", "2024-10-09"];
  // 2024-10-09 15:00 Shanghai is 07:00 UTC: just before it, the 9th is still trading.
  assert.equal(
    latestClosedDay(days, Date.parse("2024-10-09T06:59:59Z")),
    "2024-10-08",
  );
  assert.equal(
    latestClosedDay(days, Date.parse("2024-10-09T07:00:00Z")),
    "2024-10-09",
  );
  assert.equal(
    latestClosedDay(days, Date.parse("2024-09-01T00:00:00Z")),
    undefined,
  );
  assert.equal(previousTradingDay(days, "2024-10-08"), "2024-09-30");
  assert.equal(previousTradingDay(days, "2024-10-10"), "2024-10-09");
  assert.equal(previousTradingDay(days, "2024-09-27"), undefined);
  assert.deepEqual(holidaysBetween(days, "2024-09-27", "2024-10-09"), [
    "2024-10-01",
    "2024-10-02",
    "2024-10-03",
    "2024-10-04",
    "2024-10-07",
  ]);
});

Deno.test({
  name:
    "calendar - real bars: weekdays without a 510300 bar are the exchange's holidays",
  ignore: !fixturesAvailable(),
  fn() {
    const days = Deno.readTextFileSync(
      new URL("etf_510300_daily_none_11cols.csv", FIXTURES_DIR),
    ).trim().split("\n").slice(1).map((line) => line.slice(0, 10));
    // National Day 2024 and the Spring Festival 2025, as the SSE announced them.
    assert.deepEqual(holidaysBetween(days, "2024-09-30", "2024-10-08"), [
      "2024-10-01",
      "2024-10-02",
      "2024-10-03",
      "2024-10-04",
      "2024-10-07",
    ]);
    assert.deepEqual(holidaysBetween(days, "2025-01-27", "2025-02-05"), [
      "2025-01-28",
      "2025-01-29",
      "2025-01-30",
      "2025-01-31",
      "2025-02-03",
      "2025-02-04",
    ]);
  },
});
