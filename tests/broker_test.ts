import assert from "node:assert/strict";
import type { ServerOptions } from "../lib/broker/server.ts";
import { RequesterClient } from "../lib/requester/requester_client.ts";
import type { Worker } from "../lib/worker/worker_client.ts";
import {
  answerOf,
  connectClient,
  type Frame,
  idOf,
  openRawWorker,
  RawPeer,
  respond,
  startTestServer,
  startWorker,
  type TestServer,
  waitFor,
  within,
} from "./_helpers.ts";

// ---- plain HTTP and tokens -------------------------------------------------------------------

Deno.test("broker - serves GET /health as JSON on both ports", async () => {
  await using server = startTestServer();
  for (
    const [port, name] of [[server.port, "worker"], [
      server.requesterPort,
      "requester",
    ]] as const
  ) {
    const res = await fetch(`http://127.0.0.1:${port}/health`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "application/json");
    const body = await res.json();
    assert.equal(body.status, "ok");
    assert.equal(body.port, name);
    assert.equal(body.workers, 0);
    assert.equal(typeof body.version, "string");
  }
});

Deno.test("broker - answers other plain HTTP with 426 Upgrade Required", async () => {
  await using server = startTestServer();
  for (const port of [server.port, server.requesterPort]) {
    // GET / on the requester port is the dashboard.
    const root = port === server.port ? [["GET", "/"]] : [];
    for (
      const [method, path] of [...root, ["GET", "/nope"], [
        "POST",
        "/health",
      ]]
    ) {
      const res = await fetch(`http://127.0.0.1:${port}${path}`, { method });
      assert.equal(res.status, 426, `${method} ${path}`);
      assert.equal(res.headers.get("upgrade"), "websocket");
      assert.match(await res.text(), /connect with a WebSocket client/);
    }
  }
});

Deno.test("broker - refuses a requester without the token with 401 and accepts the right one", async () => {
  await using server = startTestServer({
    requesterToken: "s3cret",
    workerToken: "w0rker",
  });
  const anonymous = new RequesterClient(server.requesterUrl);
  await assert.rejects(anonymous.connect(), /unauthorized/);
  const wrong = new RequesterClient(server.requesterUrl, { token: "nope" });
  await assert.rejects(wrong.connect(), /unauthorized/);
  await using _worker = await startWorker(server, { token: "w0rker" });
  await using client = await connectClient(server.requesterUrl, {
    token: "s3cret",
  });
  assert.equal((await client.request("get_time")).success, true);
  await client.close();
  await using _viaQuery = await RawPeer.open(
    `${server.requesterUrl}/?token=s3cret`,
  );
});

Deno.test("broker - refuses a worker without the token with 401", async () => {
  await using server = startTestServer({ workerToken: "w0rker" });
  await assert.rejects(RawPeer.open(server.workerUrl), /401/);
  await assert.rejects(
    RawPeer.open(server.workerUrl, { authorization: "Bearer wrong" }),
    /401/,
  );
  await using ok = await RawPeer.open(server.workerUrl, {
    authorization: "Bearer w0rker",
  });
  await ok.envelope("connect");
  await ok.close();
  assert.equal(server.broker.workers().length, 0);
});

// ---- heartbeats and draining -----------------------------------------------------------------

