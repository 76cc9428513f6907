// A request that finds no worker for its action waits a grace period for one to register, so
// that what arrives right after a restart (resubmits, batches) lands once the workers are back.

import assert from "node:assert/strict";
import {
  answerOf,
  connectClient,
  emptyBars,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";

Deno.test("no worker yet - a single request and a batch wait for a worker that registers within the grace period", async () => {
  await using server = startTestServer({ noWorkerGraceMs: 20_000 });
  await using client = await connectClient(server.requesterUrl);
  const single = client.request("who", {}, { timeout: 30 });
  const batch = client.request(
    "get_markets",
    [{ symbol_type: "etf", code: "510300" }],
    { timeout: 30 },
  );
  await waitFor(
    () => server.broker.dispatcher.queued === 1,
    "the single request to wait in the queue",
  );
  await using _worker = await startWorker(server, {
    actions: { who: () => "late", get_markets: emptyBars },
  });
  const [s, b] = await Promise.all([single, batch]);
  assert.equal(s.success, true, s.error ?? "");
  assert.equal(s.data, "late");
  assert.equal(b.success, true, b.error ?? "");
  assert.deepEqual(
    (b.data as { summary: unknown }).summary,
    { total: 1, success: 1, failed: 0 },
  );
});

Deno.test("no worker yet - when none comes within the grace period the answer is NO_WORKERS, not a timeout", async () => {
  await using server = startTestServer({ noWorkerGraceMs: 200 });
  await using client = await connectClient(server.requesterUrl);
  const [s, b] = await Promise.all([
    client.request("who", {}, { timeout: 30 }),
    client.request("get_markets", [{ symbol_type: "etf", code: "510300" }], {
      timeout: 30,
    }),
  ]);
  assert.equal(s.success, false);
  assert.equal(s.error_code, "NO_WORKERS");
  assert.equal(b.success, false);
  assert.equal(b.error_code, "NO_WORKERS");
});

Deno.test("no worker yet - the grace period takes at most half the time the deadline leaves", async () => {
  await using server = startTestServer({ noWorkerGraceMs: 60_000 });
  await using client = await connectClient(server.requesterUrl);
  const s = await client.request("who", {}, { timeout: 0.4 });
  assert.equal(s.error_code, "NO_WORKERS", s.error ?? "");
});

Deno.test("no worker yet - an action no worker ever offered fails at once while workers are here; one a departed worker offered waits", async () => {
  await using server = startTestServer({ noWorkerGraceMs: 60_000 });
  await using client = await connectClient(server.requesterUrl);
  // It stays, so the pool is never empty: only the departed worker's offer makes "who" wait.
  await using _bystander = await startWorker(server, {
    actions: { other: () => "other" },
  });
  const first = await startWorker(server, { actions: { who: () => "first" } });
  const typo = await answerOf(
    client.request("woh", {}, { timeout: 30 }),
    "a request for an action nobody offers",
    5000,
  );
  assert.equal(typo.success, false);
  await first.stop();
  await waitFor(() => server.broker.workers().length === 1, "the worker to go");
  const again = client.request("who", {}, { timeout: 30 });
  await waitFor(
    () => server.broker.dispatcher.queued === 1,
    "the request to wait for a worker",
  );
  await using _second = await startWorker(server, {
    actions: { who: () => "second" },
  });
  assert.equal((await again).data, "second");
});

Deno.test("no worker yet - a request whose only worker vanished waits for it to come back instead of failing", async () => {
  await using server = startTestServer({ noWorkerGraceMs: 20_000 });
  await using client = await connectClient(server.requesterUrl);
  let release = () => {};
  const first = await startWorker(server, {
    name: "only",
    actions: { job: () => new Promise((r) => release = () => r("first")) },
  });
  const answer = client.request("job", {}, { timeout: 30 });
  await waitFor(() => server.broker.stats().in_flight === 1, "it to run");
  await first.stop(0);
  release();
  await waitFor(() => server.broker.workers().length === 0, "the worker to go");
  await using _again = await startWorker(server, {
    name: "only",
    actions: { job: () => "again" },
  });
  const a = await answer;
  assert.equal(a.success, true, JSON.stringify(a));
  assert.equal(a.data, "again");
});
