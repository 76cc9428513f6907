import assert from "node:assert/strict";
import {
  answerOf,
  connectClient,
  idOf,
  openRawWorker,
  RawPeer,
  respond,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";

Deno.test("dispatcher - a worker that never registers still gets work", async () => {
  await using server = startTestServer();
  const { peer, id } = await openRawWorker(server, false);
  await using client = await connectClient(server.requesterUrl);
  const answering = answerOf(client.request("anything", { n: 1 }));
  const request = await peer.envelope("request");
  assert.deepEqual(request.data, { action: "anything", params: { n: 1 } });
  respond(peer, request, "done");
  const answer = await answering;
  assert.equal(answer.success, true);
  assert.equal(answer.data, "done");
  assert.equal(answer.processed_by, id);
  assert.equal(answer.error, null);
  await client.close();
  await peer.close();
});

Deno.test("dispatcher - routes a command only to workers that offer it", async () => {
  await using server = startTestServer();
  await using alpha = await startWorker(server, {
    name: "alpha",
    actions: { alpha: () => "from alpha" },
  });
  await using beta = await startWorker(server, {
    name: "beta",
    actions: { beta: () => "from beta" },
  });
  await using client = await connectClient(server.requesterUrl);
  for (let i = 0; i < 5; i++) {
    const [a, b] = await Promise.all([
      client.request("alpha"),
      client.request("beta"),
    ]);
    assert.equal(a.data, "from alpha");
    assert.equal(a.processed_by, idOf(alpha));
    assert.equal(b.data, "from beta");
    assert.equal(b.processed_by, idOf(beta));
  }
  const unknown = await client.request("gamma");
  assert.equal(unknown.success, false);
  assert.equal(unknown.error, "No available workers");
  assert.equal(unknown.error_code, "UNKNOWN_COMMAND");
});

Deno.test("dispatcher - answers No available workers when no worker is connected", async () => {
  await using server = startTestServer();
  await using client = await connectClient(server.requesterUrl);
  // A worker action: the server's own actions (get_time) answer even with no worker.
  const answer = await client.request("get_system_info");
  assert.equal(answer.success, false);
  assert.equal(answer.error, "No available workers");
  assert.equal(answer.error_code, "NO_WORKERS");
});

Deno.test("dispatcher - matches many concurrent requests on one connection by request_id", async () => {
  await using server = startTestServer();
  await using _worker = await startWorker(server, {
    concurrency: 64,
    actions: {
      echo: async (params) => {
        const { n } = params as { n: number };
        // Answer out of order: later requests finish first.
        await new Promise((resolve) => setTimeout(resolve, (50 - n) % 7));
        return { n };
      },
    },
  });
  await using client = await connectClient(server.requesterUrl);
  const answers = await Promise.all(
    Array.from(
      { length: 50 },
      (_, n) => client.request("echo", { n }, { requestId: `req-${n}` }),
    ),
  );
  answers.forEach((answer, n) => {
    assert.equal(answer.request_id, `req-${n}`);
    assert.equal(answer.success, true);
    assert.deepEqual(answer.data, { n });
    assert.equal(answer.attempts, 1);
    assert.equal(typeof answer.elapsed_ms, "number");
  });
});

Deno.test("dispatcher - assigns and echoes a request_id when the frame has none", async () => {
  await using server = startTestServer();
  await using _worker = await startWorker(server);
  await using peer = await RawPeer.open(server.requesterUrl);
  peer.send({ command: "get_time" });
  const answer = await peer.next();
  assert.equal(answer.success, true);
  assert.match(answer.request_id, /^[0-9a-f-]{36}$/);
  assert.match(answer.data, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
});

Deno.test("dispatcher - a per-request timeout answers Worker response timeout and drops the late answer", async () => {
  await using server = startTestServer();
  const { peer: worker } = await openRawWorker(server);
  await using requester = await RawPeer.open(server.requesterUrl);
  requester.send({ request_id: "slow", command: "slow", timeout: 0.1 });
  const request = await worker.envelope("request");
  const answer = await requester.answer("slow");
  assert.equal(answer.success, false);
  assert.equal(answer.error, "Worker response timeout");
  assert.equal(answer.error_code, "TIMEOUT");
  // The server tells the worker to stop working on it.
  const cancel = await worker.envelope("cancel");
  assert.equal(cancel.data.request_id, request.msg_id);
  // The late answer is dropped quietly: no error to the worker, nothing to the requester.
  respond(worker, request, "too late");
  requester.send({ request_id: "next", command: "next" });
  const next = await worker.envelope("request");
  respond(worker, next, "on time");
  const good = await requester.answer("next");
  assert.equal(good.data, "on time");
  assert.deepEqual(requester.received.map((f) => f.request_id), [
    "slow",
    "next",
  ]);
  assert.deepEqual(worker.unread.filter((f) => f.type === "error"), []);
  await requester.close();
  await worker.close();
});

Deno.test("dispatcher - moves in-flight work to another worker when its worker disconnects", async () => {
  await using server = startTestServer();
  // The raw worker is heavier, so it gets the request first.
  const { peer: doomed, id: doomedId } = await openRawWorker(server, {
    weight: 10,
  });
  await using survivor = await startWorker(server, {
    name: "survivor",
    actions: { job: (p) => ({ got: p }) },
  });
  await using client = await connectClient(server.requesterUrl);
  const answering = answerOf(client.request("job", { x: 1 }));
  const request = await doomed.envelope("request");
  assert.equal(request.data.action, "job");
  await doomed.close();
  const answer = await answering;
  assert.equal(answer.success, true);
  assert.deepEqual(answer.data, { got: { x: 1 } });
  assert.equal(answer.processed_by, idOf(survivor));
  assert.notEqual(answer.processed_by, doomedId);
  assert.equal(answer.attempts, 2);
});

Deno.test("dispatcher - answers WORKER_LOST when the only worker disconnects with the request in flight", async () => {
  await using server = startTestServer();
  const { peer, id } = await openRawWorker(server);
  await using client = await connectClient(server.requesterUrl);
  const answering = answerOf(client.request("job"));
  await peer.envelope("request");
  await peer.close();
  const answer = await answering;
  assert.equal(answer.success, false);
  assert.equal(answer.error_code, "WORKER_LOST");
  assert.match(
    answer.error!,
    new RegExp(`^Worker '${id}' disconnected before answering`),
  );
  assert.equal(answer.attempts, 1);
});

Deno.test("dispatcher - gives up with WORKER_LOST after maxAttempts workers vanished", async () => {
  await using server = startTestServer({ maxAttempts: 2 });
  const a = await openRawWorker(server);
  const b = await openRawWorker(server);
  const c = await openRawWorker(server);
  await using client = await connectClient(server.requesterUrl);
  const answering = answerOf(client.request("job"));
  const holders: typeof a[] = [];
  for (let i = 0; i < 2; i++) {
    const holding = () =>
      [a, b, c].find((w) =>
        !holders.includes(w) &&
        w.peer.received.some((f) => f.type === "request")
      );
    await waitFor(
      () => holding() !== undefined,
      `attempt ${i + 1} to reach a worker`,
    );
    const holder = holding()!;
    holders.push(holder);
    await holder.peer.close();
  }
  const answer = await answering;
  assert.equal(answer.error_code, "WORKER_LOST");
  assert.equal(answer.attempts, 2);
  const spare = [a, b, c].find((w) => !holders.includes(w))!;
  assert.equal(
    spare.peer.received.filter((f) => f.type === "request").length,
    0,
  );
  await client.close();
  await spare.peer.close();
});

Deno.test("dispatcher - queues requests while every worker is at max_concurrency", async () => {
  await using server = startTestServer();
  const gates: PromiseWithResolvers<void>[] = [];
  await using _worker = await startWorker(server, {
    concurrency: 1,
    actions: {
      hold: async () => {
        const gate = Promise.withResolvers<void>();
        gates.push(gate);
        await gate.promise;
        return gates.length;
      },
    },
  });
  await using client = await connectClient(server.requesterUrl);
  const first = answerOf(client.request("hold"));
  const second = answerOf(client.request("hold"));
  await waitFor(
    () => gates.length === 1 && server.broker.dispatcher.queued === 1,
    "one running, one queued",
  );
  assert.equal(server.broker.stats().queued, 1);
  gates[0].resolve();
  assert.equal((await first).data, 1);
  await waitFor(() => gates.length === 2, "the queued request to start");
  gates[1].resolve();
  const answer = await second;
  assert.equal(answer.success, true);
  assert.equal(answer.data, 2);
  assert.equal(server.broker.dispatcher.queued, 0);
});

Deno.test("dispatcher - answers Server busy when the queue is full", async () => {
  await using server = startTestServer({ maxQueue: 1 });
  const gate = Promise.withResolvers<void>();
  await using _worker = await startWorker(server, {
    concurrency: 1,
    actions: { hold: () => gate.promise.then(() => "ok") },
  });
  await using client = await connectClient(server.requesterUrl);
  const running = answerOf(client.request("hold"));
  await waitFor(
    () =>
      server.broker.stats().in_flight === 1 &&
      server.broker.dispatcher.running === 1,
    "running",
  );
  const queued = answerOf(client.request("hold"));
  await waitFor(() => server.broker.dispatcher.queued === 1, "queued");
  const refused = await client.request("hold");
  assert.equal(refused.success, false);
  assert.match(
    refused.error!,
    /^Server busy: 1 requests already wait for a worker \(limit 1\)$/,
  );
  assert.equal(refused.error_code, "BUSY");
  gate.resolve();
  assert.equal((await running).data, "ok");
  assert.equal((await queued).data, "ok");
});

Deno.test("dispatcher - a queued request fails with No available workers when the last worker leaves", async () => {
  await using server = startTestServer();
  const gate = Promise.withResolvers<void>();
  await using worker = await startWorker(server, {
    concurrency: 1,
    actions: { hold: () => gate.promise.then(() => "done") },
  });
  await using client = await connectClient(server.requesterUrl);
  const running = answerOf(client.request("hold", {}, { timeout: 10 }));
  await waitFor(() => server.broker.dispatcher.running === 1, "running");
  const queued = answerOf(client.request("hold", {}, { timeout: 10 }));
  await waitFor(() => server.broker.dispatcher.queued === 1, "queued");
  const stopping = worker.stop();
  await waitFor(
    () => server.broker.workers()[0]?.draining === true,
    "draining",
  );
  gate.resolve();
  assert.equal((await running).data, "done");
  await stopping;
  const answer = await queued;
  assert.equal(answer.success, false);
  assert.equal(answer.error, "No available workers");
  assert.equal(answer.error_code, "NO_WORKERS");
});
