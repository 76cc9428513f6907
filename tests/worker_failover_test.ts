// A worker whose server goes silent without closing TCP (frozen, or cut off) moves on, and a
// worker back on a new connection keeps its name.

import assert from "node:assert/strict";
import {
  connectClient,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";
import { FaultProxy } from "./_proxy.ts";

Deno.test("worker failover - a server that answers no ping loses its worker to the next URL", async () => {
  await using a = startTestServer();
  await using b = startTestServer();
  await using proxy = new FaultProxy({
    port: Number(new URL(a.workerUrl).port),
  });
  await using _worker = await startWorker(a, {
    name: "mover",
    url: `${proxy.url("ws")},${b.workerUrl}`,
    pingIntervalMs: 100,
  });
  // The server's heartbeat and idle timers are far longer than this test: only pings notice.
  proxy.blackhole();
  await waitFor(
    () => b.broker.workers().some((w) => w.name === "mover" && w.registered),
    "the worker to register on the second server",
    10_000,
  );
});

Deno.test("worker failover - the same worker back on a new connection keeps its name; another of that name does not", async () => {
  await using server = startTestServer();
  await using proxy = new FaultProxy({
    port: Number(new URL(server.workerUrl).port),
  });
  await using _worker = await startWorker(server, {
    name: "keeper",
    url: `${proxy.url("ws")},${server.workerUrl}`,
    pingIntervalMs: 100,
  });
  const first = server.broker.workers()[0].client_id;
  // Silent, not closed: the server still lists the old connection when the worker comes back.
  proxy.blackhole();
  await waitFor(
    () =>
      server.broker.workers().some((w) =>
        w.client_id !== first && w.registered
      ),
    "the worker to connect again",
    10_000,
  );
  const names = server.broker.workers().map((w) => w.name);
  assert.deepEqual(names, ["keeper"]);
  await using _other = await startWorker(server, { name: "keeper" });
  assert.deepEqual(
    server.broker.workers().map((w) => w.name).sort(),
    ["keeper", "keeper-2"],
  );
});

Deno.test("worker failover - a server that was itself frozen does not take its workers' silence for a stall", async () => {
  let now = Date.now();
  await using server = startTestServer({
    clock: { now: () => now },
    sweepIntervalMs: 1000,
  });
  let release = () => {};
  await using _a = await startWorker(server, {
    name: "a",
    actions: {
      job: () => new Promise((r) => release = () => r("a")),
    },
  });
  await using client = await connectClient(server.requesterUrl);
  const answer = client.request("job", {}, { timeout: 120 });
  await waitFor(() => server.broker.stats().in_flight === 1, "a to hold it");
  let ranOnB = 0;
  await using _b = await startWorker(server, {
    name: "b",
    actions: { job: () => ++ranOnB && "b" },
  });
  server.broker.sweep();
  // The server was stopped for 20 s (past the 15 s stall timeout); its workers were not.
  now += 20_000;
  server.broker.sweep();
  assert.equal(ranOnB, 0, "the request stayed on its worker");
  release();
  assert.equal((await answer).data, "a");
});
