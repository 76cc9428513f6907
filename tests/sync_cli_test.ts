import assert from "node:assert/strict";
import { storeSubcommand, untilNext } from "../lib/requester/sync_cli.ts";
import { MarketStore } from "../lib/store/store.ts";
import { tempDir } from "./_helpers.ts";

const REQUESTER = new URL("../requester.ts", import.meta.url).pathname;

async function requester(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", REQUESTER, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("sync --every-day - waits for the next weekday at HH:MM Shanghai", () => {
  // Friday 2026-03-20 16:00 Shanghai (08:00 UTC): 15:40 has passed, the next is Monday 15:40.
  const friday = Date.parse("2026-03-20T08:00:00Z");
  assert.equal(
    friday + untilNext(15 * 60 + 40, friday),
    Date.parse("2026-03-23T07:40:00Z"),
  );
  // Thursday 2026-03-19 10:00 Shanghai: the same day.
  const thursday = Date.parse("2026-03-19T02:00:00Z");
  assert.equal(
    thursday + untilNext(15 * 60 + 40, thursday),
    Date.parse("2026-03-19T07:40:00Z"),
  );
});

Deno.test("requester - sync and store are found after HOST PORT and value flags", () => {
  const flags = new Set(["--url", "--timeout"]);
  assert.equal(storeSubcommand(["sync", "--all", "etf"], flags), "sync");
  assert.equal(
    storeSubcommand(["localhost", "8766", "store", "status"], flags),
    "store",
  );
  assert.equal(storeSubcommand(["--store", "x.duckdb", "sync"], flags), "sync");
  assert.equal(storeSubcommand(["get_market", "{}"], flags), undefined);
  assert.equal(
    storeSubcommand(["--url", "sync", "get_time"], flags),
    undefined,
  );
});

Deno.test("requester store - status and export read a store; bad use says what is wrong", async () => {
  await using dir = await tempDir("store_cli_");
  const path = `${dir.path}/s.duckdb`;
  const store = await MarketStore.open(path);
  await store.commit({
    replace: [{
      key: { symbolType: "etf", code: "510300", adjust: "qfq" },
      bars: [
        {
          date: "2026-03-19",
          open: 1,
          high: 2,
          low: 0.5,
          close: 1.5,
          volume: 10,
        },
        {
          date: "2026-03-20",
          open: 1.5,
          high: 2,
          low: 1,
          close: 1.8,
          volume: 12,
        },
      ],
    }],
    meta: { last_sync_day: "2026-03-20" },
  });
  await store.close();
  const status = await requester("store", "status", "--store", path);
  assert.equal(status.code, 0, status.stderr);
  assert.match(status.stdout, /last sync\s+2026-03-20/);
  assert.match(status.stdout, /etf\s+qfq\s+1\s+2\s+2026-03-20\s+0/);
  const exported = await requester(
    "store",
    "export",
    "--store",
    path,
    "--format",
    "csv",
    "--out",
    `${dir.path}/out`,
  );
  assert.equal(exported.code, 0, exported.stderr);
  const csv = await Deno.readTextFile(`${dir.path}/out/bars.csv`);
  assert.equal(csv.trim().split("\n").length, 3);
  const bad = await requester(
    "store",
    "export",
    "--store",
    path,
    "--format",
    "xlsx",
    "--out",
    dir.path,
  );
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /Invalid --format 'xlsx': expected parquet or csv/);
  const none = await requester("sync", "--store", path);
  assert.equal(none.code, 2);
  assert.match(
    none.stderr,
    /no symbols: give codes, --file FILE or --all etf,stock,index/,
  );
  const missing = await requester(
    "store",
    "status",
    "--store",
    `${dir.path}/nope.duckdb`,
  );
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /no store at/);
});
