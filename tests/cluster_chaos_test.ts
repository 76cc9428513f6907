// Cluster chaos: three server processes on one NATS, workers attached across them, a 300-item
// streamed batch and a stream of single requests while servers are SIGKILLed and restarted and
// workers vanish at random (fixed seed). Every request must be answered exactly once, correctly.

import assert from "node:assert/strict";
import {
  clusterServerArgs,
  healthUntil,
  rotate,
  startLoad,
  startLoadWorker,
} from "./_cluster.ts";
import {
  connectClient,
  group,
  mulberry32,
  type TestClient,
  within,
} from "./_helpers.ts";
import { type Program, startServerProgram } from "./_procs.ts";
import { NATS_MISSING, NatsCluster } from "./_nats.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const TIMING = { echoMs: 10, itemMs: 4 };

Deno.test({
  name:
    "cluster chaos - servers killed and restarted, workers lost: every request answered once",
  ignore: NATS_MISSING !== undefined,
  async fn() {
    const random = mulberry32(11_2026);
    await using nats = await new NatsCluster(1).start();
    const names = ["A", "B", "C"];
    // Killed servers move from `programs` to `retired`, so both are waited for at the end.
    await using programs = group<Program>();
    await using retired = group<Program>();
    const ports: { worker: number; requester: number }[] = [];
    for (const name of names) {
      const s = await startServerProgram(
        clusterServerArgs(nats.urls[0], "chaos", name),
      );
      programs.push(s.program);
      ports.push({ worker: s.workerPort, requester: s.requesterPort });
    }
    const workerUrls = ports.map((p) => `ws://127.0.0.1:${p.worker}`);
    const requesterUrls = ports.map((p) => `ws://127.0.0.1:${p.requester}`);
    // Each worker and requester prefers a different server and knows all three.
    await using workers = group(
      [0, 1, 2, 3, 4].map((i) =>
        startLoadWorker(rotate(workerUrls, i), `cw${i}`, TIMING)
      ),
    );
    await using clients = group<TestClient>();
    let serverKills = 0;
    let workerKills = 0;
    await within(
      Promise.all(workers.map((w) => w.ready())),
      "every worker to connect",
      20_000,
    );
    for (const i of [0, 1, 2]) {
      clients.push(
        await connectClient(rotate(requesterUrls, i).join(","), {
          reconnect: true,
          resubmit: true,
        }),
      );
    }
    // Every server sees every worker before the chaos starts.
    for (const [i, p] of ports.entries()) {
      await healthUntil(
        p.worker,
        (h) => h.workers === workers.length,
        `${names[i]} to see every worker`,
      );
    }

    // Stopped (below, or by `await using` on a failure) before the clients close.
    await using load = startLoad(clients, {
      items: 300,
      batchClient: 1,
      everyMs: 12,
      most: 300,
    });

    const chaos = (async () => {
      for (let round = 0; round < 4; round++) {
        await sleep(600 + random() * 600);
        if (random() < 0.5) {
          const i = Math.floor(random() * programs.length);
          programs[i].kill("SIGKILL");
          retired.push(programs[i]);
          serverKills++;
          await programs[i].done();
          await sleep(200 + random() * 300);
          programs[i] = (await startServerProgram(
            clusterServerArgs(nats.urls[0], "chaos", names[i], ports[i]),
          )).program;
        } else {
          const i = Math.floor(random() * workers.length);
          await workers[i].stop(0);
          workerKills++;
          workers[i] = startLoadWorker(rotate(workerUrls, i), `cw${i}`, TIMING);
        }
      }
    })();

    await chaos;
    const { singles } = await load.stop();
    assert.ok(serverKills + workerKills === 4);
    console.log(
      `${singles} requests and a 300-item batch, ${serverKills} servers and ${workerKills} workers killed; ` +
        `${clients.reduce((s, c) => s + c.resubmitted, 0)} resubmitted`,
    );
  },
});
