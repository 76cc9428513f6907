// Cluster failure rows (docs/cluster.md): a server SIGKILLed, a server that loses NATS, a NATS
// node killed under a 3-node NATS cluster. Real nats-server, real server processes where a
// process must die, real workers and requesters.

import assert from "node:assert/strict";
import type { RequesterAnswer } from "../lib/protocol.ts";
import { Worker } from "../lib/worker/worker_client.ts";
import {
  answerOf,
  connectClient,
  group,
  idOf,
  startTestServer,
  startWorker,
  type TestClient,
  type TestServer,
  type TestWorker,
  waitFor,
  within,
} from "./_helpers.ts";
import { health, healthUntil } from "./_cluster.ts";
import { type ServerProgram, startServerProgram } from "./_procs.ts";
import { NATS_MISSING, NatsCluster } from "./_nats.ts";

const ignore = NATS_MISSING !== undefined;

function sleepAction(ms: number, name: string) {
  return async () => {
    await new Promise((r) => setTimeout(r, ms));
    return name;
  };
}

/** A connected Worker that `await using` stops at the end of the scope. */
async function startClusterWorker(
  urls: string,
  name: string,
  ms: number,
): Promise<TestWorker> {
  const worker = Object.assign(
    new Worker({
      url: urls,
      name,
      concurrency: 4,
      backoff: { initialMs: 100, maxMs: 400 },
      graceMs: 500,
    }),
    { [Symbol.asyncDispose]: () => worker.stop() },
  );
  worker.registerAction("slow", sleepAction(ms, name));
  const ready = worker.ready();
  void worker.start();
  try {
    await within(ready, `worker ${name} to connect`, 10_000);
  } catch (error) {
    await worker.stop();
    throw error;
  }
  return worker;
}

Deno.test({
  name:
    "cluster failure: a SIGKILLed server's requests move elsewhere, its workers and requesters reconnect to another server",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(1).start();
    await using servers = group<ServerProgram>();
    await using workers = group<TestWorker>();
    await using clients = group<TestClient>();
    for (const name of ["A", "B", "C"]) {
      servers.push(
        await startServerProgram([
          "--cluster",
          nats.urls[0],
          "--cluster-name",
          "failover",
          "--server-name",
          name,
        ]),
      );
    }
    const [a, b, c] = servers;
    const ws = (p: number) => `ws://127.0.0.1:${p}`;
    // wB prefers B, then C: when B dies it must move to C.
    workers.push(
      await startClusterWorker(
        `${ws(b.workerPort)},${ws(c.workerPort)}`,
        "wB",
        300,
      ),
    );
    workers.push(await startClusterWorker(ws(c.workerPort), "wC", 300));
    await healthUntil(
      a.workerPort,
      (h) => h.workers === 2 && h.cluster?.servers.length === 3,
      "A to see 3 servers and 2 workers",
    );
    const onA = await connectClient(ws(a.requesterPort));
    clients.push(onA);
    // A requester of B that knows A too, and resubmits what B never answered.
    const onB = await connectClient(
      `${ws(b.requesterPort)},${ws(a.requesterPort)}`,
      { reconnect: true, resubmit: true },
    );
    clients.push(onB);
    const answers: Promise<RequesterAnswer>[] = [];
    for (let i = 0; i < 12; i++) {
      answers.push(
        answerOf(onA.request("slow", {}, { timeout: 20 }), "on A", 30_000),
      );
      answers.push(
        answerOf(onB.request("slow", {}, { timeout: 20 }), "on B", 30_000),
      );
    }
    // wB holds work from both servers when B dies.
    await waitFor(
      () => workers[0].status().in_flight >= 3,
      "wB to be busy",
    );
    const connects = workers[0].status().connects;
    const killedAt = Date.now();
    b.program.kill("SIGKILL");
    await waitFor(
      () =>
        workers[0].status().connects > connects &&
        workers[0].status().connected,
      "wB to reconnect",
      10_000,
    );
    const back = Date.now() - killedAt;
    const settled = await Promise.all(answers);
    for (const answer of settled) {
      assert.equal(answer.success, true, JSON.stringify(answer));
    }
    // Some request of A's ran on wB, and some of B's requester was sent again to A.
    assert.ok(
      settled.some((x) => (x.attempts ?? 1) > 1),
      "no request was re-dispatched",
    );
    assert.ok(onB.resubmitted > 0, "the requester of B resubmitted nothing");
    assert.equal(workers[0].url, ws(c.workerPort));
    console.log(`wB served again through C ${back} ms after B was killed`);
    await healthUntil(
      a.workerPort,
      (h) => h.workers === 2 && h.cluster?.servers.length === 2,
      "A to see B gone and wB on C",
    );
    // It kept its name: C still listed B's entry of it when it arrived, but it is the same worker.
    const listed = (await health(a.workerPort)).cluster!.workers;
    assert.deepEqual(
      listed.map((w) => [w.name, w.server]).sort(),
      [["wB", "C"], ["wC", "C"]],
    );
  },
});

