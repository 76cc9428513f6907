import assert from "node:assert/strict";
import { BATCH_ENVELOPES, EnvelopeBatcher } from "../lib/protocol.ts";
import {
  answerOf,
  connectClient,
  type Frame,
  openRawWorker,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";

/** Resolves after the microtasks queued so far (and those they queue) have run. */
function afterTurn(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

Deno.test("EnvelopeBatcher - one envelope in a turn leaves as it is, several as one array in order", async () => {
  const frames: string[] = [];
  const batcher = new EnvelopeBatcher((frame) => frames.push(frame));
  batcher.push('{"n":1}');
  await afterTurn();
  assert.deepEqual(frames, ['{"n":1}']);
  batcher.push('{"n":2}');
  batcher.push('{"n":3}');
  batcher.push('{"n":4}');
  assert.deepEqual(frames.length, 1, "nothing leaves before the turn ends");
  await afterTurn();
  assert.deepEqual(frames, ['{"n":1}', '[{"n":2},{"n":3},{"n":4}]']);
});

Deno.test("EnvelopeBatcher - keeps frames under maxChars and sends a larger envelope alone, after what came before", async () => {
  const frames: string[] = [];
  const batcher = new EnvelopeBatcher((frame) => frames.push(frame), 20);
  batcher.push('{"a":1}'); // 7 characters
  batcher.push('{"b":2}');
  batcher.push('{"c":3}'); // would make [..,..,..] 23 characters: the first two leave
  batcher.push(`{"big":"${"x".repeat(30)}"}`);
  batcher.push('{"d":4}');
  await afterTurn();
  assert.deepEqual(frames, [
    '[{"a":1},{"b":2}]',
    '{"c":3}',
    `{"big":"${"x".repeat(30)}"}`,
    '{"d":4}',
  ]);
  for (const frame of frames.filter((f) => f.startsWith("["))) {
    assert.ok(frame.length <= 20, frame);
  }
  assert.deepEqual(
    frames.flatMap((f) => f.startsWith("[") ? JSON.parse(f) : [JSON.parse(f)]),
    [{ a: 1 }, { b: 2 }, { c: 3 }, { big: "x".repeat(30) }, { d: 4 }],
  );
});

Deno.test("EnvelopeBatcher - a write that throws in the deferred flush does not escape", async () => {
  const batcher = new EnvelopeBatcher(() => {
    throw new Error("socket closed");
  });
  batcher.push('{"a":1}');
  batcher.push('{"b":2}');
  await afterTurn(); // an escaped error would fail the test as uncaught
});

/**
 * A raw worker with room for one request holds `first`; three more wait in the queue; then it
 * re-registers with room for eight, and the server sends the three in one turn. `await using`
 * closes the client, the raw worker and the server at the end of the scope.
 */
async function queuedThenReleased(announce: boolean) {
  await using stack = new AsyncDisposableStack();
  const server = stack.use(startTestServer());
  const { peer } = await openRawWorker(server, {
    actions: ["echo"],
    max_concurrency: 1,
    ...(announce ? { [BATCH_ENVELOPES]: true } : {}),
  });
  stack.use(peer);
  const client = stack.use(await connectClient(server.requesterUrl));
  const answers = ["a", "b", "c", "d"].map((x) =>
    answerOf(
      client.request("echo", { x }, { timeout: 10 }),
      `echo ${x}`,
      15_000,
    )
  );
  const first = await peer.envelope("request");
  await waitFor(() => server.broker.stats().queued === 3, "3 queued requests");
  const framesBefore = peer.received.length;
  peer.sendEnvelope("connect", {
    name: "raw",
    actions: ["echo"],
    max_concurrency: 8,
    ...(announce ? { [BATCH_ENVELOPES]: true } : {}),
  });
  await waitFor(
    () =>
      peer.received.slice(framesBefore).flatMap((f: Frame) =>
        Array.isArray(f) ? f : [f]
      ).filter((f: Frame) => f?.type === "request").length === 3,
    "the 3 queued requests",
  );
  const frames = peer.received.slice(framesBefore);
  const release = stack.move();
  return {
    server,
    peer,
    answers,
    first,
    frames,
    [Symbol.asyncDispose]: () => release.disposeAsync(),
  };
}

Deno.test("worker port - a worker that registered with batch_envelopes gets requests of one turn in one frame and may answer in one", async () => {
  await using setup = await queuedThenReleased(true);
  const { server, peer, answers, first, frames } = setup;
  const hello = peer.received.find((f: Frame) => f?.type === "connect");
  assert.equal(hello.data[BATCH_ENVELOPES], true, "the welcome offers it");
  const arrays = frames.filter((f: Frame) => Array.isArray(f));
  assert.equal(arrays.length, 1, JSON.stringify(frames));
  const requests = arrays[0] as Frame[];
  assert.deepEqual(
    requests.map((r) => r.data.params.x),
    ["b", "c", "d"],
  );
  // All four answers in one frame, one of them for a request it does not hold.
  const response = (msgId: string, x: unknown) => ({
    type: "response",
    msg_id: crypto.randomUUID(),
    timestamp: Date.now() / 1000,
    data: { request_id: msgId, success: true, result: x, error: null },
  });
  peer.send([
    response(first.msg_id, "A"),
    ...requests.map((r) => response(r.msg_id, r.data.params.x.toUpperCase())),
    response("no-such-request", "?"),
    { not: "an envelope" },
  ]);
  const results = await Promise.all(answers);
  assert.deepEqual(results.map((a) => a.data), ["A", "B", "C", "D"]);
  const errors = [
    await peer.envelope("error"),
    await peer.envelope("error"),
  ];
  assert.deepEqual(errors.map((e) => e.data.code).sort(), [
    "INVALID_FIELD",
    "UNKNOWN_REQUEST",
  ]);
  assert.equal(
    server.broker.workers().length,
    1,
    "bad elements cost nothing else",
  );
});

Deno.test("worker port - a worker that never said batch_envelopes (an original one) only ever gets one envelope per frame", async () => {
  await using setup = await queuedThenReleased(false);
  const { peer, answers, first, frames } = setup;
  assert.ok(frames.every((f: Frame) => !Array.isArray(f)));
  // An array from it is still a bad frame, as it always was.
  peer.send([{ type: "heartbeat", msg_id: "h", timestamp: 0, data: {} }]);
  const error = await peer.envelope("error");
  assert.equal(error.data.error, "Frame must be a JSON object: got array");
  const requests = [
    first,
    ...frames.filter((f: Frame) => f?.type === "request"),
  ];
  for (const r of requests) {
    peer.sendEnvelope("response", {
      request_id: r.msg_id,
      success: true,
      result: r.data.params.x,
      error: null,
    });
  }
  assert.deepEqual((await Promise.all(answers)).map((a) => a.data), [
    "a",
    "b",
    "c",
    "d",
  ]);
});

Deno.test("worker - batches with a server that offers it, and every one of many concurrent requests is answered", async () => {
  await using server = startTestServer();
  await using _worker = await startWorker(server, {
    concurrency: 64,
    actions: { echo: (params) => params },
  });
  await using client = await connectClient(server.requesterUrl);
  const answers = await Promise.all(
    Array.from(
      { length: 200 },
      (_, i) => client.request("echo", { i }, { timeout: 10 }),
    ),
  );
  assert.deepEqual(
    answers.map((a) => (a.data as { i: number }).i),
    Array.from({ length: 200 }, (_, i) => i),
  );
});
