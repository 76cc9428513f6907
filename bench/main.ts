/**
 * Switchyard benchmark: `deno task bench [--seconds T] [--runs N]
 * [--section core|batch|soak|cluster|markets|store|all] [--json] [--strict]`. Sections default to `core,batch`; `soak`, `markets` and `store` run only when asked.
 * Progress goes to stderr, tables (or one JSON document) to stdout. PASS/FAIL lines are
 * informational: the exit code is 0 unless `--strict` and a target was missed.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { coreCpuTable, coreRatioTable, coreTable, runCore } from "./core.ts";
import { batchTable, runBatchBench } from "./batch.ts";
import { runSoak, soakTable } from "./soak.ts";
import { clusterTable, runClusterBench } from "./cluster.ts";
import { marketsTable, runMarketsBench } from "./markets.ts";
import { runStoreBench, storeTable } from "./store.ts";
import type { Adjust } from "../lib/market/types.ts";
import { machineBusy } from "./_spawn.ts";
import { type Check, checkLine, fixed } from "./_stats.ts";

const SECTIONS = [
  "core",
  "batch",
  "soak",
  "cluster",
  "markets",
  "store",
] as const;
type Section = typeof SECTIONS[number];

const USAGE = `Usage: deno task bench [options]

  --seconds T      measured seconds per core row (default 10) or soak length (default 60)
  --runs N         interleaved runs per core row (1x1 rows: 3N), N >= 3 (default 5)
  --section LIST   core, batch, soak, cluster, markets, store or all, comma-separated (default core,batch)
  --store-symbols N, --store-bars N, --store-history DATE, --store-adjust LIST
                   the store section's universe (default 7000), bars of its engine comparison
                   (default 3000000; 30000000 for the figure in docs/store.md) and first day
                   of every history (default 2024-01-02), adjustments synced (default qfq,hfq)
  --markets-workers LIST
                   worker-process counts of the markets section (default 1,3,6)
  --json           print one JSON document instead of tables
  --strict         exit 1 when a target is missed
  --help           show this help`;

function parseSections(text: string): Section[] {
  const names = text.split(",").map((s) => s.trim()).filter(Boolean);
  if (names.includes("all")) return [...SECTIONS];
  for (const name of names) {
    if (!(SECTIONS as readonly string[]).includes(name)) {
      throw new RangeError(
        `Unknown section '${name}': expected core, batch, soak, cluster, markets, store or all`,
      );
    }
  }
  return names as Section[];
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      seconds: { type: "string" },
      runs: { type: "string", default: "5" },
      section: { type: "string", default: "core,batch" },
      json: { type: "boolean", default: false },
      strict: { type: "boolean", default: false },
      "store-symbols": { type: "string", default: "7000" },
      "store-bars": { type: "string", default: "3000000" },
      "store-history": { type: "string", default: "2024-01-02" },
      "store-adjust": { type: "string", default: "qfq,hfq" },
      "markets-workers": { type: "string", default: "1,3,6" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const seconds = values.seconds === undefined
    ? undefined
    : Number(values.seconds);
  if (seconds !== undefined && !(seconds > 0)) {
    throw new RangeError(
      `Invalid --seconds '${values.seconds}': expected a positive number`,
    );
  }
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 3) {
    throw new RangeError(
      `Invalid --runs '${values.runs}': expected an integer of at least 3`,
    );
  }
  const sections = parseSections(values.section);
  const log = (line: string) => console.error(line);
  const out: Record<string, unknown> = {
    deno: Deno.version.deno,
    cpus: navigator.hardwareConcurrency,
  };
  const checks: Check[] = [];
  const busy = async (when: string) => {
    const pct = await machineBusy();
    (out.machineBusy as Record<string, number>)[when] = pct;
    log(`machine busy ${when}: ${fixed(pct, 0)}% of all cores`);
    return pct;
  };
  out.machineBusy = {};
  const busyBefore = await busy("before");
  const print = (title: string, text: string) => {
    if (!values.json) console.log(`\n== ${title} ==\n${text}`);
  };
  if (sections.includes("core")) {
    const core = await runCore({ seconds: seconds ?? 10, runs, log });
    out.core = core;
    checks.push(...core.checks);
    print(
      `core (${
        seconds ?? 10
      } s per row in ${runs} interleaved runs, 1x1 rows in ${runs * 3})`,
      coreTable(core.rows) +
        (core.skipped.length ? `\n${core.skipped.join("\n")}` : ""),
    );
    print(
      "core: broker against the baselines, run-by-run ratios, median (min-max)",
      coreRatioTable(core.rows),
    );
    print(
      "core: CPU per request by process (user + system, both workers summed)",
      coreCpuTable(core.rows),
    );
  }
  if (sections.includes("batch")) {
    const batch = await runBatchBench({ log });
    out.batch = batch;
    checks.push(...batch.checks);
    print(
      `batch (${batch.items} symbols, upstream +20 ms, 20 req/s per worker, ${batch.rounds} rounds)`,
      batchTable(batch),
    );
  }
  if (sections.includes("soak")) {
    const soak = await runSoak({ seconds: seconds ?? 60, log });
    out.soak = soak;
    checks.push(...soak.checks);
    print(`soak (${soak.seconds} s, worker churn)`, soakTable(soak));
  }
  if (sections.includes("cluster")) {
    const cluster = await runClusterBench({
      seconds: seconds ?? 3,
      runs,
      log,
    });
    out.cluster = cluster;
    checks.push(...cluster.checks);
    print(
      "cluster (3 echo workers; 1, 2, 3 servers on one NATS; ratios vs 1 server, run by run)",
      clusterTable(cluster),
    );
  }
  if (sections.includes("markets")) {
    const workers = values["markets-workers"].split(",").map(Number);
    if (!workers.every((n) => Number.isInteger(n) && n > 0)) {
      throw new RangeError(
        `Invalid --markets-workers '${
          values["markets-workers"]
        }': expected counts such as 1,3,6`,
      );
    }
    const markets = await runMarketsBench({
      log,
      runs: Math.min(runs, 3),
      workers,
    });
    out.markets = markets;
    checks.push(...markets.checks);
    print(
      `markets (requester.ts markets into CSV; ${
        markets.workers.join(", ")
      } worker processes at ${markets.rateLimit} req/s each, each with its own fake upstream process; medians (min-max) of ${markets.runs} interleaved runs)`,
      marketsTable(markets),
    );
  }
  if (sections.includes("store")) {
    const store = await runStoreBench({
      log,
      symbols: Number(values["store-symbols"]),
      engineBars: Number(values["store-bars"]),
      historyStart: values["store-history"],
      adjust: values["store-adjust"].split(",") as Adjust[],
    });
    out.store = store;
    checks.push(...store.checks);
    print(
      `store (${store.symbols} symbols × ${
        store.adjust.join(",")
      }, five simulated trading days: 1% ex-dividend, 0.5% suspended, two new listings a day)`,
      storeTable(store),
    );
  }
  const busyAfter = await busy("after");
  out.checks = checks;
  if (values.json) console.log(JSON.stringify(out, null, 2));
  else {
    console.log(
      `\nDeno ${Deno.version.deno}, ${navigator.hardwareConcurrency} CPUs; machine busy ${
        fixed(busyBefore, 0)
      }% before and ${
        fixed(busyAfter, 0)
      }% after the run (other programs skew the numbers)`,
    );
    console.log(checks.map(checkLine).join("\n"));
  }
  return values.strict && checks.some((c) => !c.pass) ? 1 : 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    console.error(`bench: ${(error as Error).message}`);
    Deno.exit(2);
  }
}
