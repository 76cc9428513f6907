import assert from "node:assert/strict";
import { createMarketService } from "../lib/market/mod.ts";
import type { Worker } from "../lib/worker/worker_client.ts";
import { parseSymbolList } from "../lib/requester/symbols.ts";
import { startFakeEastmoney } from "./_fake_eastmoney.ts";
import { startTestServer, startWorker, tempDir, waitFor } from "./_helpers.ts";
import { Program, runProgram } from "./_procs.ts";
import type { RunningServer } from "../lib/broker/server.ts";

function codes(n: number): string[] {
  const prefixes = ["510", "512", "159", "588"];
  return Array.from(
    { length: n },
    (_, i) =>
      `${prefixes[i % prefixes.length]}${
        String(100 + Math.floor(i / prefixes.length)).padStart(3, "0")
      }`,
  );
}

/**
 * Workers with fresh market services: an empty cache, so every series costs an upstream call.
 * `stop()`, or `await using`, stops them.
 */
async function marketWorkers(
  server: RunningServer,
  upstreamUrl: string,
  n: number,
): Promise<{ stop(): Promise<void> } & AsyncDisposable> {
  const services = Array.from(
    { length: n },
    () =>
      createMarketService({
        eastmoneyUrl: upstreamUrl,
        rateLimit: 0,
        retries: 0,
      }),
  );
  const workers: Worker[] = [];
  const stop = async () => {
    await Promise.all(workers.map((w) => w.stop(0)));
    for (const s of services) s.close();
  };
  try {
    for (const [i, market] of services.entries()) {
      workers.push(
        await startWorker(server, {
          name: `m${i}`,
          concurrency: 2,
          actions: market.actions(),
        }),
      );
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { stop, [Symbol.asyncDispose]: stop };
}

async function csvFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.endsWith(".csv")) out.push(e.name);
  }
  return out.sort();
}

const RANGE = ["--start", "2015-01-01", "--end", "2015-06-30"];

Deno.test("markets CLI - an interrupted run resumed: no symbol fetched twice, every file complete, and a third run makes 0 upstream calls", async () => {
  await using upstream = await startFakeEastmoney({
    synthetic: true,
    syntheticEnd: "2015-12-31",
    latencyMs: 60,
  });
  await using server = startTestServer();
  await using tmp = await tempDir("markets_cli_");
  const dir = tmp.path;
  const list = codes(40);
  const listFile = `${dir}/list.txt`;
  await Deno.writeTextFile(listFile, list.join("\n") + "\n");
  const out = `${dir}/out`;
  const args = [
    "--url",
    server.requesterUrl,
    "markets",
    "--file",
    listFile,
    "--out",
    out,
    "--batch-size",
    "10",
    ...RANGE,
  ];
  let workers = await marketWorkers(server, upstream.url, 2);
  try {
    // Run 1, killed once a few files are there.
    const first = new Program("requester.ts", args);
    try {
      await waitFor(
        () => {
          try {
            return [...Deno.readDirSync(out)].filter((e) =>
              e.name.endsWith(".csv")
            ).length >= 6;
          } catch {
            return false;
          }
        },
        "the first files",
        20_000,
      );
    } finally {
      await first.stop("SIGKILL");
    }
    const before = await csvFiles(out);
    assert.ok(before.length >= 6 && before.length < 40, `${before.length}`);

    // Fresh workers: whatever run 2 needs must come from upstream, so the count tells all.
    await workers.stop();
    workers = await marketWorkers(server, upstream.url, 2);
    const callsBefore = upstream.calls;
    const second = await runProgram("requester.ts", [...args, "--resume"]);
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stderr, new RegExp(`skipped\\s+${before.length}`));
    const fetched = upstream.requests.slice(callsBefore).map((r) => r.code);
    const had = new Set(before.map((f) => f.split("_")[1]));
    assert.deepEqual(
      fetched.filter((c) => had.has(c)),
      [],
      "a symbol whose file existed was fetched again",
    );
    assert.equal(new Set(fetched).size, 40 - before.length);

    const files = await csvFiles(out);
    assert.deepEqual(
      files,
      list.map((c) => `etf_${c}_daily_qfq.csv`).sort(),
    );
    const rows = new Set<number>();
    for (const f of files) {
      const text = await Deno.readTextFile(`${out}/${f}`);
      const lines = text.trimEnd().split("\n");
      assert.equal(
        lines[0],
        "date,open,high,low,close,volume,amount,amplitude,pct_change,change,turnover",
      );
      assert.ok(text.endsWith("\n"));
      assert.match(lines[1], /^2015-01-0\d,/);
      assert.match(lines.at(-1)!, /^2015-06-\d\d,/);
      rows.add(lines.length);
    }
    assert.equal(rows.size, 1, "every file holds the same complete range");
    assert.deepEqual(
      [...Deno.readDirSync(out)].filter((e) => e.name.endsWith(".tmp")),
      [],
      "no temporary files left",
    );

    const callsAfter = upstream.calls;
    const third = await runProgram("requester.ts", [...args, "--resume"]);
    assert.equal(third.code, 0, third.stderr);
    assert.match(third.stderr, /skipped\s+40/);
    assert.equal(upstream.calls - callsAfter, 0, "upstream calls on run 3");
  } finally {
    await workers.stop();
  }
});

