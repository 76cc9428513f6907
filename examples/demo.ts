/**
 * `deno task demo` — a server on free ports, three workers on the offline `demo` market provider,
 * and a requester that shows the balancer at work and a distributed batch, then writes that batch
 * to CSV files in a temporary folder with the markets command. Runs in seconds, needs no network
 * beyond loopback, and exits 0.
 *
 * @module
 */

import { createMarketService } from "../lib/market/mod.ts";
import { setupLogging } from "../lib/log.ts";
import { RequesterClient } from "../lib/requester/requester_client.ts";
import { marketsCommand } from "../lib/requester/markets_cli.ts";
import { startServer } from "../lib/broker/server.ts";
import { Worker } from "../lib/worker/worker_client.ts";

const SYMBOLS: [string, string][] = [
  ["etf", "510300"],
  ["etf", "510500"],
  ["etf", "159915"],
  ["etf", "588000"],
  ["etf", "512880"],
  ["etf", "512690"],
  ["etf", "159919"],
  ["etf", "562500"],
  ["etf", "159869"],
  ["etf", "513100"],
  ["stock", "600519"],
  ["stock", "000001"],
  ["stock", "300750"],
  ["stock", "601318"],
  ["stock", "000858"],
  ["stock", "688981"],
  ["index", "000001"],
  ["index", "000300"],
  ["index", "399001"],
  ["index", "399006"],
];

function pad(text: string | number, width: number): string {
  const s = String(text);
  // CJK characters take two columns in a terminal.
  const columns = [...s].reduce(
    (n, ch) => n + (ch.charCodeAt(0) > 0x2e80 ? 2 : 1),
    0,
  );
  return s + " ".repeat(Math.max(0, width - columns));
}

