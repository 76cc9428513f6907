// When a single request is sent to another worker, and when it must not be: a blocked upstream,
// an action marked non-retriable, and a lost job's place in the queue.

import assert from "node:assert/strict";
import { RequesterClient } from "../lib/requester/requester_client.ts";
import type { Worker } from "../lib/worker/worker_client.ts";
import {
  answerOf,
  type Frame,
  idOf,
  openRawWorker,
  type RawPeer,
  respond,
  startTestServer,
  startWorker,
  waitFor,
  within,
} from "./_helpers.ts";

const BLOCKED = {
  success: false,
  code: "510300",
  error: 'Upstream host "push2his.eastmoney.com" failed: HTTP 403',
  error_code: "UPSTREAM_BLOCKED",
  retriable: true,
};

Deno.test("re-dispatch - a single request whose worker's upstream is blocked is answered by another worker", async () => {
  await using server = startTestServer({ strategy: "round_robin" });
  let blockedCalls = 0;
  const workers: Worker[] = [];
  const client = new RequesterClient(server.requesterUrl, { timeout: 10 });
  try {
    workers.push(
      await startWorker(server, {
        name: "banned",
        actions: {
          get_market: () => {
            blockedCalls++;
            return BLOCKED;
          },
        },
      }),
    );
    workers.push(
      await startWorker(server, {
        name: "fine",
        actions: {
          get_market: (params) => ({
            success: true,
            code: (params as { code: string }).code,
            data: [],
          }),
        },
      }),
    );
    const [banned, fine] = workers.map(idOf);
    await client.connect();
    // Round robin sends every other first attempt to the banned worker.
    for (let i = 0; i < 6; i++) {
      const answer = await within(
        client.request("get_market", { code: "510300" }),
        `answer ${i}`,
      );
      assert.equal(answer.success, true);
      assert.equal((answer.data as { success: boolean }).success, true);
      assert.equal(answer.processed_by, fine);
    }
    assert.ok(blockedCalls >= 2, `the banned worker was tried ${blockedCalls}`);
    const info = server.broker.workers().find((w) => w.client_id === banned);
    assert.ok((info?.failures ?? 0) >= 1, "counted against its score");
  } finally {
    await client.close();
    for (const worker of workers) await worker.stop();
  }
});

Deno.test("re-dispatch - a non-retriable action is never sent to a second worker", async () => {
  await using server = startTestServer();
  const peers: RawPeer[] = [];
  const client = new RequesterClient(server.requesterUrl, { timeout: 10 });
  try {
    for (const name of ["a", "b"]) {
      const { peer } = await openRawWorker(server, {
        name,
        actions: ["charge"],
        non_retriable: ["charge"],
      });
      peers.push(peer);
    }
    await client.connect();
    // Its worker vanishes mid-request: it may or may not have run, so it is not run again.
    const lost = answerOf(client.request("charge", { n: 1 }));
    const [holder, other] = await whoGot(peers, "charge");
    holder.socket.terminate();
    const answer = await lost;
    assert.equal(answer.error_code, "WORKER_LOST");
    // Its worker's upstream refused: also not run again.
    const refused = answerOf(client.request("charge", { n: 2 }));
    const second = await other.envelope("request");
    assert.deepEqual(second.data.params, { n: 2 });
    respond(other, second, BLOCKED);
    const refusal = await refused;
    assert.deepEqual(refusal.data, BLOCKED);
    assert.equal(refusal.attempts, 1);
    assert.deepEqual(
      other.received.filter((f) => f?.type === "request").map((f) =>
        f.data.params
      ),
      [{ n: 2 }],
      "the other worker never saw the first request",
    );
  } finally {
    await client.close();
    for (const peer of peers) await peer.close();
  }
});

Deno.test("re-dispatch - a job whose worker vanished goes to the front of the queue", async () => {
  await using server = startTestServer();
  const peers: RawPeer[] = [];
  const client = new RequesterClient(server.requesterUrl, { timeout: 10 });
  try {
    for (const name of ["a", "b"]) {
      const { peer } = await openRawWorker(server, {
        name,
        actions: ["work"],
        max_concurrency: 1,
      });
      peers.push(peer);
    }
    await client.connect();
    const first = answerOf(client.request("work", { n: 1 }));
    const [holder, other] = await whoGot(peers, "work");
    const second = answerOf(client.request("work", { n: 2 }));
    const secondRequest = await other.envelope("request");
    assert.deepEqual(secondRequest.data.params, { n: 2 });
    // Both workers are busy: the third waits in the queue.
    const third = answerOf(client.request("work", { n: 3 }));
    await waitFor(
      () => server.broker.dispatcher.queued === 1,
      "the third request to queue",
    );
    holder.socket.terminate();
    await waitFor(
      () => server.broker.stats().workers === 1,
      "the server to see the worker gone",
    );
    // The lost first job is re-queued ahead of the third, which waited longer in the queue.
    respond(other, secondRequest, "two");
    const next = await other.envelope("request");
    assert.deepEqual(next.data.params, { n: 1 });
    respond(other, next, "one");
    const last = await other.envelope("request");
    assert.deepEqual(last.data.params, { n: 3 });
    respond(other, last, "three");
    const answers = await Promise.all([first, second, third]);
    assert.deepEqual(answers.map((a) => a.data), ["one", "two", "three"]);
    assert.equal(answers[0].attempts, 2);
  } finally {
    await client.close();
    for (const peer of peers) await peer.close();
  }
});

/** The peer that received an `action` request (taking it from its unread frames), then the other. */
async function whoGot(
  peers: RawPeer[],
  action: string,
): Promise<[RawPeer, RawPeer]> {
  const isIt = (f: Frame) => f?.type === "request" && f.data?.action === action;
  await waitFor(
    () => peers.some((peer) => peer.unread.some(isIt)),
    `a worker to get ${action}`,
  );
  const holder = peers.find((peer) => peer.unread.some(isIt))!;
  await holder.next(isIt);
  return [holder, peers.find((peer) => peer !== holder)!];
}
