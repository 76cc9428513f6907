// Fair queueing: one requester connection with a deep backlog cannot take the queue or the free
// worker slots from another.

import assert from "node:assert/strict";
import {
  answerOf,
  connectClient,
  type Frame,
  openRawWorker,
  respond,
  startTestServer,
  waitFor,
} from "./_helpers.ts";

Deno.test("fairness - a second connection is queued and served in turn beside a full backlog", async () => {
  await using server = startTestServer({ maxQueue: 20 });
  const worker = await openRawWorker(server, {
    actions: ["slow"],
    max_concurrency: 2,
  });
  await using _peer = worker.peer;
  await using a = await connectClient(server.requesterUrl);
  await using b = await connectClient(server.requesterUrl);
  // A fills both worker slots and the whole queue; its extra requests are turned away.
  let turnedAway = 0;
  const fromA = Array.from(
    { length: 40 },
    (_, n) =>
      answerOf(
        a.request("slow", { from: "A", n }, { timeout: 30 }).then((x) => {
          if (x.error_code === "BUSY") turnedAway++;
          return x;
        }),
        `A's request ${n}`,
        35_000,
      ),
  );
  await waitFor(() => turnedAway === 18);
  // B still gets in: A's newest queued requests give up their places.
  const fromB = Array.from(
    { length: 5 },
    (_, n) =>
      answerOf(
        b.request("slow", { from: "B", n }, { timeout: 30 }),
        `B's request ${n}`,
        35_000,
      ),
  );
  await waitFor(() => turnedAway === 23, "five of A's places to go to B");
  assert.equal(server.broker.dispatcher.queued, 20);
  // The worker answers one request at a time; the order it gets them in is the fair share.
  const order: string[] = [];
  for (let i = 0; i < 22; i++) {
    const request: Frame = await worker.peer.envelope("request");
    order.push(request.data.params.from);
    respond(worker.peer, request, request.data.params);
  }
  const answersB = await Promise.all(fromB);
  assert.ok(answersB.every((x) => x.success), JSON.stringify(answersB));
  const answersA = await Promise.all(fromA);
  const busyA = answersA.filter((x) => x.error_code === "BUSY");
  assert.equal(busyA.length, 40 - 2 - 15);
  assert.ok(
    busyA.some((x) => /holds the largest share/.test(x.error ?? "")),
  );
  // The first two were A's, running before B came; then B's five went out within the next ten.
  const afterB = order.slice(2, 12);
  assert.equal(
    afterB.filter((f) => f === "B").length,
    5,
    order.join(""),
  );
});
