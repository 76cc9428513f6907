// The default pacing and the default deadline agree: a market command sent without a timeout
// gets the default deadline plus the upstream slots its items need at the workers' announced
// rate. The programs run as a user runs them, with the pacing harsher than the shipped one (an
// upstream slot every 4 s against a 2 s default deadline; shipped: 30 s against 30 s).
import assert from "node:assert/strict";
import { setupLogging } from "../lib/mod.ts";
import { startFakeEastmoney } from "./_fake_eastmoney.ts";
import {
  answerOf,
  connectClient,
  openRawWorker,
  respond,
  startTestServer,
  waitFor,
} from "./_helpers.ts";
import { Program, runProgram, startServerProgram } from "./_procs.ts";

setupLogging({ level: "error" });

const RATE = "0.25"; // one upstream request per 4 s (± the limiter's 30% jitter)
const DEADLINE = "2"; // the server's default deadline, in seconds

function worker(port: number, upstream: string, name: string): Program {
  return new Program("worker.ts", [
    "--url",
    `ws://127.0.0.1:${port}`,
    "--name",
    name,
    "--eastmoney-url",
    upstream,
    "--rate-limit",
    RATE,
    "--no-console",
  ]);
}

/** A loopback port nothing listens on. */
function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

const market = (code: string) => ({
  symbol_type: "etf",
  code,
  period: "daily",
  start_date: "2024-01-01",
  adjust: "qfq",
});

Deno.test("pacing - two get_market in a row and the README's 2-symbol get_markets succeed at a pacing slower than the deadline", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  await using server = await startServerProgram(["--timeout", DEADLINE]);
  await using _worker = worker(server.workerPort, fake.url, "paced");
  await server.program.waitFor(/registered as paced/);
  await using client = await connectClient(
    `ws://127.0.0.1:${server.requesterPort}`,
    { timeout: undefined },
  );
  // Back to back: the second waits a whole upstream slot, twice the default deadline.
  const [first, second] = await Promise.all([
    client.request("get_market", market("510300")),
    client.request("get_market", market("159915")),
  ]);
  for (const answer of [first, second]) {
    assert.equal(answer.success, true, JSON.stringify(answer));
    assert.equal((answer.data as { success: boolean }).success, true);
  }
  const batch = await runProgram("requester.ts", [
    "127.0.0.1",
    String(server.requesterPort),
    "--compact",
    "get_markets",
    JSON.stringify([
      { symbol_type: "etf", code: "510500" },
      { symbol_type: "index", code: "000300" },
    ]),
  ]);
  assert.equal(batch.code, 0, batch.stdout + batch.stderr);
  assert.deepEqual(JSON.parse(batch.stdout).data.summary, {
    total: 2,
    success: 2,
    failed: 0,
  });
  assert.equal(fake.calls, 4, "one upstream call per symbol");
});

Deno.test("pacing - a worker whose upstream refuses or does not resolve answers that error within the deadline, not a timeout", async () => {
  await using server = await startServerProgram(["--timeout", DEADLINE]);
  for (
    const [name, upstream, error] of [
      ["refused", `http://127.0.0.1:${closedPort()}`, /refused/i],
      ["unresolvable", "http://switchyard-test.invalid", /dns|lookup/i],
    ] as const
  ) {
    await using w = worker(server.workerPort, upstream, name);
    await server.program.waitFor(new RegExp(`registered as ${name}`));
    await using client = await connectClient(
      `ws://127.0.0.1:${server.requesterPort}`,
      { timeout: undefined },
    );
    const answers = await Promise.all([
      client.request("get_market", market("510300")),
      client.request("get_market", market("159915")),
    ]);
    for (const answer of answers) {
      assert.equal(answer.success, true, `${name}: ${JSON.stringify(answer)}`);
      const data = answer.data as { success: boolean; error: string };
      assert.equal(data.success, false, name);
      assert.match(data.error, error, name);
    }
    // The worker says why, in its own log, as it happens.
    await w.waitFor(/Provider eastmoney failed for 510300/);
    w.kill();
    await w.done();
    await server.program.waitFor(new RegExp(`\\(${name}\\) disconnected`));
  }
});

Deno.test("pacing - a worker waiting for its announced upstream slots is not called silent; past them it is", async () => {
  let offset = 0;
  const clock = { now: () => Date.now() + offset };
  await using server = startTestServer({ clock, silenceMs: 2000 });
  const paced = await openRawWorker(server, { actions: ["get_market"] });
  await using client = await connectClient(server.requesterUrl);
  try {
    // One upstream request a second: each held item may wait 1.3 s (with the jitter).
    paced.peer.sendEnvelope("heartbeat", {
      upstream: {
        hosts: {
          "k.example": {
            cooldown_until: 0,
            budget_hour: null,
            budget_day: null,
            rate: 1,
          },
        },
      },
    });
    const record = server.broker.dispatcher.registry.get(paced.id)!;
    await waitFor(() => record.upstream !== undefined, "the upstream report");
    const held = ["510300", "159915"].map((code) =>
      answerOf(
        client.request("get_market", { code }, { timeout: 30 }),
        `get_market ${code}`,
        35_000,
      )
    );
    const requests = [
      await paced.peer.envelope("request"),
      await paced.peer.envelope("request"),
    ];
    // Silent 4 s: past the 2 s limit, within the 2.6 s two slots explain.
    offset += 4000;
    server.broker.sweep();
    assert.equal(record.healthy, true, "pacing explains the silence");
    offset += 700;
    server.broker.sweep();
    assert.equal(record.healthy, false, "silent beyond its pacing");
    for (const request of requests) {
      respond(paced.peer, request, { success: true, data: [] });
    }
    for (const answer of await Promise.all(held)) {
      assert.equal(answer.success, true);
    }
  } finally {
    await paced.peer.close();
  }
});
