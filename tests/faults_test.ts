// Faults: a stuck worker, a frozen worker process, a server restart under 50 workers, graceful
// drain, a requester that stops reading, and every configured limit.

import assert from "node:assert/strict";
import type { ActionContext } from "../lib/action.ts";
import { resetSync } from "npm:@logtape/logtape@2.4.2";
import { ConnectionClosedError } from "../lib/errors.ts";
import { setupLogging } from "../lib/log.ts";
import { RequesterClient } from "../lib/requester/requester_client.ts";
import { startServer } from "../lib/broker/server.ts";
import { Worker } from "../lib/worker/worker_client.ts";
import {
  answerOf,
  connectClient,
  type Frame,
  idOf,
  mulberry32,
  openRawWorker,
  RawPeer,
  releasing,
  respond,
  startTestServer,
  startWorker,
  waitFor,
  within,
} from "./_helpers.ts";
import { Program, startServerProgram, waitForHealth } from "./_procs.ts";

/** An action that runs until the server (or the worker) cancels it. */
function hang(_params: unknown, ctx: ActionContext): Promise<never> {
  return new Promise((_, reject) => {
    ctx.signal.addEventListener(
      "abort",
      () => reject(ctx.signal.reason),
      { once: true },
    );
  });
}

/** An action that sleeps `{ms}`, cancellable. */
function sleepAction(params: unknown, ctx: ActionContext): Promise<unknown> {
  const ms = Number((params as { ms?: unknown })?.ms ?? 0);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => resolve({ slept: ms }), ms);
    ctx.signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(ctx.signal.reason);
    }, { once: true });
  });
}

function workerInfo(server: { broker: { workers(): Frame[] } }, id: string) {
  return server.broker.workers().find((w) => w.client_id === id);
}

// ---- (a) stuck worker ----------------------------------------------------------------------------

Deno.test("faults - a stuck worker times the request out, its late answer is dropped, and work moves on", async () => {
  await using server = startTestServer();
  const { peer: stuck, id: stuckId } = await openRawWorker(server, {
    name: "stuck",
    actions: ["work"],
  });
  const requester = await RawPeer.open(server.requesterUrl);
  let healthy: Worker | undefined;
  try {
    const started = Date.now();
    requester.send({ request_id: "r1", command: "work", timeout: 0.2 });
    const request = await stuck.envelope("request");
    const answer = await requester.answer("r1");
    const elapsed = Date.now() - started;
    assert.equal(answer.success, false);
    assert.equal(answer.error, "Worker response timeout");
    assert.equal(answer.error_code, "TIMEOUT");
    assert.equal(answer.processed_by, stuckId);
    // Not before its own 0.2 s, and far short of the 30 s default: the request's timeout
    // counted. The upper bound is loose because a loaded machine fires timers late.
    assert.ok(
      elapsed >= 190 && elapsed < 10_000,
      `answered after ${elapsed} ms`,
    );
    const cancel = await stuck.envelope("cancel");
    assert.equal(cancel.data.request_id, request.msg_id);
    assert.equal(workerInfo(server, stuckId)?.failures, 1);

    // The late answer is dropped: no error back to the worker, nothing to the requester.
    respond(stuck, request, "too late");
    const barrier = crypto.randomUUID();
    stuck.sendEnvelope("request", { action: "get_time" }, barrier);
    await stuck.next((f) => f?.data?.request_id === barrier);
    assert.equal(stuck.received.filter((f) => f?.type === "error").length, 0);
    requester.send({ request_id: "r2", command: "nothing_offers_this" });
    await requester.answer("r2");
    assert.equal(
      requester.received.filter((f) => f?.request_id === "r1").length,
      1,
    );

    // A healthy worker arrives: the next requests all go to it.
    healthy = await startWorker(server, {
      name: "healthy",
      actions: { work: () => "done" },
    });
    for (let i = 0; i < 5; i++) {
      requester.send({ request_id: `n${i}`, command: "work", timeout: 2 });
      const next = await requester.answer(`n${i}`);
      assert.equal(next.success, true, next.error);
      assert.equal(next.processed_by, idOf(healthy));
    }
    assert.equal(stuck.received.filter((f) => f?.type === "request").length, 1);
  } finally {
    await requester.close();
    await stuck.close();
    await healthy?.stop();
  }
});