async function main(): Promise<void> {
  setupLogging({ level: "warning" });
  const server = startServer({ host: "127.0.0.1", port: 0, requesterPort: 0 });
  console.log(
    `Server: workers on ${server.workerUrl}, requesters on ${server.requesterUrl}`,
  );

  const specs = [
    { name: "worker-a", weight: 1, concurrency: 4 },
    { name: "worker-b", weight: 1, concurrency: 4 },
    { name: "worker-c", weight: 2, concurrency: 8 },
  ];
  const markets = specs.map(() => createMarketService({ providers: ["demo"] }));
  const workers = specs.map((spec, i) => {
    const worker = new Worker({ url: server.workerUrl, ...spec });
    for (const [name, handler] of Object.entries(markets[i].actions())) {
      worker.registerAction(name, handler);
    }
    void worker.start();
    return worker;
  });
  const ids = await Promise.all(workers.map((w) => w.ready()));
  const nameOf = new Map(ids.map((id, i) => [id, specs[i].name]));
  console.log(
    `Workers: ${
      specs.map((s, i) => `${s.name} (${ids[i]}, weight ${s.weight})`).join(
        ", ",
      )
    }\n`,
  );

  const client = new RequesterClient(server.requesterUrl);
  await client.connect();

  console.log("One at a time:");
  for (
    const [command, data] of [
      ["get_time", {}],
      ["get_system_info", {}],
      ["get_time", {}],
      ["get_market", {
        symbol_type: "etf",
        code: "510300",
        start_date: "2025-09-01",
      }],
    ] as const
  ) {
    const answer = await client.request(command, data);
    const summary = command === "get_system_info"
      ? `${(answer.data as { os: string }).os}, ${
        (answer.data as { runtime: string }).runtime
      }`
      : command === "get_market"
      ? `${(answer.data as { data: unknown[] }).data.length} bars`
      : String(answer.data);
    console.log(
      `  ${pad(command, 16)} → ${
        pad(nameOf.get(answer.processed_by!) ?? "?", 9)
      } ${summary}`,
    );
  }

  console.log(
    "\nA burst of 60 concurrent requests (least_loaded; worker-c has weight 2 and 8 slots):",
  );
  const burst = await Promise.all(
    Array.from({ length: 60 }, () => client.request("get_system_info")),
  );
  const served = new Map<string, number>();
  for (const answer of burst) {
    const name = nameOf.get(answer.processed_by!) ?? "?";
    served.set(name, (served.get(name) ?? 0) + 1);
  }
  for (const spec of specs) {
    console.log(`  ${pad(spec.name, 9)} ${served.get(spec.name) ?? 0}`);
  }

  console.log(
    `\nA batch of ${SYMBOLS.length} symbols (get_markets, demo provider):`,
  );
  const items = SYMBOLS.map(([symbol_type, code]) => ({
    symbol_type,
    code,
    period: "daily",
    start_date: "2025-01-01",
    end_date: "2025-10-22",
    adjust: "qfq",
  }));
  const batch = await client.request("get_markets", items);
  const data = batch.data as {
    results: Record<string, unknown>[];
    summary: { total: number; success: number; failed: number };
    distributed: { workers_used: number; elapsed_time: number };
  };
  console.log(
    `  ${pad("type", 6)}${pad("code", 8)}${pad("name", 22)}${pad("bars", 6)}${
      pad("first", 12)
    }` +
      `${pad("last", 12)}${pad("close", 9)}${pad("worker", 10)}source`,
  );
  data.results.forEach((r, i) => {
    const bars = (r.data ?? []) as { date: string; close: number }[];
    console.log(
      `  ${pad(items[i].symbol_type, 6)}${pad(String(r.code), 8)}${
        pad(String(r.name ?? "-"), 22)
      }` +
        `${pad(bars.length, 6)}${pad(bars[0]?.date ?? "-", 12)}` +
        `${pad(bars.at(-1)?.date ?? "-", 12)}${
          pad(bars.at(-1)?.close ?? "-", 9)
        }` +
        `${pad(nameOf.get(String(r.processed_by)) ?? "-", 10)}${
          r.source ?? r.error
        }`,
    );
  });
  console.log(
    `\n  ${batch.processed_by}: ${data.summary.success}/${data.summary.total} succeeded ` +
      `in ${data.distributed.elapsed_time} s`,
  );

  const again = await client.request("get_markets", items);
  const moved =
    (again.data as typeof data).results.filter((r, i) =>
      r.processed_by !== data.results[i].processed_by
    ).length;
  console.log(
    `  Same batch again: ${
      items.length - moved
    }/${items.length} symbols on the same worker`,
  );

  // The same batch through `requester.ts markets`, the way a user saves a universe to files.
  // A folder of one's own is kept (`--out DIR`); the default one goes at exit, so that runs
  // leave nothing behind.
  const at = Deno.args.indexOf("--out");
  const keep = at >= 0 ? Deno.args[at + 1] : undefined;
  if (keep !== undefined) await Deno.mkdir(keep, { recursive: true });
  const folder = keep ?? await Deno.makeTempDir({ prefix: "switchyard-demo-" });
  const listFile = `${folder}/symbols.csv`;
  await Deno.writeTextFile(
    listFile,
    "code,type\n" + SYMBOLS.map(([type, code]) => `${code},${type}`).join("\n"),
  );
  const outDir = `${folder}/csv`;
  console.log(
    `\nThe batch into CSV files, one per symbol, with the markets command:\n` +
      `  $ deno task requester --url ${server.requesterUrl} markets --file ${listFile} \\\n` +
      `      --start 2025-01-01 --end 2025-10-22 --out ${outDir}`,
  );
  let jobOutput = "";
  const jobExit = await marketsCommand({
    url: server.requesterUrl,
    codes: [],
    file: listFile,
    type: "etf",
    start_date: "2025-01-01",
    end_date: "2025-10-22",
    outDir,
    format: "csv",
    columns: "english",
    resume: false,
    progress: "none",
  }, {
    stdout: () => {},
    stderr: (text) => jobOutput += text,
    readStdin: () => Promise.resolve(""),
  });
  for (const line of jobOutput.trim().split("\n")) console.log(`  ${line}`);
  const files = [...Deno.readDirSync(outDir)].filter((e) =>
    e.name.endsWith(".csv")
  ).map((e) => e.name).sort();
  const sample = `${outDir}/etf_510300_daily_qfq.csv`;
  const head = Deno.readTextFileSync(sample).split("\n").slice(0, 3);
  console.log(
    `  ${files.length} CSV files in ${outDir}\n  ${sample}:\n` +
      head.map((l) => `    ${l}`).join("\n") +
      (keep === undefined
        ? `\n  (removed at exit: \`deno task demo --out DIR\` keeps them in DIR)`
        : ""),
  );

  console.log("\nSummary:");
  for (const w of server.broker.workers()) {
    console.log(
      `  ${pad(w.name, 9)} served ${
        pad(w.served, 4)
      } failures ${w.failures}  ` +
        `recent latency ${w.latency_ms} ms`,
    );
  }
  const failed = burst.filter((a) => !a.success).length + data.summary.failed +
    (jobExit === 0 ? 0 : 1);
  console.log(
    `  ${
      failed === 0
        ? "All requests answered successfully."
        : `${failed} failures.`
    }`,
  );

  await client.close();
  await Promise.all(workers.map((w) => w.stop()));
  for (const m of markets) m.close();
  await server.close();
  if (keep === undefined) await Deno.remove(folder, { recursive: true });
  if (failed > 0) Deno.exit(1);
}

if (import.meta.main) await main();
