// The requester's `cancel` frame (additive, opt-in): an abort on the requester side stops the
// work on the server and on the worker, and the request still gets exactly one answer.

import assert from "node:assert/strict";
import type { ActionContext } from "../lib/action.ts";
import type { Worker } from "../lib/worker/worker_client.ts";
import {
  answerOf,
  connectClient,
  group,
  RawPeer,
  startTestServer,
  startWorker,
  type TestServer,
  waitFor,
  within,
} from "./_helpers.ts";
import { NATS_MISSING, NatsCluster } from "./_nats.ts";

/**
 * A real Worker whose `slow` action runs until its signal aborts, and says so. `await using`
 * stops it at the end of the scope.
 */
async function slowWorker(server: TestServer) {
  const started: string[] = [];
  const stopped = Promise.withResolvers<unknown>();
  const running = Promise.withResolvers<void>();
  const worker: Worker = await startWorker(server, {
    name: "slow",
    actions: {
      slow: (params: unknown, ctx: ActionContext) => {
        started.push(JSON.stringify(params));
        running.resolve();
        return new Promise((_, reject) => {
          ctx.signal.addEventListener("abort", () => {
            stopped.resolve(ctx.signal.reason);
            reject(ctx.signal.reason);
          }, { once: true });
        });
      },
    },
  });
  return {
    worker,
    started,
    running: running.promise,
    stopped: stopped.promise,
    [Symbol.asyncDispose]: () => worker.stop(),
  };
}

Deno.test("requester cancel - a cancel frame stops the real Worker's handler and answers CANCELLED exactly once", async () => {
  await using server = startTestServer();
  await using slow = await slowWorker(server);
  const { running, stopped } = slow;
  await using requester = await RawPeer.open(server.requesterUrl);
  requester.send({ request_id: "r1", command: "slow", timeout: 30 });
  await within(running, "the handler to start");
  requester.send({ request_id: "r1", cancel: true });
  const answer = await requester.answer("r1");
  assert.equal(answer.success, false);
  assert.equal(answer.error_code, "CANCELLED");
  assert.equal(answer.error, "Cancelled by the requester");
  // The worker got the server's `cancel` (its own deadline is 30 s away).
  await within(stopped, "the handler to see its signal abort");
  // Nothing else for r1: a later request's answer comes after anything already sent.
  requester.send({ request_id: "barrier", command: "nothing_offers_this" });
  await requester.answer("barrier");
  assert.equal(
    requester.received.filter((f) => f?.request_id === "r1").length,
    1,
  );
  assert.equal(server.broker.stats().in_flight, 0);
});

Deno.test("requester cancel - a cancel for an id with nothing in flight gets no answer", async () => {
  await using server = startTestServer();
  const requester = await RawPeer.open(server.requesterUrl);
  try {
    requester.send({ request_id: "gone", cancel: true });
    requester.send({ request_id: "barrier", command: "nothing_offers_this" });
    await requester.answer("barrier");
    assert.deepEqual(
      requester.received.map((f) => f?.request_id),
      ["barrier"],
    );
  } finally {
    await requester.close();
  }
});

Deno.test("requester cancel - a malformed cancel frame gets a clear error and the connection stays", async () => {
  await using server = startTestServer();
  const requester = await RawPeer.open(server.requesterUrl);
  try {
    requester.send({ cancel: true });
    const missing = await requester.answer(null);
    assert.equal(missing.error_code, "INVALID_FIELD");
    assert.equal(
      missing.error,
      "A cancel frame needs the 'request_id' of the request to cancel",
    );
    requester.send({ request_id: "x", cancel: "yes" });
    const wrong = await requester.answer("x");
    assert.equal(wrong.error_code, "INVALID_FIELD");
    assert.equal(wrong.error, `Field 'cancel' must be true: got string`);
    assert.equal(requester.socket.readyState, 1);
  } finally {
    await requester.close();
  }
});

Deno.test("requester cancel - RequesterClient with cancelOnAbort stops the work, and the id is free again", async () => {
  await using server = startTestServer();
  await using slow = await slowWorker(server);
  const { started, running, stopped } = slow;
  await using client = await connectClient(server.requesterUrl, {
    cancelOnAbort: true,
  });
  const controller = new AbortController();
  const first = answerOf(
    client.request("slow", { n: 1 }, {
      signal: controller.signal,
      requestId: "job",
      timeout: 30,
    }),
    "the first request",
    35_000,
  );
  await within(running, "the handler to start");
  controller.abort(new Error("no longer needed"));
  await assert.rejects(within(first, "the abort"), {
    message: "no longer needed",
  });
  await within(stopped, "the handler to see its signal abort");
  // The server's CANCELLED answer frees the id: a request sent after it is answered after it.
  const barrier = await within(
    client.request("nothing_offers_this"),
    "the barrier's answer",
  );
  assert.equal(barrier.success, false);
  assert.equal(client.strayAnswers, 1, "the CANCELLED answer came");
  const second = client.request("slow", { n: 2 }, {
    requestId: "job",
    timeout: 0.2,
  });
  const answer = await within(second, "the second request's answer");
  assert.equal(answer.error_code, "TIMEOUT");
  assert.deepEqual(started, ['{"n":1}', '{"n":2}']);
});

Deno.test({
  name:
    "requester cancel - in a cluster, a cancel at one server stops the worker attached to another",
  ignore: NATS_MISSING !== undefined,
  fn: async () => {
    await using nats = await new NatsCluster(1).start();
    await using servers = group(
      ["s0", "s1"].map((serverName) =>
        startTestServer({
          cluster: { servers: nats.urls, name: "cancel", serverName },
        })
      ),
    );
    const links = await Promise.all(servers.map((s) => s.cluster!));
    await Promise.all(links.map((l) => l.start()));
    // The only worker is on s1; the requester talks to s0.
    await using slow = await slowWorker(servers[1]);
    await waitFor(
      () => servers[0].broker.workers().some((w) => w.registered),
      "s0 to see the worker of s1",
      10_000,
    );
    await using requester = await RawPeer.open(servers[0].requesterUrl);
    requester.send({ request_id: "far", command: "slow", timeout: 30 });
    await within(slow.running, "the handler on s1 to start");
    requester.send({ request_id: "far", cancel: true });
    const answer = await requester.answer("far");
    assert.equal(answer.error_code, "CANCELLED");
    await within(slow.stopped, "the handler on s1 to see its signal abort");
  },
});
