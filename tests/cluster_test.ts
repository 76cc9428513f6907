// The cluster: several servers as one broker over a real NATS (one node, or a 3-node NATS
// cluster), with real workers and requesters on real sockets.

import assert from "node:assert/strict";
import type { ClusterLink } from "../lib/cluster/link.ts";
import { RequesterClient } from "../lib/requester_client.ts";
import type { Worker } from "../lib/worker_client.ts";
import {
  idOf,
  startTestServer,
  startWorker,
  type TestServer,
  waitFor,
} from "./_helpers.ts";
import { NATS_MISSING, NatsCluster } from "./_nats.ts";

const ignore = NATS_MISSING !== undefined;

/** `n` in-process servers joined into one cluster on `nats`. */
async function startServers(
  nats: NatsCluster,
  n: number,
  name = "t",
): Promise<{ servers: TestServer[]; links: ClusterLink[] }> {
  const servers: TestServer[] = [];
  for (let i = 0; i < n; i++) {
    servers.push(startTestServer({
      cluster: {
        // Each server starts on a different NATS node when there are several.
        servers: [
          ...nats.urls.slice(i % nats.urls.length),
          ...nats.urls.slice(0, i % nats.urls.length),
        ],
        name,
        serverName: `s${i}`,
      },
    }));
  }
  const links = await Promise.all(servers.map((s) => s.cluster!));
  await Promise.all(links.map((l) => l.start()));
  return { servers, links };
}

async function closeAll(
  servers: TestServer[],
  clients: RequesterClient[] = [],
  workers: Worker[] = [],
): Promise<void> {
  await Promise.all(clients.map((c) => c.close()));
  await Promise.all(workers.map((w) => w.stop()));
  await Promise.all(servers.map((s) => s.close()));
}

/** Waits until every server sees `count` workers. */
async function converged(servers: TestServer[], count: number): Promise<void> {
  await waitFor(
    () =>
      servers.every((s) =>
        s.broker.workers().filter((w) => w.registered).length === count
      ),
    `every server to see ${count} workers`,
    5000,
  );
}

const whoAmI = (name: string) => () => name;

for (const nodes of [1, 3]) {
  const on = nodes === 1 ? "one NATS" : "a 3-node NATS cluster";

  Deno.test({
    name:
      `cluster on ${on}: a request at one server runs on a worker of another`,
    ignore,
    fn: async () => {
      await using nats = await new NatsCluster(nodes).start();
      const { servers } = await startServers(nats, 3);
      const clients: RequesterClient[] = [];
      const workers: Worker[] = [];
      try {
        workers.push(
          await startWorker(servers[1], {
            name: "only-on-s1",
            actions: { who: whoAmI("only-on-s1") },
          }),
        );
        await converged(servers, 1);
        for (const server of [servers[0], servers[2]]) {
          const client = new RequesterClient(server.requesterUrl);
          clients.push(client);
          await client.connect();
          const answer = await client.request("who", {});
          assert.equal(answer.success, true);
          assert.equal(answer.data, "only-on-s1");
          assert.equal(answer.processed_by, idOf(workers[0]));
        }
        // Every server lists every server and every worker with the server it is attached to.
        for (const server of servers) {
          const listed = server.broker.workers();
          assert.deepEqual(listed.map((w) => [w.name, w.server]), [[
            "only-on-s1",
            "s1",
          ]]);
          const health = await (await fetch(
            server.requesterUrl.replace("ws:", "http:") + "/health",
          )).json();
          assert.deepEqual(
            health.cluster.servers.map((s: { name: string }) => s.name).sort(),
            ["s0", "s1", "s2"],
          );
          assert.equal(health.cluster.nats, "connected");
          assert.equal(health.workers, 1);
        }
      } finally {
        await closeAll(servers, clients, workers);
      }
    },
  });
}

Deno.test({
  name: "cluster: one balancer over the workers of every server",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(1).start();
    const { servers } = await startServers(nats, 3);
    const clients: RequesterClient[] = [];
    const workers: Worker[] = [];
    try {
      for (const [i, server] of servers.entries()) {
        workers.push(
          await startWorker(server, {
            name: `w${i}`,
            concurrency: 2,
            actions: {
              // Slow enough that requests overlap, so load decides the placement.
              slow: async () => {
                await new Promise((r) => setTimeout(r, 20));
                return `w${i}`;
              },
            },
          }),
        );
      }
      await converged(servers, 3);
      const client = new RequesterClient(servers[0].requesterUrl);
      clients.push(client);
      await client.connect();
      const answers = await Promise.all(
        Array.from({ length: 30 }, () => client.request("slow", {})),
      );
      const served = new Map<string, number>();
      for (const a of answers) {
        assert.equal(a.success, true, JSON.stringify(a));
        served.set(String(a.data), (served.get(String(a.data)) ?? 0) + 1);
      }
      // 30 requests, 6 slots over three servers: every worker must have taken some.
      assert.deepEqual([...served.keys()].sort(), ["w0", "w1", "w2"]);
    } finally {
      await closeAll(servers, clients, workers);
    }
  },
});
