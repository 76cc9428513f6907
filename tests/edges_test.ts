// The rough edges a new user meets on the server side: what an unknown command is told, server
// actions without workers, the wrong port both ways, readiness, alike names, lost workers.
import assert from "node:assert/strict";
import { serverCommand } from "../lib/console.ts";
import { Worker, WrongPortError } from "../lib/mod.ts";
import {
  answerOf,
  connectClient,
  emptyBars,
  openRawWorker,
  RawPeer,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";
import { Program, runProgram, startServerProgram } from "./_procs.ts";
import { startFakeEastmoney } from "./_fake_eastmoney.ts";

Deno.test("edges - an unknown command keeps 'No available workers' and lists what is offered", async () => {
  await using server = startTestServer();
  await using _worker = await startWorker(server, {
    actions: { word_count: () => 0 },
  });
  await using client = await connectClient(server.requesterUrl);
  const answer = await client.request("wrod_count");
  assert.equal(answer.success, false);
  assert.equal(answer.error, "No available workers");
  assert.equal(answer.error_code, "UNKNOWN_COMMAND");
  const offered = answer.available_commands!;
  assert.deepEqual(offered, [...offered].sort());
  for (const name of ["word_count", "get_time", "calculate"]) {
    assert.ok(offered.includes(name), `${name} in ${offered}`);
  }
  assert.ok(!offered.includes("wrod_count"));
});

Deno.test("edges - the requester CLI prints the available commands on a failed answer", async () => {
  const { program, workerPort, requesterPort } = await startServerProgram();
  const ask = (command: string) =>
    runProgram("requester.ts", ["127.0.0.1", String(requesterPort), command]);
  let worker: Program | undefined;
  try {
    const alone = await ask("get_tiem");
    assert.equal(alone.code, 1);
    assert.equal(JSON.parse(alone.stdout).error, "No available workers");
    // With no worker, the server's own actions are what can be asked for.
    assert.match(
      alone.stderr,
      /^requester: available commands: calculate, get_client_info, get_time$/m,
    );

    worker = new Program("worker.ts", [
      "127.0.0.1",
      String(workerPort),
      "--provider",
      "demo",
      "--no-console",
    ]);
    await program.waitFor(/registered as/);
    const out = await ask("get_tiem");
    assert.equal(out.code, 1);
    assert.equal(JSON.parse(out.stdout).error, "No available workers");
    assert.match(
      out.stderr,
      /^requester: available commands: calculate, get_client_info, get_market, get_markets, .*get_time/m,
    );
  } finally {
    await worker?.stop("SIGTERM");
    await program.stop("SIGTERM");
  }
});

Deno.test("edges - with no worker connected, server actions answer and other commands get No available workers", async () => {
  await using server = startTestServer();
  await using client = await connectClient(server.requesterUrl);
  assert.equal(server.broker.stats().workers, 0);
  const sum = await client.request("calculate", { a: 10, b: 20, op: "+" });
  assert.equal(sum.success, true, JSON.stringify(sum));
  assert.equal(sum.data, 30);
  assert.equal(sum.processed_by, "server");
  const time = await client.request("get_time");
  assert.equal(time.processed_by, "server");
  assert.match(String(time.data), /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
  const clients = await client.request("get_client_info");
  assert.equal(clients.success, true);
  assert.deepEqual(clients.data, []);
  const bad = await client.request("calculate", { a: 1, b: 0, op: "/" });
  assert.equal(bad.success, false);
  assert.equal(bad.error, "Division by zero");
  assert.equal(bad.processed_by, "server");

  // Anything else: exactly the original's text, and the server actions as what is offered.
  for (const command of ["get_market", "get_markets", "no_such_command"]) {
    const none = await client.request(command, [{ code: "510300" }]);
    assert.equal(none.success, false, command);
    assert.equal(none.error, "No available workers", command);
    assert.equal(none.error_code, "NO_WORKERS", command);
    assert.deepEqual(none.available_commands, [
      "calculate",
      "get_client_info",
      "get_time",
    ]);
  }

  // The HTTP API runs the same way.
  const base = `http://127.0.0.1:${server.requesterPort}`;
  const res = await fetch(`${base}/v1/request`, {
    method: "POST",
    body: JSON.stringify({
      command: "calculate",
      data: { a: 6, b: 7, op: "*" },
    }),
  });
  assert.equal(res.status, 200);
  const answer = await res.json();
  assert.equal(answer.data, 42);
  assert.equal(answer.processed_by, "server");
});

Deno.test("edges - server actions answer requesters while no connected worker offers them, and the console runs them", async () => {
  await using server = startTestServer();
  await using client = await connectClient(server.requesterUrl);
  // A worker that serves other things: the server answers its own actions.
  await using _market = await startWorker(server, {
    name: "market",
    actions: { get_market: () => [] },
  });
  await waitFor(() => server.broker.workers().some((w) => w.registered));
  const sum = await client.request("calculate", { a: 10, b: 20, op: "+" });
  assert.equal(sum.success, true, JSON.stringify(sum));
  assert.equal(sum.data, 30);
  assert.equal(sum.processed_by, "server");
  const bad = await client.request("calculate", { a: 1, b: 0, op: "/" });
  assert.equal(bad.success, false);
  assert.equal(bad.error, "Division by zero");
  assert.equal(bad.processed_by, "server");
  const clients = await client.request("get_client_info");
  assert.equal(clients.processed_by, "server");
  assert.deepEqual(
    (clients.data as { name: string }[]).map((w) => w.name),
    ["market"],
  );

  // A worker that offers the action takes it over.
  {
    await using worker = await startWorker(server, {
      actions: { calculate: () => "from the worker" },
    });
    await waitFor(() => server.broker.workers().some((w) => w.registered));
    const served = await client.request("calculate", { a: 1, b: 2 });
    assert.equal(served.data, "from the worker");
    assert.equal(served.processed_by, worker.status().client_id);
  }

  const out: string[] = [];
  await serverCommand(
    server.broker,
    'run calculate {"a": 6, "b": 7, "op": "*"}',
    (t) => out.push(t),
  );
  assert.deepEqual(out, ["42"]);
  out.length = 0;
  await serverCommand(server.broker, "run nope", (t) => out.push(t));
  assert.match(
    out[0],
    /^Error: Unknown server action 'nope': the server offers get_time, get_client_info, calculate/,
  );
  out.length = 0;
  await serverCommand(server.broker, "run", (t) => out.push(t));
  assert.deepEqual(out, ["Usage: run <action> [json params]"]);
});

Deno.test("edges - a requester frame on the worker port is told the requester port; the connection stays", async () => {
  await using server = startTestServer();
  await using peer = await RawPeer.open(server.workerUrl);
  const hello = await peer.envelope("connect");
  assert.equal(hello.data.port, "worker");
  assert.equal(hello.data.requester_port, server.requesterPort);
  peer.send({ request_id: "r1", command: "get_time", data: {} });
  const error = await peer.envelope("error");
  assert.equal(error.data.code, "WRONG_PORT");
  assert.equal(
    error.data.error,
    `This is the worker port: requesters connect to the requester port ${server.requesterPort}`,
  );
  assert.equal(peer.socket.readyState, 1);

  // The library client fails at once, naming the right port.
  await using client = await connectClient(server.workerUrl);
  await assert.rejects(
    client.request("get_time"),
    (e: Error) =>
      e instanceof WrongPortError &&
      e.message ===
        `${server.workerUrl} is the worker port: requesters connect to the requester port ${server.requesterPort}`,
  );
});

Deno.test("edges - a worker envelope on the requester port is told the worker port; a Worker gives up that socket", async () => {
  await using server = startTestServer();
  const peer = await RawPeer.open(server.requesterUrl);
  try {
    peer.sendEnvelope("connect", { name: "lost" });
    const answer = await peer.answer(null);
    assert.equal(answer.error_code, "WRONG_PORT");
    assert.equal(
      answer.error,
      `This is the requester port: workers connect to the worker port ${server.port}`,
    );
    assert.equal(peer.socket.readyState, 1);
  } finally {
    await peer.close();
  }
  const worker = new Worker({
    url: server.requesterUrl,
    name: "wrong-port",
    backoff: { initialMs: 10, maxMs: 60_000 },
    greetingTimeoutMs: 50,
  });
  const running = worker.start();
  try {
    // It hangs up by itself and waits out its longest backoff before trying again.
    await waitFor(() => worker.status().connects === 1);
    await waitFor(() => !worker.status().connected);
    await waitFor(() => server.broker.stats().requesters === 0);
    assert.equal(worker.status().connects, 1);
    assert.equal(server.broker.workers().length, 0);
  } finally {
    await worker.stop();
    await running;
  }
});

Deno.test("edges - GET /health/ready is 503 until a worker can serve, then 200", async () => {
  await using server = startTestServer();
  const ready = async () => {
    const res = await fetch(
      `http://127.0.0.1:${server.requesterPort}/health/ready`,
    );
    return { status: res.status, body: await res.json() };
  };
  const before = await ready();
  assert.equal(before.status, 503);
  assert.equal(before.body.ready, false);
  assert.equal(before.body.reason, "no worker is connected");
  const live = await fetch(`http://127.0.0.1:${server.port}/health`);
  assert.equal(live.status, 200);
  await live.body?.cancel();
  const worker = await startWorker(server);
  try {
    await waitFor(() => server.broker.stats().healthy_workers === 1);
    const after = await ready();
    assert.equal(after.status, 200);
    assert.equal(after.body.ready, true);
    assert.equal(after.body.reason, null);
  } finally {
    await worker.stop();
  }
});

Deno.test("edges - workers named alike get unique names, with a warning", async () => {
  const { program, workerPort, requesterPort } = await startServerProgram();
  const peers: RawPeer[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const peer = await RawPeer.open(`ws://127.0.0.1:${workerPort}`);
      await peer.envelope("connect");
      peer.sendEnvelope("connect", { name: "same", actions: ["x"] });
      peers.push(peer);
    }
    await using client = await connectClient(
      `ws://127.0.0.1:${requesterPort}`,
    );
    let names: string[] = [];
    for (let i = 0; i < 200 && names.length < 3; i++) {
      const info = await client.request("get_client_info");
      names = (info.data as { name: string; registered: boolean }[])
        .filter((w) => w.registered).map((w) => w.name).sort();
      if (names.length < 3) await new Promise((r) => setTimeout(r, 10));
    }
    await client.close();
    assert.deepEqual(names, ["same", "same-2", "same-3"]);
    await program.waitFor(
      /WRN.*asked for the name same, which another worker has: it is same-3 here/,
    );
  } finally {
    for (const peer of peers) await peer.close();
    await program.stop("SIGTERM");
  }
});

Deno.test("edges - a worker killed without a close frame is logged as a warning, a clean stop as info", async () => {
  const { program, workerPort } = await startServerProgram();
  const start = (name: string) =>
    new Program("worker.ts", [
      "127.0.0.1",
      String(workerPort),
      "--name",
      name,
      "--provider",
      "demo",
      "--no-console",
    ]);
  const killed = start("killed");
  const stopped = start("stopped");
  try {
    await program.waitFor(/registered as killed/);
    await program.waitFor(/registered as stopped/);
    await killed.stop("SIGKILL");
    await program.waitFor(
      /\[WRN\].*Worker \w+ \(killed\) lost: the connection ended without a goodbye \(code 1006\)/,
    );
    await stopped.stop("SIGTERM");
    await program.waitFor(
      /\[INF\].*Worker \w+ \(stopped\) disconnected: code 1000/,
    );
  } finally {
    await killed.stop();
    await stopped.stop();
    await program.stop("SIGTERM");
  }
});

Deno.test("edges - a batch whose worker is lost lists the re-send in distributed.errors", async () => {
  await using server = startTestServer();
  const { peer, id: doomed } = await openRawWorker(server, {
    name: "doomed",
    actions: ["get_markets"],
  });
  await using _peer = peer;
  await using client = await connectClient(server.requesterUrl);
  const codes = ["510300", "159915", "000300"];
  const answering = answerOf(
    client.request(
      "get_markets",
      codes.map((code) => ({ symbol_type: "etf", code })),
    ),
    "the batch",
    20_000,
  );
  await peer.envelope("request");
  await using _good = await startWorker(server, {
    name: "good",
    actions: {
      get_markets: emptyBars,
    },
  });
  await waitFor(() =>
    server.broker.workers().some((w) => w.name === "good" && w.registered)
  );
  peer.socket.terminate();
  const answer = await answering;
  assert.equal(answer.success, true, JSON.stringify(answer));
  const data = answer.data as {
    summary: { success: number };
    distributed: { errors: string[] | null };
  };
  assert.equal(data.summary.success, 3);
  assert.ok(
    data.distributed.errors?.some((e) =>
      e.startsWith(`3 items re-sent: worker ${doomed} lost them`)
    ),
    JSON.stringify(data.distributed),
  );
});

Deno.test("edges - a worker logs an upstream failure as a warning", async () => {
  await using fake = await startFakeEastmoney({
    synthetic: true,
    failMode: "http503",
  });
  const { program, workerPort, requesterPort } = await startServerProgram();
  const worker = new Program("worker.ts", [
    "127.0.0.1",
    String(workerPort),
    "--eastmoney-url",
    fake.url,
    "--rate-limit",
    "0",
    "--no-console",
  ]);
  try {
    await program.waitFor(/registered as/);
    const out = await runProgram("requester.ts", [
      "127.0.0.1",
      String(requesterPort),
      "get_market",
      '{"symbol_type":"etf","code":"512880","start_date":"2025-01-01"}',
    ]);
    assert.equal(JSON.parse(out.stdout).data?.success ?? false, false);
    await worker.waitFor(/\[WRN\].*Provider eastmoney failed for 512880/);
  } finally {
    await worker.stop("SIGTERM");
    await program.stop("SIGTERM");
  }
});