Deno.test("broker - sweep() marks a silent worker unhealthy, then drops it after the cleanup interval", async () => {
  let now = 1_700_000_000_000;
  await using server = startTestServer({
    clock: { now: () => now },
    heartbeatIntervalMs: 1000,
    heartbeatTimeoutMs: 3000,
    cleanupIntervalMs: 10_000,
  });
  const { peer, id } = await openRawWorker(server);
  const hello = peer.received.find((f) => f.type === "connect");
  assert.equal(hello.data.heartbeat_interval, 1);
  peer.sendEnvelope("heartbeat", { status: "alive" });
  const reply = await peer.envelope("heartbeat");
  assert.equal(reply.data.status, "alive");
  const info = () => server.broker.workers().find((w) => w.client_id === id);

  now += 2000;
  server.broker.sweep();
  assert.equal(info()?.healthy, true, "within the heartbeat timeout");

  now += 1500;
  server.broker.sweep();
  assert.equal(info()?.healthy, false, "silent past the heartbeat timeout");
  assert.equal(server.broker.stats().healthy_workers, 0);

  // A heartbeat brings it back.
  peer.sendEnvelope("heartbeat", { status: "alive" });
  await peer.envelope("heartbeat");
  assert.equal(info()?.healthy, true);

  now += 10_001;
  server.broker.sweep();
  assert.equal(info(), undefined, "dropped after the cleanup interval");
  const closed = await within(peer.closed, "the worker's socket to close");
  assert.equal(closed.code, 4000);
  assert.equal(closed.reason, "Heartbeat timeout");
});

Deno.test("broker - sweep() leaves alone a worker that never sent a heartbeat", async () => {
  let now = 1_700_000_000_000;
  await using server = startTestServer({
    clock: { now: () => now },
    heartbeatTimeoutMs: 100,
    cleanupIntervalMs: 200,
  });
  const { peer, id } = await openRawWorker(server);
  now += 60_000;
  server.broker.sweep();
  assert.equal(
    server.broker.workers().find((w) => w.client_id === id)?.healthy,
    true,
  );
  await peer.close();
});

Deno.test("broker - an unhealthy worker gets no new work until it is heard from", async () => {
  let now = 1_700_000_000_000;
  await using server = startTestServer({
    clock: { now: () => now },
    heartbeatTimeoutMs: 3000,
  });
  const { peer, id } = await openRawWorker(server);
  peer.sendEnvelope("heartbeat", {});
  await peer.envelope("heartbeat");
  now += 5000;
  server.broker.sweep();
  await using client = await connectClient(server.requesterUrl);
  const answering = answerOf(
    client.request("job", {}, { timeout: 5 }),
    "the answer",
    10_000,
  );
  await waitFor(
    () => server.broker.dispatcher.queued === 1,
    "the request to queue",
  );
  assert.equal(peer.received.filter((f) => f.type === "request").length, 0);
  peer.sendEnvelope("heartbeat", {});
  const request = await peer.envelope("request");
  respond(peer, request, "late but fine");
  const answer = await answering;
  assert.equal(answer.data, "late but fine");
  assert.equal(answer.processed_by, id);
  await client.close();
  await peer.close();
});

Deno.test("broker - a worker's graceful stop() sends disconnect, gets no new work and finishes in-flight work", async () => {
  await using server = startTestServer();
  const gate = Promise.withResolvers<void>();
  await using leaving = await startWorker(server, {
    name: "leaving",
    weight: 10,
    actions: { job: async () => (await gate.promise, "finished by leaving") },
  });
  await using staying = await startWorker(server, {
    name: "staying",
    actions: { job: () => "done by staying" },
  });
  const leavingId = idOf(leaving);
  await using client = await connectClient(server.requesterUrl);
  const first = answerOf(client.request("job"));
  await waitFor(
    () => leaving.status().in_flight === 1,
    "the job to start on the heavier worker",
  );
  const stopping = leaving.stop();
  await waitFor(
    () =>
      server.broker.workers().find((w) => w.client_id === leavingId)
        ?.draining === true,
    "the server to see the worker draining",
  );
  const second = await client.request("job");
  assert.equal(second.data, "done by staying");
  assert.equal(second.processed_by, idOf(staying));
  gate.resolve();
  const answer = await first;
  assert.equal(answer.success, true);
  assert.equal(answer.data, "finished by leaving");
  assert.equal(answer.processed_by, leavingId);
  await stopping;
  await waitFor(
    () => server.broker.workers().length === 1,
    "the stopped worker to be gone",
  );
});

