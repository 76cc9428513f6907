// requester.ts as a script sees it: one exit code per cause, the same for a one-shot command and
// for `markets`, and listed in --help.
import assert from "node:assert/strict";
import { createMarketService } from "../lib/market/mod.ts";
import { setupLogging } from "../lib/mod.ts";
import { startTestServer, startWorker } from "./_helpers.ts";
import { Program, runProgram, spawnRequesterConsole } from "./_procs.ts";

setupLogging({ level: "error" });

/** A loopback port nothing listens on. */
function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

const ETF = '{"symbol_type":"etf","code":"510300"}';

Deno.test("requester - --help lists one exit code per cause", async () => {
  for (const args of [["--help"], ["markets", "--help"]]) {
    const out = await runProgram("requester.ts", args);
    assert.equal(out.code, 0);
    for (const code of ["0", "1", "2", "3", "4", "5", "130"]) {
      assert.match(out.stdout, new RegExp(`^  ${code} +\\S`, "m"), code);
    }
  }
});

Deno.test("requester - an unreachable server exits 3, from a command and from markets", async () => {
  const url = `ws://127.0.0.1:${closedPort()}`;
  for (const args of [["get_time"], ["markets", "510300", "--quiet"]]) {
    const out = await runProgram("requester.ts", ["--url", url, ...args]);
    assert.equal(out.code, 3, out.stderr);
    assert.match(out.stderr, /Cannot connect/);
  }
});

Deno.test("requester - a refused token exits 4 and the worker port exits 5, from a command and from markets", async () => {
  await using server = startTestServer({
    requesterToken: "right",
    workerToken: "other",
  });
  await using open = startTestServer();
  for (const args of [["get_time"], ["markets", "510300", "--quiet"]]) {
    const refused = await runProgram("requester.ts", [
      "--url",
      server.requesterUrl,
      "--token",
      "wrong",
      ...args,
    ]);
    assert.equal(refused.code, 4, refused.stderr);
    assert.match(refused.stderr, /unauthorized/);
    const wrongPort = await runProgram("requester.ts", [
      "--url",
      open.workerUrl,
      ...args,
    ]);
    assert.equal(wrongPort.code, 5, wrongPort.stderr);
    assert.match(wrongPort.stderr, /is the worker port/);
  }
});

Deno.test("requester - exits 1 when a nested data.success or a batch item is false, 0 when all succeeded", async () => {
  await using server = startTestServer();
  // markets --all asks the workers for the list; with none to answer, the answer failed.
  const unlisted = await runProgram("requester.ts", [
    "--url",
    server.requesterUrl,
    "markets",
    "--all",
    "etf",
    "--quiet",
  ]);
  assert.equal(unlisted.code, 1, unlisted.stderr);
  assert.match(unlisted.stderr, /Cannot list etf symbols/);
  // An upstream that refuses connections: the action runs, and its answer says it failed.
  const down = createMarketService({
    eastmoneyUrl: `http://127.0.0.1:${closedPort()}`,
    providers: ["eastmoney"],
    rateLimit: 0,
  });
  try {
    await using _worker = await startWorker(server, {
      name: "down",
      actions: down.actions(),
    });
    const one = await runProgram("requester.ts", [
      "--url",
      server.requesterUrl,
      "get_market",
      ETF,
    ]);
    assert.equal(one.code, 1, one.stdout + one.stderr);
    const answer = JSON.parse(one.stdout);
    assert.equal(answer.success, true);
    assert.equal(answer.data.success, false);
    const batch = await runProgram("requester.ts", [
      "--url",
      server.requesterUrl,
      "get_markets",
      `[${ETF}]`,
    ]);
    assert.equal(batch.code, 1, batch.stdout + batch.stderr);
    assert.equal(JSON.parse(batch.stdout).data.summary.failed, 1);
  } finally {
    down.close();
  }
  const demo = createMarketService({ providers: ["demo"] });
  try {
    await using _worker = await startWorker(server, {
      name: "demo",
      actions: demo.actions(),
    });
    const ok = await runProgram("requester.ts", [
      "--url",
      server.requesterUrl,
      "get_markets",
      `[${ETF}]`,
    ]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  } finally {
    demo.close();
  }
});

Deno.test("flags - an unknown flag names the closest one, and a port past 65535 is refused at once", async () => {
  const typo = await runProgram("worker.ts", ["--nmae", "x"]);
  assert.equal(typo.code, 2, typo.stderr);
  assert.match(typo.stderr, /Unknown option '--nmae': did you mean --name\?/);
  assert.equal(
    (typo.stderr.match(/'/g) ?? []).length % 2,
    0,
    "balanced quotes",
  );
  for (const script of ["worker.ts", "requester.ts"]) {
    const out = await runProgram(script, [
      "--url",
      "ws://localhost:87655",
      ...(script === "requester.ts" ? ["get_time"] : []),
    ]);
    assert.equal(out.code, 2, `${script}: ${out.stderr}`);
    assert.match(out.stderr, /port 87655 is past 65535/);
  }
  const help = await runProgram("requester.ts", ["--help"]);
  assert.doesNotMatch(help.stdout, /if its drops/);
});

Deno.test("wrong port - named whatever the tokens: a requester with its token on the worker port, a worker with its token on the requester port", async () => {
  await using server = startTestServer({
    requesterToken: "req-secret",
    workerToken: "wrk-secret",
  });
  const requesterPort = new URL(server.requesterUrl).port;
  const workerPort = new URL(server.workerUrl).port;
  for (const args of [["get_time"], ["markets", "510300", "--quiet"]]) {
    const out = await runProgram("requester.ts", [
      "--url",
      server.workerUrl,
      "--token",
      "req-secret",
      ...args,
    ]);
    assert.equal(out.code, 5, out.stderr);
    assert.match(
      out.stderr,
      new RegExp(
        `is the worker port: requesters connect to the requester port ${requesterPort}`,
      ),
    );
    assert.doesNotMatch(out.stderr, /unauthorized/i);
  }
  await using worker = new Program("worker.ts", [
    "--url",
    server.requesterUrl,
    "--provider",
    "demo",
    "--no-console",
  ], { SWITCHYARD_WORKER_TOKEN: "wrk-secret" });
  await worker.waitFor(
    new RegExp(
      `is the requester port: workers connect to the worker port ${workerPort}`,
    ),
  );
  assert.doesNotMatch(worker.lines.join("\n"), /check --token/);
});

Deno.test("requester - commands piped to the console exit 1 when any answer failed, 0 when none did", async () => {
  await using server = startTestServer();
  const run = async (input: string) => {
    const child = spawnRequesterConsole(server.requesterUrl);
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(input));
    await writer.close();
    return await child.output();
  };
  const ok = await run('get_time\ncalculate {"a": 1, "b": 2}\n');
  assert.equal(ok.code, 0, new TextDecoder().decode(ok.stderr));
  const failed = await run(
    'calculate {"a": 1, "b": 2, "operation": "*"}\nget_time\n',
  );
  assert.equal(failed.code, 1, new TextDecoder().decode(failed.stderr));
});