Deno.test("markets CLI - failures: exit 1, a summary with the reason, and a failed.txt that reads back as a symbol list; akshare columns", async () => {
  await using upstream = await startFakeEastmoney({
    synthetic: true,
    syntheticEnd: "2015-12-31",
    unknownCodes: ["510999"],
  });
  await using server = startTestServer();
  await using _workers = await marketWorkers(server, upstream.url, 1);
  await using tmp = await tempDir("markets_cli_");
  const dir = tmp.path;
  const run = await runProgram("requester.ts", [
    "--url",
    server.requesterUrl,
    "markets",
    "510300",
    "510999",
    "--out",
    dir,
    "--columns",
    "akshare",
    ...RANGE,
  ]);
  assert.equal(run.code, 1, run.stderr);
  assert.match(run.stderr, /failed\s+1/);
  assert.match(run.stderr, /510999\s+UNKNOWN_CODE/);
  const failed = await Deno.readTextFile(`${dir}/failed.txt`);
  assert.deepEqual(parseSymbolList(failed, "stock"), [
    { code: "510999", symbol_type: "etf" },
  ]);
  const csv = await Deno.readTextFile(`${dir}/etf_510300_daily_qfq.csv`);
  assert.equal(
    csv.split("\n")[0],
    "日期,开盘,收盘,最高,最低,成交量,成交额,振幅,涨跌幅,涨跌额,换手率",
  );
  assert.deepEqual(await csvFiles(dir), ["etf_510300_daily_qfq.csv"]);
});

Deno.test("markets CLI - bad flags exit 2 with one line, an unreachable server exits 3", async () => {
  for (
    const [args, pattern] of [
      [["markets", "51030x"], /Invalid code '51030x'/],
      [["markets", "510300", "--type", "fund"], /Invalid --type 'fund'/],
      [
        ["markets", "510300", "--format", "table", "--out", "x"],
        /--format table/,
      ],
      [["markets", "510300", "--resume"], /--resume needs --out/],
      [["markets"], /no symbols/],
    ] as const
  ) {
    const run = await runProgram("requester.ts", [
      "--url",
      "ws://127.0.0.1:9",
      ...args,
    ]);
    assert.equal(run.code, 2, `${args.join(" ")}: ${run.stderr}`);
    assert.match(run.stderr, pattern);
    assert.equal(run.stderr.trim().split("\n").length, 1, run.stderr);
  }
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const run = await runProgram("requester.ts", [
    "--url",
    `ws://127.0.0.1:${port}`,
    "markets",
    "510300",
  ]);
  assert.equal(run.code, 3, run.stderr);
  assert.match(run.stderr, /Cannot connect/);
});

Deno.test("demo - ends by writing its batch to CSV files through the markets command and says where; it leaves no folder behind unless told where", async () => {
  const run = await runProgram("examples/demo.ts", []);
  assert.equal(run.code, 0, run.stderr);
  const m = run.stdout.match(/(\d+) CSV files in (\S+)/);
  assert.ok(m, run.stdout);
  assert.equal(Number(m[1]), 20);
  assert.match(run.stdout, /\$ deno task requester .* markets --file /);
  assert.match(run.stdout, /removed at exit: `deno task demo --out DIR` keeps/);
  const folder = m[2].replace(/\/csv$/, "");
  await assert.rejects(Deno.stat(folder), Deno.errors.NotFound, folder);

  await using dir = await tempDir("switchyard_demo_out_");
  const kept = await runProgram("examples/demo.ts", ["--out", dir.path]);
  assert.equal(kept.code, 0, kept.stderr);
  const names = await csvFiles(`${dir.path}/csv`);
  assert.equal(names.length, 20);
  assert.ok(names.includes("index_000300_daily_qfq.csv"));
});

Deno.test("markets CLI - --all lists the universe through list_symbols, and without --out prints one CSV with the symbol leading each row", async () => {
  await using server = startTestServer();
  const asked: unknown[] = [];
  await using _worker = await startWorker(server, {
    actions: {
      list_symbols: (params) => {
        asked.push(params);
        return {
          success: true,
          symbol_type: "etf",
          count: 2,
          symbols: [
            { code: "510300", name: "沪深300ETF" },
            { code: "159915", name: "创业板ETF" },
          ],
        };
      },
      get_markets: (params) =>
        (params as { code: string }[]).map((p) => ({
          success: true,
          code: p.code,
          data: [{
            date: "2025-01-02",
            open: 1,
            high: 2,
            low: 0.5,
            close: 1.5,
            volume: 7,
          }],
        })),
    },
  });
  const run = await runProgram("requester.ts", [
    "--url",
    server.requesterUrl,
    "markets",
    "--all",
    "etf",
    "--format",
    "csv",
  ]);
  assert.equal(run.code, 0, run.stderr);
  assert.deepEqual(asked, [{ symbol_type: "etf" }]);
  const lines = run.stdout.trim().split("\n");
  assert.equal(
    lines[0],
    "symbol_type,code,date,open,high,low,close,volume,amount,amplitude,pct_change,change,turnover",
  );
  assert.deepEqual(lines.slice(1).sort(), [
    "etf,159915,2025-01-02,1,2,0.5,1.5,7,,,,,",
    "etf,510300,2025-01-02,1,2,0.5,1.5,7,,,,,",
  ]);
});