Deno.test("broker - drain() refuses new requests with SHUTTING_DOWN and lets in-flight work finish", async () => {
  await using server = startTestServer();
  const gate = Promise.withResolvers<void>();
  await using _worker = await startWorker(server, {
    actions: { job: () => gate.promise.then(() => "finished") },
  });
  await using peer = await RawPeer.open(server.requesterUrl);
  peer.send({ request_id: "a", command: "job" });
  await waitFor(() => server.broker.dispatcher.running === 1, "running");
  const draining = server.drain(5000);
  peer.send({ request_id: "b", command: "job" });
  const refused = await peer.answer("b");
  assert.equal(refused.error_code, "SHUTTING_DOWN");
  assert.match(refused.error, /^Server is shutting down/);
  gate.resolve();
  const answer = await peer.answer("a");
  assert.equal(answer.data, "finished");
  await draining;
  await within(peer.closed, "the requester's socket to close");
});

// ---- server actions over the worker port -----------------------------------------------------

Deno.test("broker - answers a worker's requests for server actions", async () => {
  await using server = startTestServer();
  await using worker = await startWorker(server, { name: "asker" });
  assert.match(
    String(await worker.request("get_time")),
    /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/,
  );
  assert.equal(
    await worker.request("calculate", { a: 10, b: 20, op: "+" }),
    30,
  );
  await assert.rejects(
    worker.request("calculate", { a: 1, b: 0, op: "/" }),
    /Division by zero/,
  );
  await assert.rejects(
    worker.request("calculate", { a: "1", b: 0 }),
    /must be a finite number/,
  );
  await assert.rejects(
    worker.request("rm_rf"),
    (e: Error & { code?: string }) => {
      assert.match(e.message, /^Unknown action 'rm_rf': the server offers/);
      assert.equal(e.code, "UNKNOWN_ACTION");
      return true;
    },
  );
  const info = await worker.request("get_client_info") as {
    name: string;
    client_id: string;
  }[];
  assert.deepEqual(info.map((w) => [w.client_id, w.name]), [[
    idOf(worker),
    "asker",
  ]]);
});

// ---- bad input from a requester --------------------------------------------------------------

interface RequesterCase {
  name: string;
  frame: string | Uint8Array;
  requestId: string | null;
  error: string | RegExp;
  code: string;
  options?: ServerOptions;
}

const requesterCases: RequesterCase[] = [
  {
    name: "a frame that is not JSON",
    frame: "get_time please",
    requestId: null,
    error: /^Cannot parse frame as JSON: /,
    code: "INVALID_JSON",
  },
  ...(["[1,2]", "42", '"get_time"', "null"].map((frame, i) => ({
    name: `a frame that is ${["an array", "a number", "a string", "null"][i]}`,
    frame,
    requestId: null,
    error: `Request must be a JSON object: got ${
      ["array", "number", "string", "null"][i]
    }`,
    code: "INVALID_FRAME",
  }))),
  {
    name: "a request without a command",
    frame: '{"request_id":"r1","data":{}}',
    requestId: "r1",
    error: "Field 'command' is missing",
    code: "INVALID_FIELD",
  },
  {
    name: "a command that is not a string",
    frame: '{"request_id":"r2","command":["get_time"]}',
    requestId: "r2",
    error: "Field 'command' must be a non-empty string: got array",
    code: "INVALID_FIELD",
  },
  {
    name: "an empty command",
    frame: '{"request_id":"r3","command":""}',
    requestId: "r3",
    error: "Field 'command' must be a non-empty string: got string",
    code: "INVALID_FIELD",
  },
  {
    name: "a request_id that is not a string",
    frame: '{"request_id":{"id":1},"command":"get_time"}',
    requestId: null,
    error: "Field 'request_id' must be a non-empty string: got object",
    code: "INVALID_FIELD",
  },
  {
    name: "a timeout that is not a number",
    frame: '{"request_id":"r4","command":"get_time","timeout":"5"}',
    requestId: "r4",
    error: "Field 'timeout' must be a positive number of seconds: got \"5\"",
    code: "INVALID_FIELD",
  },
  {
    name: "a progress flag that is not a boolean",
    frame: '{"request_id":"r5","command":"get_time","progress":"yes"}',
    requestId: "r5",
    error: "Field 'progress' must be a boolean: got string",
    code: "INVALID_FIELD",
  },
  {
    name: "an unknown command",
    frame: '{"request_id":"r6","command":"format_disk"}',
    requestId: "r6",
    error: "No available workers",
    code: "UNKNOWN_COMMAND",
  },
  {
    name: "a binary frame",
    frame: new TextEncoder().encode('{"request_id":"r7","command":"get_time"}'),
    requestId: null,
    error: "Binary frames are not supported: send a JSON text frame",
    code: "BINARY_FRAME",
  },
  {
    name: "a frame over the size limit",
    frame: JSON.stringify({
      request_id: "r8",
      command: "get_time",
      data: "x".repeat(500),
    }),
    requestId: "r8",
    error: /^Frame too large: \d+ bytes \(limit 200\)$/,
    code: "FRAME_TOO_LARGE",
    options: { maxRequesterFrameBytes: 200 },
  },
];

