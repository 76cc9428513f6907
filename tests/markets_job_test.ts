// The markets job's output folder across runs: failed.txt says what the last run left undone,
// never what an earlier run did; an empty history is never written as if it were final.
import assert from "node:assert/strict";
import { createMarketService } from "../lib/market/mod.ts";
import { setupLogging } from "../lib/mod.ts";
import { FAILED_FILE, runMarketsJob } from "../lib/requester/markets_job.ts";
import { parseSymbolList } from "../lib/requester/symbols.ts";
import { startFakeEastmoney } from "./_fake_eastmoney.ts";
import {
  connectClient,
  startTestServer,
  startWorker,
  tempDir,
  waitFor,
} from "./_helpers.ts";

setupLogging({ level: "error" });

const RANGE = { start_date: "2020-01-01", end_date: "2020-03-31" };
const etf = (code: string) => ({ symbol_type: "etf" as const, code });

/** A market service on the fake upstream, with no pacing or retries, closed when disposed. */
function marketService(eastmoneyUrl: string) {
  const market = createMarketService({
    eastmoneyUrl,
    rateLimit: 0,
    retries: 0,
  });
  return Object.assign(market, { [Symbol.dispose]: () => market.close() });
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("markets job - failed.txt lists only the last run's failures and is gone after a clean rerun", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  await using server = startTestServer();
  using market = marketService(fake.url);
  await using dir = await tempDir("switchyard_failed_");
  await using _worker = await startWorker(server, {
    actions: market.actions(),
  });
  await using client = await connectClient(server.requesterUrl);
  const failedPath = `${dir.path}/${FAILED_FILE}`;
  const run = (codes: string[], resume = false) =>
    runMarketsJob(client, {
      symbols: codes.map(etf),
      outDir: dir.path,
      resume,
      ...RANGE,
      write: () => Promise.resolve(),
    });

  // 1: one symbol fails.
  fake.fail({ mode: "http503", codes: ["159915"] });
  const first = await run(["510300", "159915"]);
  assert.equal(first.failed.length, 1);
  assert.deepEqual(
    parseSymbolList(await Deno.readTextFile(failedPath), "etf"),
    [etf("159915")],
  );

  // 2: another symbol fails: the file names it, and no longer the first.
  fake.clearFailures();
  fake.fail({ mode: "http503", codes: ["588000"] });
  await run(["159915", "588000"]);
  assert.deepEqual(
    parseSymbolList(await Deno.readTextFile(failedPath), "etf"),
    [etf("588000")],
  );

  // 3: a clean rerun, resumed: nothing failed, so no failures file survives.
  fake.clearFailures();
  const clean = await run(["510300", "159915", "588000"], true);
  assert.equal(clean.failed.length, 0);
  assert.equal(clean.failedFile, undefined);
  assert.equal(await exists(failedPath), false, "stale failed.txt removed");

  // 4: and a clean run without --resume leaves none either.
  await Deno.writeTextFile(failedPath, "code,type\n159915,etf\n");
  await run(["159915"]);
  assert.equal(await exists(failedPath), false, "stale failed.txt removed");
});

Deno.test("markets job - an empty history is listed in failed.txt, never written as a header-only file, and asked again on --resume", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    emptyCodes: ["159999"],
  });
  await using server = startTestServer();
  using market = marketService(fake.url);
  await using dir = await tempDir("switchyard_empty_");
  await using _worker = await startWorker(server, {
    actions: market.actions(),
  });
  await using client = await connectClient(server.requesterUrl);
  const run = () =>
    runMarketsJob(client, {
      symbols: [etf("510300"), etf("159999")],
      outDir: dir.path,
      resume: true,
      ...RANGE,
      write: () => Promise.resolve(),
    });
  const first = await run();
  assert.equal(first.ok, 1);
  assert.deepEqual(
    first.failed.map((f) => [f.code, f.error_code, f.retriable]),
    [["159999", "EMPTY_HISTORY", true]],
  );
  const files = [...Deno.readDirSync(dir.path)].map((e) => e.name).sort();
  assert.deepEqual(files, ["etf_510300_daily_qfq.csv", FAILED_FILE]);
  assert.deepEqual(
    parseSymbolList(
      await Deno.readTextFile(`${dir.path}/${FAILED_FILE}`),
      "etf",
    ),
    [etf("159999")],
  );
  const calls = fake.callsFor("159999");
  const again = await run();
  assert.equal(again.skipped, 1, "510300 is complete");
  assert.equal(again.failed.length, 1);
  assert.ok(fake.callsFor("159999") > calls, "asked the upstream again");
});

Deno.test("markets job - symbols the server refuses for want of upstream budget go back in the queue, not to failed.txt", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  await using server = startTestServer({ heartbeatIntervalMs: 50 });
  using market = marketService(fake.url);
  await using dir = await tempDir("switchyard_budget_");
  const asked: number[] = [];
  const actions = market.actions();
  await using _worker = await startWorker(server, {
    // Three requests left this hour, as its heartbeats say: a batch gets three symbols at most.
    heartbeatData: () => ({
      upstream: {
        hosts: {
          "push2his.eastmoney.com": {
            cooldown_until: 0,
            budget_hour: 3,
            budget_day: 100,
            rate: null,
          },
        },
      },
    }),
    actions: {
      ...actions,
      get_markets: (params, ctx) => {
        asked.push((params as unknown[]).length);
        return actions.get_markets(params, ctx);
      },
    },
  });
  await waitFor(
    () => server.broker.workers().every((w) => w.upstream !== undefined),
    "the worker's upstream report",
  );
  await using client = await connectClient(server.requesterUrl);
  const codes = ["510300", "510500", "159915", "588000", "512880"];
  const report = await runMarketsJob(client, {
    symbols: codes.map(etf),
    outDir: dir.path,
    ...RANGE,
    write: () => Promise.resolve(),
  });
  assert.deepEqual(
    report.failed.map((f) => `${f.code} ${f.error_code}`),
    [],
    "refused symbols failed instead of waiting their turn",
  );
  assert.equal(report.ok, 5);
  assert.equal(await exists(`${dir.path}/${FAILED_FILE}`), false);
  assert.ok(
    asked.length >= 2 && asked.every((n) => n <= 3),
    `the server sent ${
      asked.join(" + ")
    } items: it should refuse beyond the budget`,
  );
});
