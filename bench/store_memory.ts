/**
 * Peak RSS of a process that fills a store the way a first sync does (commits of 100 whole
 * series), per DuckDB setting, with and without the sort (`compact()`) a sync runs at its end.
 * Each variant is its own process (peak RSS is per process), variants interleaved, 3 rounds.
 *
 * `deno run -A bench/store_memory.ts [--series 1400] [--days 530] [--rounds 3]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import { MarketStore } from "../lib/store/store.ts";
import { table } from "./_stats.ts";
import { weekdays } from "./_store_rig.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    child: { type: "string" },
    series: { type: "string", default: "1400" },
    days: { type: "string", default: "530" },
    rounds: { type: "string", default: "3" },
  },
});

const hwmMiB = () =>
  Number(
    /VmHWM:\s+(\d+)/.exec(Deno.readTextFileSync("/proc/self/status"))![1],
  ) / 1024;

if (values.child !== undefined) {
  const [threads, memoryLimit, sort] = values.child.split(",");
  const dir = await Deno.makeTempDir({ prefix: "store_memory_" });
  try {
    const store = await MarketStore.open(`${dir}/m.duckdb`, {
      threads: Number(threads),
      memoryLimit,
    });
    const days = weekdays(Number(values.days), Date.UTC(2020, 0, 1));
    const series = Number(values.series);
    for (let i = 0; i < series; i += 100) {
      const replace = [];
      for (let k = i; k < Math.min(series, i + 100); k++) {
        replace.push({
          key: {
            symbolType: "stock" as const,
            // Arrival order unlike code order, as a fill's.
            code: String(300000 + (k * 7919) % 100000).slice(0, 6),
            adjust: k % 2 ? "qfq" as const : "hfq" as const,
          },
          bars: days.map((date, j) => ({
            date,
            open: 10 + j / 100,
            high: 11 + j / 100,
            low: 9 + j / 100,
            close: 10.5 + j / 100,
            volume: 1000 + j,
            amount: 1e6 + k,
            amplitude: 1,
            pct_change: 0.1,
            change: 0.01,
            turnover: 0.5,
          })),
        });
      }
      await store.commit({ replace });
    }
    const filled = hwmMiB();
    if (sort === "sort") await store.compact();
    await store.close();
    console.log(JSON.stringify({ filled, end: hwmMiB() }));
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
} else {
  const variants = [
    "2,64MB,none",
    "1,64MB,none",
    "1,32MB,none",
    "1,128MB,none",
    "2,64MB,sort",
    "1,64MB,sort",
  ];
  const peaks = new Map<string, { filled: number[]; end: number[] }>();
  for (let r = 0; r < Number(values.rounds); r++) {
    for (const v of variants) {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL(import.meta.url).pathname,
          "--child",
          v,
          "--series",
          values.series!,
          "--days",
          values.days!,
        ],
        stderr: "inherit",
      }).output();
      const p = JSON.parse(new TextDecoder().decode(out.stdout));
      if (!peaks.has(v)) peaks.set(v, { filled: [], end: [] });
      peaks.get(v)!.filled.push(p.filled);
      peaks.get(v)!.end.push(p.end);
    }
  }
  const med = (xs: number[]) =>
    [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const fmt = (xs: number[]) =>
    `${med(xs).toFixed(0)} (${Math.min(...xs).toFixed(0)}-${
      Math.max(...xs).toFixed(0)
    })`;
  console.log(
    `${values.series} series × ${values.days} bars; peak RSS MiB, median (min-max) of ${values.rounds} rounds\n`,
  );
  console.log(table(
    [
      "threads",
      "memory_limit",
      "sort at end",
      "peak after fill",
      "peak at end",
    ],
    [...peaks].map(([v, p]) => {
      const [t, m, s] = v.split(",");
      return [t, m, s === "sort" ? "yes" : "no", fmt(p.filled), fmt(p.end)];
    }),
  ));
}