/**
 * A server with one real worker (which offers `hold`) and a raw requester; `await using` closes
 * them at the end of the scope.
 */
async function requesterSetup(options: ServerOptions = {}) {
  await using stack = new AsyncDisposableStack();
  const server = stack.use(startTestServer(options));
  const gates: PromiseWithResolvers<void>[] = [];
  const worker = stack.use(
    await startWorker(server, {
      actions: {
        hold: async () => {
          const gate = Promise.withResolvers<void>();
          gates.push(gate);
          await gate.promise;
          return "held";
        },
      },
    }),
  );
  const peer = stack.use(await RawPeer.open(server.requesterUrl));
  const release = stack.move();
  return {
    server,
    peer,
    gates,
    /** The same connection still serves a good request. */
    async stillWorks() {
      peer.send({ request_id: "after", command: "get_time" });
      const answer = await peer.answer("after");
      assert.equal(answer.success, true, JSON.stringify(answer));
      assert.equal(answer.processed_by, idOf(worker));
    },
    [Symbol.asyncDispose]: () => release.disposeAsync(),
  };
}

function assertFailure(
  answer: Frame,
  expected: Omit<RequesterCase, "name" | "frame">,
) {
  assert.equal(answer.success, false);
  assert.equal(answer.request_id, expected.requestId);
  assert.equal(answer.data, null);
  assert.equal(answer.processed_by, null);
  assert.equal(answer.error_code, expected.code);
  if (typeof expected.error === "string") {
    assert.equal(answer.error, expected.error);
  } else assert.match(answer.error, expected.error);
}

for (const c of requesterCases) {
  Deno.test(`broker - answers ${c.name} from a requester and keeps the connection`, async () => {
    await using setup = await requesterSetup(c.options);
    setup.peer.send(c.frame);
    const answer = await setup.peer.next();
    assertFailure(answer, c);
    await setup.stillWorks();
  });
}

Deno.test("broker - answers a duplicate request_id in flight and still answers the original", async () => {
  await using setup = await requesterSetup();
  setup.peer.send({ request_id: "twin", command: "hold" });
  await waitFor(() => setup.gates.length === 1, "the first request to start");
  setup.peer.send({ request_id: "twin", command: "hold" });
  const duplicate = await setup.peer.answer("twin");
  assertFailure(duplicate, {
    requestId: "twin",
    error:
      "Duplicate request_id 'twin': a request with this id is already in flight on this connection",
    code: "DUPLICATE_REQUEST_ID",
  });
  await setup.stillWorks();
  setup.gates[0].resolve();
  const original = await setup.peer.answer("twin");
  assert.equal(original.success, true);
  assert.equal(original.data, "held");
  assert.equal(setup.gates.length, 1, "the duplicate never reached a worker");
});

