/**
 * Where a store read's time goes: the store's reads (prepared statements, column chunks, only the
 * bar columns) against the plain way (a query string planned on every call, rows of values, every
 * column with dates formatted in SQL), DuckDB's own time for the same query (EXPLAIN ANALYZE) and
 * the binding's floor (`SELECT 42`), all interleaved in one process so machine load hits each
 * alike. Measured on the table as a sync leaves it (daily bars appended after the fill) and after
 * `compact()` (sorted by series and date), with two DuckDB threads instead of one, sorted by year
 * first (one day's rows then sit in one year's row groups), then with an ART index on the series
 * key.
 *
 * `deno run -A bench/store_reads.ts [--bars 700000] [--days 20] [--reps 25] [--runs 3]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import { DuckDBInstance } from "npm:@duckdb/node-api@1.5.6-r.1";
import { BAR_COLUMNS, barOf } from "../lib/store/rows.ts";
import { MarketStore } from "../lib/store/store.ts";
import { bar, key, weekdays } from "./_store_rig.ts";
import { fixed, table } from "./_stats.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    bars: { type: "string", default: "700000" },
    symbols: { type: "string", default: "7000" },
    days: { type: "string", default: "20" },
    reps: { type: "string", default: "25" },
    runs: { type: "string", default: "3" },
  },
});
const symbols = Number(values.symbols);
const perSymbol = Math.max(2, Math.floor(Number(values.bars) / symbols));
const appended = Math.min(Number(values.days), perSymbol - 1);
const reps = Number(values.reps);
const runs = Number(values.runs);

const days = weekdays(perSymbol);

const dir = await Deno.makeTempDir({ prefix: "store_reads_" });
const path = `${dir}/reads.duckdb`;

// As a sync builds it: full histories first, then one bar per symbol per day.
{
  const store = await MarketStore.open(path);
  const fill = perSymbol - appended;
  for (let i = 0; i < symbols; i += 100) {
    const replace = [];
    for (let k = i; k < Math.min(symbols, i + 100); k++) {
      replace.push({
        key: key(k),
        bars: days.slice(0, fill).map((_, d) => bar(days, k, d)),
      });
    }
    await store.commit({ replace });
  }
  for (let d = fill; d < perSymbol; d++) {
    const append = [];
    for (let k = 0; k < symbols; k++) {
      append.push({ key: key(k), bars: [bar(days, k, d)] });
    }
    await store.commit({ append });
  }
  await store.close();
}

type Row = string[];
const rows: Row[] = [];
const median = (xs: number[]) =>
  [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const spread = (xs: number[]) =>
  `${fixed(median(xs), 2)} (${fixed(Math.min(...xs), 2)}-${
    fixed(Math.max(...xs), 2)
  })`;

async function measure(state: string, threads = 1): Promise<void> {
  const store = await MarketStore.open(path, { readOnly: true, threads });
  const instance = await DuckDBInstance.create(path, {
    access_mode: "READ_ONLY",
    memory_limit: "64MB",
    threads: String(threads),
  });
  const conn = await instance.connect();
  const series = new Map<string, number[]>();
  const cross = new Map<string, number[]>();
  const add = (m: Map<string, number[]>, k: string, v: number) => {
    if (!m.has(k)) m.set(k, []);
    m.get(k)!.push(v);
  };
  const engineMs = async (sql: string) => {
    const r = await conn.runAndReadAll(`EXPLAIN ANALYZE ${sql}`);
    const text = r.getRows().map((x) => x.join(" ")).join("\n");
    return Number(/Total Time: ([\d.]+)s/.exec(text)?.[1] ?? NaN) * 1000;
  };
  const one = await conn.prepare("SELECT 42");
  try {
    for (let run = 0; run < runs; run++) {
      const s = new Map<string, number[]>();
      const c = new Map<string, number[]>();
      for (let r = 0; r < reps; r++) {
        const k = key((run * 997 + r * 331) % symbols);
        const day = days[(run * 13 + r * 37) % days.length];
        let t = performance.now();
        const got = await store.readSeries(k);
        add(s, "store.readSeries (prepared, columns)", performance.now() - t);
        t = performance.now();
        const legacy = (await conn.runAndReadAll(
          `SELECT ${BAR_COLUMNS} FROM bars WHERE symbol_type = $1 AND code = $2 AND adjust = $3
             AND date >= CAST($4 AS DATE) AND date <= CAST($5 AS DATE) ORDER BY date`,
          [k.symbolType, k.code, k.adjust, "1900-01-01", "2999-12-31"],
        )).getRows().map(barOf);
        add(s, "plain query (planned per call, rows)", performance.now() - t);
        if (
          got.length !== legacy.length ||
          got.at(-1)!.date !== legacy.at(-1)!.date
        ) {
          throw new Error("the two reads differ");
        }
        add(
          s,
          "DuckDB's own time (EXPLAIN ANALYZE)",
          await engineMs(
            `SELECT * FROM bars WHERE symbol_type = 'stock' AND code = '${k.code}' AND adjust = 'qfq' ORDER BY date`,
          ),
        );
        t = performance.now();
        await conn.runAndReadAll("SELECT 42");
        add(s, "SELECT 42 (query string)", performance.now() - t);
        t = performance.now();
        await one.runAndReadAll();
        add(s, "SELECT 42 (prepared)", performance.now() - t);
        if (r % 3 === 0) {
          t = performance.now();
          await store.crossSection(undefined, "qfq", day);
          add(
            c,
            "store.crossSection (prepared, columns)",
            performance.now() - t,
          );
          t = performance.now();
          (await conn.runAndReadAll(
            `SELECT ${BAR_COLUMNS} FROM bars WHERE adjust = $1 AND date = CAST($2 AS DATE) ORDER BY symbol_type, code`,
            ["qfq", day],
          )).getRows().map(barOf);
          add(c, "plain query (planned per call, rows)", performance.now() - t);
          add(
            c,
            "DuckDB's own time (EXPLAIN ANALYZE)",
            await engineMs(
              `SELECT * FROM bars WHERE adjust = 'qfq' AND date = DATE '${day}' ORDER BY symbol_type, code`,
            ),
          );
        }
      }
      for (const [k, v] of s) add(series, k, median(v));
      for (const [k, v] of c) add(cross, k, median(v));
    }
  } finally {
    one.destroySync();
    conn.closeSync();
    instance.closeSync();
    await store.close();
  }
  for (const [k, v] of series) rows.push([state, "one symbol", k, spread(v)]);
  for (const [k, v] of cross) rows.push([state, "one day", k, spread(v)]);
}

async function rewrite(sql: string): Promise<void> {
  const instance = await DuckDBInstance.create(path);
  const conn = await instance.connect();
  await conn.run(sql);
  await conn.run("CHECKPOINT");
  conn.closeSync();
  instance.closeSync();
}

try {
  await measure(`as synced (${appended} days appended)`);
  {
    const store = await MarketStore.open(path);
    await store.compact();
    await store.close();
  }
  await measure("after compact()");
  await measure("after compact(), 2 threads", 2);
  // The date-bucket alternative: sorted by year first, so one day's rows sit in one year's row
  // groups while one series spans one row group per year.
  await rewrite(
    "CREATE OR REPLACE TABLE bars AS SELECT * FROM bars ORDER BY symbol_type, adjust, year(date), code, date",
  );
  await measure("sorted by year, then series");
  await rewrite(
    "CREATE OR REPLACE TABLE bars AS SELECT * FROM bars ORDER BY symbol_type, adjust, code, date",
  );
  {
    const instance = await DuckDBInstance.create(path);
    const conn = await instance.connect();
    await conn.run(
      "CREATE INDEX bars_series ON bars (symbol_type, code, adjust)",
    );
    conn.closeSync();
    instance.closeSync();
  }
  await measure("compact() + ART index");
  console.log(
    `${
      symbols * perSymbol
    } bars (${symbols} symbols × ${perSymbol} days); ${runs} runs × ${reps} reads, ms: median of run medians (min-max)\n`,
  );
  console.log(table(["table", "read", "path", "ms"], rows));
} finally {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
}