// ---- (b) frozen worker process -------------------------------------------------------------------

async function frozenWorkerScenario(cleanupIntervalMs: number) {
  await using stack = new AsyncDisposableStack();
  const server = stack.use(releasing(
    startServer({
      host: "127.0.0.1",
      port: 0,
      requesterPort: 0,
      heartbeatIntervalMs: 200,
      heartbeatTimeoutMs: 600,
      cleanupIntervalMs,
      sweepIntervalMs: 50,
    }),
    (s) => s.close(),
  ));
  const frozen = stack.use(
    new Program("worker.ts", [
      "--url",
      server.workerUrl,
      "--name",
      "frozen",
      "--provider",
      "demo",
      "--max-backoff",
      "0.1",
      "--no-console",
    ]),
  );
  // A stopped process cannot be killed until it runs again.
  stack.defer(() => frozen.kill("SIGCONT"));
  const other = stack.use(await startWorker(server, { name: "other" }));
  const client = stack.use(releasing(
    new RequesterClient(server.requesterUrl),
    (c) => c.close(),
  ));
  const findFrozen = () =>
    server.broker.workers().find((w) => w.name === "frozen" && w.registered);
  const release = stack.move();
  return {
    server,
    frozen,
    other,
    client,
    findFrozen,
    [Symbol.asyncDispose]: () => release.disposeAsync(),
  };
}

Deno.test("faults - a SIGSTOPped worker process turns unhealthy, gets no work, and serves again after SIGCONT", async () => {
  await using s = await frozenWorkerScenario(60_000);
  await waitFor(
    () => s.findFrozen() !== undefined,
    "frozen to register",
    20_000,
  );
  const frozenId = s.findFrozen()!.client_id;
  // Let it send a heartbeat, so heartbeat silence counts against it.
  await s.frozen.waitFor(/Connected to/);
  await new Promise((r) => setTimeout(r, 300));
  await s.client.connect();

  s.frozen.kill("SIGSTOP");
  const stoppedAt = Date.now();
  await waitFor(
    () => s.findFrozen()?.healthy === false,
    "the frozen worker to turn unhealthy",
    3000,
  );
  const detectedMs = Date.now() - stoppedAt;
  assert.ok(detectedMs < 1500, `unhealthy after ${detectedMs} ms`);
  for (let i = 0; i < 10; i++) {
    const answer = await s.client.request("get_time", {}, { timeout: 2 });
    assert.equal(answer.success, true, answer.error ?? "");
    assert.equal(answer.processed_by, idOf(s.other));
  }
  assert.equal(s.findFrozen()?.in_flight, 0);

  s.frozen.kill("SIGCONT");
  await waitFor(
    () => s.findFrozen()?.healthy === true,
    "the frozen worker to be healthy again",
    3000,
  );
  // Same connection: the worker does not take its own pause for a dead server.
  const back = s.findFrozen()!;
  assert.equal(back.client_id, frozenId);
  const outcome = await s.server.broker.send(back.client_id, "get_time");
  assert.equal(outcome.ok, true);
  const answers = await Promise.all(
    Array.from({ length: 6 }, () => s.client.request("get_time")),
  );
  assert.ok(answers.every((a) => a.success));
  assert.ok(
    answers.some((a) => a.processed_by === frozenId),
    "the thawed worker got none of 6 requests",
  );
  assert.equal(s.server.broker.stats().workers, 2);
  console.log(`frozen worker: unhealthy after ${detectedMs} ms`);
});