Deno.test({
  name:
    "cluster failure: a server that loses NATS keeps serving its own workers, says so, and rejoins",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(1).start();
    await using servers = group<TestServer>();
    await using workers = group<TestWorker>();
    await using clients = group<TestClient>();
    for (const name of ["A", "B"]) {
      servers.push(startTestServer({
        cluster: { servers: nats.urls, name: "lose", serverName: name },
      }));
    }
    const [a, b] = servers;
    await Promise.all(servers.map(async (s) => (await s.cluster!).start()));
    workers.push(
      await startWorker(a, { name: "wA", actions: { who: () => "wA" } }),
    );
    workers.push(
      await startWorker(b, {
        name: "wB",
        actions: { who: () => "wB", onlyB: () => "wB" },
      }),
    );
    await waitFor(() => a.broker.workers().length === 2, "A to see wB");
    const client = await connectClient(a.requesterUrl);
    clients.push(client);
    assert.equal((await client.request("onlyB")).data, "wB");

    await nats.nodes[0].stop();
    await waitFor(
      () => a.broker.stats().cluster?.nats === "disconnected",
      "A to notice",
    );
    await waitFor(
      () => a.broker.workers().length === 1,
      "A to drop wB",
      5000,
    );
    for (let i = 0; i < 5; i++) {
      const answer = await client.request("who");
      assert.equal(answer.success, true);
      assert.equal(answer.processed_by, idOf(workers[0]));
    }
    const h = a.broker.stats();
    assert.equal(h.cluster?.nats, "disconnected");
    assert.deepEqual(h.cluster?.servers.map((s) => s.name), ["A"]);

    await nats.nodes[0].start();
    await waitFor(
      () =>
        a.broker.stats().cluster?.nats === "connected" &&
        a.broker.workers().length === 2,
      "A to rejoin and see wB again",
      10_000,
    );
    assert.equal((await client.request("onlyB")).data, "wB");
  },
});

Deno.test({
  name:
    "cluster failure: a NATS node killed under a 3-node NATS cluster loses no request",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(3).start();
    await using servers = group<TestServer>();
    await using workers = group<TestWorker>();
    await using clients = group<TestClient>();
    for (let i = 0; i < 3; i++) {
      servers.push(startTestServer({
        cluster: {
          servers: [nats.urls[i], ...nats.urls.filter((_, j) => j !== i)],
          name: "natsnode",
          serverName: `s${i}`,
        },
      }));
    }
    await Promise.all(servers.map(async (s) => (await s.cluster!).start()));
    // Workers on s1 and s2 only: everything s0 takes crosses NATS.
    for (const i of [1, 2]) {
      workers.push(
        await startWorker(servers[i], {
          name: `w${i}`,
          concurrency: 4,
          actions: { slow: sleepAction(30, `w${i}`) },
        }),
      );
    }
    await waitFor(
      () => servers.every((s) => s.broker.workers().length === 2),
      "every server to see both workers",
      5000,
    );
    const client = await connectClient(servers[0].requesterUrl);
    clients.push(client);
    const answers: Promise<RequesterAnswer>[] = [];
    for (let i = 0; i < 80; i++) {
      answers.push(
        answerOf(client.request("slow", {}, { timeout: 20 }), "slow", 30_000),
      );
      if (i === 20) await nats.nodes[0].stop();
      if (i % 4 === 0) await new Promise((r) => setTimeout(r, 10));
    }
    const settled = await Promise.all(answers);
    const failed = settled.filter((x) => !x.success);
    assert.deepEqual(failed, []);
    // s0 lost its NATS node and carried on through another.
    const link = servers[0].broker.stats().cluster!;
    assert.equal(link.nats, "connected");
    assert.notEqual(link.nats_server, nats.urls[0].replace("nats://", ""));
  },
});