Deno.test("broker - answers a request over the in-flight limit of a connection", async () => {
  await using setup = await requesterSetup({ maxInFlightPerConnection: 1 });
  setup.peer.send({ request_id: "first", command: "hold" });
  await waitFor(() => setup.gates.length === 1, "the first request to start");
  setup.peer.send({ request_id: "second", command: "get_time" });
  assertFailure(await setup.peer.answer("second"), {
    requestId: "second",
    error: "Server busy: 1 requests in flight on this connection (limit 1)",
    code: "TOO_MANY_IN_FLIGHT",
  });
  setup.gates[0].resolve();
  assert.equal((await setup.peer.answer("first")).data, "held");
  await setup.stillWorks();
});

Deno.test("broker - a bad frame does not disturb another request in flight on the same connection", async () => {
  await using setup = await requesterSetup();
  setup.peer.send({ request_id: "busy", command: "hold" });
  await waitFor(() => setup.gates.length === 1, "the request to start");
  setup.peer.send("{{{");
  assert.equal((await setup.peer.next()).error_code, "INVALID_JSON");
  setup.gates[0].resolve();
  assert.equal((await setup.peer.answer("busy")).data, "held");
});

// ---- bad input from a worker -----------------------------------------------------------------

/**
 * A server, one raw registered worker and a requester client; `await using` closes them at the
 * end of the scope.
 */
async function workerSetup(options: ServerOptions = {}) {
  await using stack = new AsyncDisposableStack();
  const server: TestServer = stack.use(startTestServer(options));
  const { peer, id } = await openRawWorker(server, { actions: ["job"] });
  stack.use(peer);
  const client = stack.use(await connectClient(server.requesterUrl));
  const release = stack.move();
  return {
    server,
    peer,
    id,
    client,
    /** The worker is still connected and serving. */
    async stillServes() {
      assert.ok(
        server.broker.workers().some((w) => w.client_id === id),
        "still registered",
      );
      const answering = answerOf(client.request("job", { ok: 1 }));
      const request = await peer.envelope("request");
      respond(peer, request, "still here");
      const answer = await answering;
      assert.equal(answer.data, "still here");
      assert.equal(answer.processed_by, id);
    },
    [Symbol.asyncDispose]: () => release.disposeAsync(),
  };
}

interface WorkerCase {
  name: string;
  frame: string | Uint8Array;
  code: string;
  error: string | RegExp;
  options?: ServerOptions;
}

const workerCases: WorkerCase[] = [
  {
    name: "a frame that is not JSON",
    frame: "hello?",
    code: "INVALID_JSON",
    error: /^Cannot parse frame as JSON: /,
  },
  {
    name: "a frame that is not an object",
    frame: "[1,2,3]",
    code: "INVALID_FRAME",
    error: "Frame must be a JSON object: got array",
  },
  {
    name: "a frame without a type",
    frame: '{"msg_id":"m1","data":{}}',
    code: "INVALID_FIELD",
    error: "Field 'type' must be a non-empty string: got undefined",
  },
  {
    name: "a binary frame",
    frame: new TextEncoder().encode('{"type":"heartbeat"}'),
    code: "BINARY_FRAME",
    error: "Binary frames are not supported: send JSON text",
  },
  {
    name: "a frame over the size limit",
    frame: JSON.stringify({ type: "custom", data: "x".repeat(2000) }),
    code: "FRAME_TOO_LARGE",
    error: /^Frame too large: \d+ bytes \(limit 1000\)$/,
    options: { maxWorkerFrameBytes: 1000 },
  },
  {
    name: "a response for a request id nobody sent",
    frame: JSON.stringify({
      type: "response",
      msg_id: "r-1",
      data: { request_id: "msg_nope", success: true, result: 1 },
    }),
    code: "UNKNOWN_REQUEST",
    error: "Unknown request id 'msg_nope': no request of yours waits for it",
  },
  {
    name: "a response whose request_id is not a string",
    frame: JSON.stringify({
      type: "response",
      msg_id: "r-2",
      data: { request_id: 17, success: true },
    }),
    code: "INVALID_FIELD",
    error: "Field 'data.request_id' must be a non-empty string: got number",
  },
  {
    name: "a response whose data is not an object",
    frame: JSON.stringify({ type: "response", msg_id: "r-3", data: "done" }),
    code: "INVALID_FIELD",
    error: "Field 'data' of a response must be an object: got string",
  },
  {
    name: "a connect whose data is not an object",
    frame: JSON.stringify({ type: "connect", msg_id: "r-4", data: [1] }),
    code: "INVALID_FIELD",
    error: "Field 'data' of connect must be an object",
  },
];