Deno.test("faults - a worker stopped past the cleanup interval is dropped and re-registers after SIGCONT", async () => {
  await using s = await frozenWorkerScenario(700);
  await waitFor(
    () => s.findFrozen() !== undefined,
    "frozen to register",
    20_000,
  );
  const frozenId = s.findFrozen()!.client_id;
  await new Promise((r) => setTimeout(r, 300));
  s.frozen.kill("SIGSTOP");
  await waitFor(
    () => !s.server.broker.workers().some((w) => w.client_id === frozenId),
    "the frozen worker to be dropped",
    3000,
  );
  assert.equal(s.server.broker.stats().workers, 1);
  s.frozen.kill("SIGCONT");
  await waitFor(
    () => {
      const w = s.findFrozen();
      return w !== undefined && w.client_id !== frozenId && w.healthy;
    },
    "the frozen worker to re-register",
    5000,
  );
  const outcome = await s.server.broker.send(
    s.findFrozen()!.client_id,
    "get_time",
  );
  assert.equal(outcome.ok, true);
});

// ---- (c) server restart under 50 workers ---------------------------------------------------------

Deno.test("faults - after a server restart 50 workers re-register with spread-out reconnects", async () => {
  const WORKERS = 50;
  // The spread is judged by the delays the workers schedule, not by when the server happens to
  // see them: on a loaded machine one blocked turn of the event loop lumps any arrivals together.
  const delays: number[] = [];
  let restarting = false;
  setupLogging({
    level: "info",
    format: "json",
    write: (line) => {
      const record = JSON.parse(line);
      if (
        restarting && /^Reconnecting to /.test(record.message) &&
        typeof record.properties?.delay === "number"
      ) delays.push(record.properties.delay);
    },
  });
  let server = startServer({
    host: "127.0.0.1",
    port: 0,
    requesterPort: 0,
    sweepIntervalMs: 0,
  });
  const { port, requesterPort } = server;
  const workers = Array.from({ length: WORKERS }, (_, i) => {
    const worker = new Worker({
      url: server.workerUrl,
      name: `w${i}`,
      backoff: { initialMs: 300, maxMs: 300, random: mulberry32(1000 + i) },
      graceMs: 500,
    });
    worker.registerAction("hang", hang);
    return worker;
  });
  const client = new RequesterClient(server.requesterUrl);
  try {
    const ready = workers.map((w) => w.ready());
    workers.forEach((w) => void w.start());
    await within(Promise.all(ready), "50 workers to connect", 20_000);
    await waitFor(
      () =>
        server.broker.workers().filter((w) => w.registered).length === WORKERS,
      "50 workers to register",
      5000,
    );
    await client.connect();
    const inFlight = [0, 1, 2].map(() =>
      client.request("hang", {}, { timeout: 30 })
    );
    const rejected = Promise.allSettled(inFlight);
    await waitFor(() => server.broker.stats().in_flight === 3);

    restarting = true;
    await server.close();
    const closedAt = Date.now();
    server = startServer({
      host: "127.0.0.1",
      port,
      requesterPort,
      sweepIntervalMs: 0,
    });
    // Closing answers what was in flight before the sockets go.
    for (const r of await rejected) {
      assert.equal(
        r.status,
        "fulfilled",
        String((r as PromiseRejectedResult).reason),
      );
      assert.equal(r.value.error_code, "SHUTTING_DOWN");
      assert.equal(r.value.error, "Server is shutting down");
    }
    assert.equal(client.connected, false);
    await assert.rejects(client.request("get_time"), ConnectionClosedError);
    const seen = new Map<string, number>();
    const until = Date.now() + 5000;
    while (seen.size < WORKERS && Date.now() < until) {
      for (const w of server.broker.workers()) {
        if (!seen.has(w.client_id)) {
          seen.set(w.client_id, Date.now() - closedAt);
        }
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal(seen.size, WORKERS, `only ${seen.size} came back`);
    const times = [...seen.values()].sort((a, b) => a - b);
    // Each worker's first delay after losing the server.
    const first = delays.slice(0, WORKERS);
    assert.equal(first.length, WORKERS, `only ${first.length} delays logged`);
    const buckets = new Map<number, number>();
    for (const d of first) {
      buckets.set(
        Math.floor(d / 50),
        (buckets.get(Math.floor(d / 50)) ?? 0) + 1,
      );
    }
    const fullest = Math.max(...buckets.values());
    assert.ok(
      fullest <= WORKERS * 0.4,
      `${fullest} of ${WORKERS} reconnect delays in one 50 ms bucket: ${first}`,
    );
    console.log(
      `restart: ${WORKERS} workers back within ${times.at(-1)} ms ` +
        `(first ${times[0]} ms), fullest 50 ms bucket of delays ${fullest}`,
    );
    await waitFor(
      () =>
        server.broker.workers().filter((w) => w.registered).length === WORKERS,
    );
    await client.connect();
    const answer = await client.request("get_time");
    assert.equal(answer.success, true, answer.error ?? "");
  } finally {
    await client.close();
    await Promise.all(workers.map((w) => w.stop()));
    await server.close();
    resetSync();
  }
});

// ---- (d) graceful drain --------------------------------------------------------------------------

Deno.test("faults - drain() answers the in-flight request, refuses new ones with SHUTTING_DOWN, then closes", async () => {
  await using server = releasing(
    startServer({
      host: "127.0.0.1",
      port: 0,
      requesterPort: 0,
      sweepIntervalMs: 0,
    }),
    (s) => s.close(),
  );
  await using _worker = await startWorker(server, {
    actions: { sleep: sleepAction },
  });
  await using client = await connectClient(server.requesterUrl);
  const slow = answerOf(
    client.request("sleep", { ms: 300 }),
    "the slow request",
    10_000,
  );
  await waitFor(() => server.broker.stats().in_flight === 1);
  const drained = server.drain(5000);
  const late = await client.request("get_time");
  assert.equal(late.success, false);
  assert.equal(late.error_code, "SHUTTING_DOWN");
  const health = await (await fetch(
    `http://127.0.0.1:${server.requesterPort}/health`,
  )).json();
  assert.equal(health.status, "draining");
  const answer = await slow;
  assert.equal(answer.success, true, answer.error ?? "");
  assert.deepEqual(answer.data, { slept: 300 });
  await drained;
  await server.finished;
  assert.equal(client.connected, false);
});

Deno.test("faults - server.ts on SIGTERM finishes an in-flight slow request and exits 0", async () => {
  await using server = await startServerProgram(["--grace", "5"]);
  await using worker = new Program("tests/_slow_worker.ts", [
    `ws://127.0.0.1:${server.workerPort}`,
  ]);
  await using client = releasing(
    new RequesterClient(`ws://127.0.0.1:${server.requesterPort}`),
    (c) => c.close(),
  );
  await worker.waitFor(/slow worker connected/);
  await waitForHealth(server.workerPort, (h) => h.workers === 1);
  await client.connect();
  const slow = answerOf(
    client.request("sleep", { ms: 400 }),
    "the slow request",
    10_000,
  );
  await waitForHealth(server.workerPort, (h) => h.in_flight === 1);
  server.program.kill("SIGTERM");
  const answer = await slow;
  assert.equal(answer.success, true, answer.error ?? "");
  assert.deepEqual(answer.data, { slept: 400 });
  assert.equal((await server.program.done()).code, 0);
});

// ---- (e) slow reader -----------------------------------------------------------------------------

Deno.test("faults - a requester that stops reading is dropped past maxBufferedBytes; others are unaffected", async () => {
  await using server = startTestServer({ maxBufferedBytes: 2 * 1024 * 1024 });
  const blob = "x".repeat(1024 * 1024);
  await using _worker = await startWorker(server, {
    concurrency: 64,
    actions: { blob: () => blob },
  });
  await using slow = await RawPeer.open(server.requesterUrl);
  await using good = await connectClient(server.requesterUrl);
  await waitFor(() => server.broker.stats().requesters === 2);
  // deno-lint-ignore no-explicit-any
  const tcp = (slow.socket as any)._socket;
  tcp.pause();
  // Once it reads again it learns why. It reads as soon as it is dropped, while the good
  // requester is still busy: a peer that leaves its close frame unread for a second is cut off,
  // and the reason with it.
  const dropped = waitFor(
    () => server.broker.stats().requesters === 1,
    "the slow reader to be dropped",
    30_000,
    1,
  ).then(() => tcp.resume());
  for (let i = 0; i < 30; i++) {
    slow.send({ request_id: `s${i}`, command: "blob" });
  }
  // The good requester keeps getting its megabytes meanwhile.
  for (let i = 0; i < 10; i++) {
    const answer = await good.request("blob");
    assert.equal(answer.success, true);
    assert.equal((answer.data as string).length, blob.length);
  }
  await dropped;
  const closed = await within(slow.closed, "the slow reader's socket to close");
  assert.equal(closed.code, 1008);
  assert.match(closed.reason, /Too slow/);
  // Its remaining requests were cancelled, not left running for nobody.
  await waitFor(() => server.broker.stats().in_flight === 0);
  assert.equal((await good.request("get_time")).success, true);
  const answered = slow.received.filter((f) => f?.success === true).length;
  assert.ok(answered < 30, `${answered} answers reached the slow reader`);
});

// ---- (f) limits ----------------------------------------------------------------------------------

const UPGRADE = {
  upgrade: "websocket",
  connection: "Upgrade",
  "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
  "sec-websocket-version": "13",
};

Deno.test("limits - maxConnections per port refuses the extra connection with 503", async () => {
  await using server = startTestServer({ maxConnections: 2 });
  const peers = [
    await RawPeer.open(server.requesterUrl),
    await RawPeer.open(server.requesterUrl),
  ];
  const workers = [await openRawWorker(server), await openRawWorker(server)];
  try {
    await waitFor(() => server.broker.stats().requesters === 2);
    for (const port of [server.requesterPort, server.port]) {
      const res = await fetch(`http://127.0.0.1:${port}/`, {
        headers: UPGRADE,
      });
      assert.equal(res.status, 503);
      assert.match(await res.text(), /Too many \w+ connections \(limit 2\)/);
    }
    const extra = new RequesterClient(server.requesterUrl);
    await assert.rejects(extra.connect(), /HTTP 503/);
    await peers[0].close();
    await waitFor(() => server.broker.stats().requesters === 1);
    const again = await RawPeer.open(server.requesterUrl);
    peers.push(again);
  } finally {
    for (const p of peers) await p.close();
    for (const w of workers) await w.peer.close();
  }
});

Deno.test("limits - a 2 MB worker answer passes; a 2 MB requester frame is FRAME_TOO_LARGE", async () => {
  await using server = startTestServer();
  const big = "y".repeat(2 * 1024 * 1024);
  await using _worker = await startWorker(server, {
    actions: { big: () => big },
  });
  await using requester = await RawPeer.open(server.requesterUrl);
  requester.send({ request_id: "big-answer", command: "big" });
  const answer = await requester.answer("big-answer");
  assert.equal(answer.success, true);
  assert.equal(answer.data.length, big.length);
  requester.send({ request_id: "big-frame", command: "big", data: big });
  const refused = await requester.answer("big-frame");
  assert.equal(refused.success, false);
  assert.equal(refused.error_code, "FRAME_TOO_LARGE");
  assert.match(
    refused.error,
    /^Frame too large: \d+ bytes \(limit 1048576\)$/,
  );
  requester.send({ request_id: "after", command: "get_time" });
  assert.equal((await requester.answer("after")).success, true);
});

Deno.test("limits - maxBatchItems, maxInFlightPerConnection and maxQueue answer clearly", async () => {
  await using server = startTestServer({
    maxBatchItems: 3,
    maxInFlightPerConnection: 2,
    maxQueue: 1,
  });
  const { peer: held } = await openRawWorker(server, {
    actions: ["hold"],
    max_concurrency: 1,
  });
  const a = await RawPeer.open(server.requesterUrl);
  const b = await RawPeer.open(server.requesterUrl);
  try {
    const items = Array.from({ length: 4 }, (_, i) => ({
      symbol_type: "etf",
      code: `51030${i}`,
    }));
    a.send({ request_id: "batch", command: "get_markets", data: items });
    const batch = await a.answer("batch");
    assert.equal(batch.error_code, "BATCH_TOO_LARGE");
    assert.match(batch.error, /4/);

    // One running on the worker (its only slot), one queued (the queue's only place).
    a.send({ request_id: "h1", command: "hold" });
    const first = await held.envelope("request");
    a.send({ request_id: "h2", command: "hold" });
    await waitFor(() => server.broker.stats().queued === 1);
    a.send({ request_id: "h3", command: "hold" });
    const tooMany = await a.answer("h3");
    assert.equal(tooMany.error_code, "TOO_MANY_IN_FLIGHT");
    b.send({ request_id: "h4", command: "hold" });
    const busy = await b.answer("h4");
    assert.equal(busy.error_code, "BUSY");
    assert.match(busy.error, /^Server busy/);

    respond(held, first, "one");
    assert.equal((await a.answer("h1")).data, "one");
    const second = await held.envelope("request");
    respond(held, second, "two");
    assert.equal((await a.answer("h2")).data, "two");
  } finally {
    await a.close();
    await b.close();
    await held.close();
  }
});

Deno.test("limits - queueTimeoutMs answers BUSY once the wait passes (injected clock, explicit sweep)", async () => {
  let now = 1_000_000;
  await using server = startTestServer({
    clock: { now: () => now },
    queueTimeoutMs: 1000,
  });
  const { peer: held } = await openRawWorker(server, {
    actions: ["hold"],
    max_concurrency: 1,
  });
  const requester = await RawPeer.open(server.requesterUrl);
  try {
    requester.send({ request_id: "running", command: "hold" });
    const running = await held.envelope("request");
    requester.send({ request_id: "waiting", command: "hold" });
    await waitFor(() => server.broker.stats().queued === 1);
    now += 999;
    server.broker.sweep();
    assert.equal(server.broker.stats().queued, 1);
    now += 2;
    server.broker.sweep();
    const busy = await requester.answer("waiting");
    assert.equal(busy.error_code, "BUSY");
    assert.match(busy.error, /^Server busy: no worker was free within 1 s$/);
    respond(held, running, "ok");
    assert.equal((await requester.answer("running")).success, true);
  } finally {
    await requester.close();
    await held.close();
  }
});

Deno.test("faults - a Worker still leaves a server that stops answering its heartbeats", async () => {
  // A "server" that says hello and then never says another word.
  const sockets: WebSocket[] = [];
  const mute = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onopen = () =>
        socket.send(JSON.stringify({
          type: "connect",
          msg_id: "m1",
          timestamp: Date.now() / 1000,
          data: {
            client_id: `mute${sockets.length}`,
            heartbeat_interval: 0.05,
          },
        }));
      sockets.push(socket);
      return response;
    },
  );
  const worker = new Worker({
    url: `ws://127.0.0.1:${mute.addr.port}`,
    name: "patient",
    backoff: { initialMs: 10, maxMs: 10 },
  });
  try {
    void worker.start();
    await waitFor(() => worker.status().connects >= 2, "a reconnect", 3000);
  } finally {
    await worker.stop(0);
    for (const s of sockets) {
      if (s.readyState <= 1) s.close();
    }
    await mute.shutdown();
  }
});
