// Cluster chaos: three server processes on one NATS, workers attached across them, a 300-item
// streamed batch and a stream of single requests while servers are SIGKILLed and restarted and
// workers vanish at random (fixed seed). Every request must be answered exactly once, correctly.

import assert from "node:assert/strict";
import {
  rotate,
  startLoad,
  startLoadWorker,
  startProcessCluster,
} from "./_cluster.ts";
import {
  connectClient,
  group,
  mulberry32,
  type TestClient,
} from "./_helpers.ts";
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
    // Each worker and requester prefers a different server and knows all three.
    await using rig = await startProcessCluster(
      nats.urls[0],
      "chaos",
      ["A", "B", "C"],
      { count: 5, prefix: "cw", ...TIMING },
    );
    const { programs, workers } = rig;
    await using clients = group<TestClient>();
    let serverKills = 0;
    let workerKills = 0;
    for (const i of [0, 1, 2]) {
      clients.push(
        await connectClient(rotate(rig.requesterUrls, i).join(","), {
          reconnect: true,
          resubmit: true,
        }),
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
          serverKills++;
          await programs[i].done();
          await sleep(200 + random() * 300);
          await rig.restart(i);
        } else {
          const i = Math.floor(random() * workers.length);
          await workers[i].stop(0);
          workerKills++;
          workers[i] = startLoadWorker(
            rotate(rig.workerUrls, i),
            `cw${i}`,
            TIMING,
          );
        }
      }
    })();

    await chaos;
    const { singles } = await load.stop();
    assert.ok(serverKills + workerKills === 4);
    console.log(
      `${singles} requests and a 300-item batch, ${serverKills} servers and ${workerKills} workers killed; ` +
        `${
          clients.reduce((sum, client) => sum + client.resubmitted, 0)
        } resubmitted`,
    );
  },
});