for (const c of workerCases) {
  Deno.test(`broker - answers ${c.name} from a worker with an error envelope and keeps it serving`, async () => {
    await using setup = await workerSetup(c.options);
    setup.peer.send(c.frame);
    const error = await setup.peer.envelope("error");
    assert.equal(error.data.code, c.code);
    if (typeof c.error === "string") assert.equal(error.data.error, c.error);
    else assert.match(error.data.error, c.error);
    await setup.stillServes();
  });
}

Deno.test("broker - ignores an unknown message type from a worker and keeps the connection", async () => {
  await using setup = await workerSetup();
  setup.peer.sendEnvelope("telemetry", { cpu: 0.5 });
  setup.peer.sendEnvelope("heartbeat", {});
  await setup.peer.envelope("heartbeat");
  assert.deepEqual(setup.peer.received.filter((f) => f.type === "error"), []);
  await setup.stillServes();
});

Deno.test("broker - hands a custom message type to its registered handler", async () => {
  const seen = Promise.withResolvers<[unknown, string]>();
  await using server = startTestServer({
    messageHandlers: {
      telemetry: (envelope, worker) =>
        seen.resolve([envelope.data, worker.client_id]),
    },
  });
  const { peer, id } = await openRawWorker(server);
  await using _peer = peer;
  peer.sendEnvelope("telemetry", { cpu: 0.5 });
  assert.deepEqual(await within(seen.promise, "the handler"), [
    { cpu: 0.5 },
    id,
  ]);
});

Deno.test("broker - rejects a worker's response to another worker's request and still answers from the right worker", async () => {
  await using server = startTestServer();
  const owner = await openRawWorker(server, { weight: 10 });
  await using _owner = owner.peer;
  const meddler = await openRawWorker(server);
  await using _meddler = meddler.peer;
  await using client = await connectClient(server.requesterUrl);
  const answering = answerOf(client.request("job"));
  const request = await owner.peer.envelope("request");
  respond(meddler.peer, request, "stolen");
  const error = await meddler.peer.envelope("error");
  assert.equal(error.data.code, "UNKNOWN_REQUEST");
  assert.equal(
    error.data.error,
    `Unknown request id '${request.msg_id}': no request of yours waits for it`,
  );
  respond(owner.peer, request, "genuine");
  const answer = await answering;
  assert.equal(answer.data, "genuine");
  assert.equal(answer.processed_by, owner.id);
  assert.equal(client.inFlight, 0);
});

Deno.test("broker - a worker's failed response reaches the requester with its error and code", async () => {
  await using setup = await workerSetup();
  const answering = answerOf(setup.client.request("job"));
  const request = await setup.peer.envelope("request");
  setup.peer.sendEnvelope("response", {
    request_id: request.msg_id,
    success: false,
    result: null,
    error: "Disk on fire",
    error_code: "INVALID_PARAMS",
  });
  const answer = await answering;
  assert.equal(answer.success, false);
  assert.equal(answer.error, "Disk on fire");
  assert.equal(answer.error_code, "INVALID_PARAMS");
  assert.equal(answer.processed_by, setup.id);
  await setup.stillServes();
});

// Keep the Worker type import used for readers of the helpers' return types.
export type { Worker };
