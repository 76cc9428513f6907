// The three programs as subprocesses, talking over real sockets.

import assert from "node:assert/strict";
import { startFakeEastmoney } from "./_fake_eastmoney.ts";
import { connectClient, group } from "./_helpers.ts";
import {
  marketWorkers,
  Program,
  runProgram,
  startServerProgram,
  waitForHealth,
} from "./_procs.ts";

Deno.test("e2e - server, two workers and the requester CLI serve commands and stop cleanly", async () => {
  await using server = await startServerProgram();
  const url = `ws://127.0.0.1:${server.workerPort}`;
  await using workers = group<Program>();
  for (const name of ["one", "two"]) {
    workers.push(
      new Program("worker.ts", [
        "--url",
        url,
        "--name",
        name,
        "--provider",
        "demo",
        "--no-console",
      ]),
    );
  }
  await waitForHealth(server.workerPort, (h) => h.workers === 2);
  const host = ["127.0.0.1", String(server.requesterPort)];

  const time = await runProgram("requester.ts", [...host, "get_time"]);
  assert.equal(time.code, 0, time.stderr);
  const answer = JSON.parse(time.stdout);
  assert.equal(answer.success, true);
  assert.match(answer.data, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
  assert.match(answer.processed_by, /^[a-z0-9]{6}$/);

  const batch = await runProgram("requester.ts", [
    ...host,
    "--compact",
    "get_markets",
    JSON.stringify([
      {
        symbol_type: "etf",
        code: "510300",
        start_date: "2025-01-01",
        end_date: "2025-01-31",
      },
      { symbol_type: "etf", code: "12345" },
      {
        symbol_type: "index",
        code: "000300",
        start_date: "2025-01-01",
        end_date: "2025-01-31",
      },
    ]),
  ]);
  // One item failed: the command says so in its exit code.
  assert.equal(batch.code, 1, batch.stderr);
  const data = JSON.parse(batch.stdout).data;
  assert.deepEqual(data.summary, { total: 3, success: 2, failed: 1 });
  assert.deepEqual(data.results.map((r: { code: string }) => r.code), [
    "510300",
    "12345",
    "000300",
  ]);
  assert.equal(data.results[1].error_code, "INVALID_PARAMS");

  const unknown = await runProgram("requester.ts", [
    ...host,
    "no_such_command",
  ]);
  assert.equal(unknown.code, 1);
  assert.equal(JSON.parse(unknown.stdout).success, false);

  const badFlag = await runProgram("requester.ts", [
    ...host,
    "--timeout",
    "soon",
    "get_time",
  ]);
  assert.equal(badFlag.code, 2);
  assert.match(badFlag.stderr, /Invalid --timeout 'soon'/);

  const badJson = await runProgram("requester.ts", [
    ...host,
    "get_market",
    "{oops",
  ]);
  assert.equal(badJson.code, 2);
  assert.match(badJson.stderr, /Cannot parse json-data/);

  // A worker stops gracefully on SIGTERM and the server notices.
  workers[0].kill("SIGTERM");
  assert.equal((await workers[0].done()).code, 0);
  await waitForHealth(server.workerPort, (h) => h.workers === 1);

  server.program.kill("SIGTERM");
  assert.equal((await server.program.done()).code, 0);
});

Deno.test("e2e - bad flags exit 2 with a one-line reason", async () => {
  for (
    const [script, args, pattern] of [
      ["server.ts", ["--port", "99999"], /Invalid --port '99999'/],
      ["server.ts", ["--strategy", "fastest"], /Invalid --strategy 'fastest'/],
      ["worker.ts", ["--provider", "yahoo"], /Invalid --provider/],
      ["worker.ts", ["--concurrency", "0"], /Invalid --concurrency '0'/],
    ] as const
  ) {
    const out = await runProgram(script, [...args]);
    assert.equal(out.code, 2, `${script} ${args.join(" ")}: ${out.stderr}`);
    assert.match(out.stderr, pattern);
    assert.equal(out.stderr.trim().split("\n").length, 1, out.stderr);
  }
});

Deno.test("e2e - a batch of 120 items over 3 worker processes survives a worker killed mid-batch, its unfinished items re-sent", async () => {
  await using upstream = await startFakeEastmoney({
    synthetic: true,
    latencyMs: 40,
  });
  await using server = await startServerProgram();
  const url = `ws://127.0.0.1:${server.workerPort}`;
  await using workers = group(marketWorkers(url, upstream.url, 3));
  await waitForHealth(server.workerPort, (h) => h.workers === 3);
  await using client = await connectClient(
    `ws://127.0.0.1:${server.requesterPort}`,
  );
  const prefixes = ["510", "512", "159", "588"];
  const items = Array.from({ length: 120 }, (_, i) => ({
    symbol_type: "etf",
    code: `${prefixes[i % 4]}${String(100 + i).padStart(3, "0")}`,
    start_date: "2015-01-01",
    end_date: "2015-03-31",
  }));
  let killed = false;
  const answer = await client.request("get_markets", items, {
    timeout: 60,
    onProgress: ({ done }) => {
      if (!killed && done >= 10) {
        killed = true;
        workers[1].kill("SIGKILL");
      }
    },
  });
  assert.equal(
    killed,
    true,
    "the batch ended before a worker could be killed",
  );
  assert.equal(answer.success, true, answer.error ?? "");
  const data = answer.data as {
    results: { success: boolean; code: string; data: unknown[] }[];
    summary: { total: number; success: number; failed: number };
  };
  assert.equal(data.results.length, items.length);
  data.results.forEach((r, i) => {
    assert.equal(r.code, items[i].code, `item ${i} out of order`);
    assert.equal(r.success, true, JSON.stringify(r));
    assert.ok(r.data.length > 0);
  });
  assert.deepEqual(data.summary, { total: 120, success: 120, failed: 0 });
  // Every code is asked of the upstream by exactly one worker, unless the worker holding it
  // died first and the item was re-sent: the killed worker had unfinished items, and they
  // went elsewhere.
  const resent = items.filter((item) => upstream.callsFor(item.code) > 1);
  assert.ok(
    resent.length > 0,
    "no item was fetched twice: the killed worker held nothing unfinished",
  );
  assert.ok(items.every((item) => upstream.callsFor(item.code) >= 1));
});

Deno.test("e2e - the server warns loudly when it listens beyond loopback without tokens", async () => {
  const open = new Program("server.ts", [
    "--host",
    "0.0.0.0",
    "--port",
    "0",
    "--requester-port",
    "0",
    "--no-console",
  ]);
  try {
    const match = await open.waitFor(
      /without tokens: anyone who can reach this machine/,
    );
    assert.match(match.input!, /\[WRN\]/);
  } finally {
    await open.stop();
  }
  // Tokens from the environment silence it.
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../server.ts", import.meta.url).pathname,
      "--host",
      "0.0.0.0",
      "--port",
      "0",
      "--requester-port",
      "0",
      "--no-console",
    ],
    env: {
      NO_COLOR: "1",
      SWITCHYARD_WORKER_TOKEN: "w-secret",
      SWITCHYARD_REQUESTER_TOKEN: "r-secret",
    },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  // A server that never says it listens is killed, which ends the read: no hang.
  const bound = setTimeout(() => child.kill("SIGKILL"), 20_000);
  try {
    while (!/Requester port listening/.test(text)) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
  } finally {
    clearTimeout(bound);
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await reader.cancel();
    await child.stdout.cancel();
    await child.status;
  }
  assert.match(text, /Requester port listening/);
  assert.doesNotMatch(
    text,
    /without tokens|without a worker token|without a requester token/,
  );
  assert.doesNotMatch(text, /w-secret|r-secret/);
});
