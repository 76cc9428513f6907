// Server processes frozen or restarted under load: a server SIGSTOPped and then continued, and
// everything (servers and NATS) killed and started again, servers first or NATS first. A stream
// of single requests and a streamed batch from requesters that resubmit; every request gets one
// answer with its real result.

import assert from "node:assert/strict";
import {
  healthUntil,
  type Load,
  rotate,
  startLoad,
  startProcessCluster,
} from "./_cluster.ts";
import { connectClient, group, type TestClient, waitFor } from "./_helpers.ts";
import { NATS_MISSING, NatsCluster } from "./_nats.ts";

const ignore = NATS_MISSING !== undefined;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const TIMING = { echoMs: 20, itemMs: 20 };

/** Singles every 15 ms and a 150-item streamed batch. */
const LOAD = { items: 150, everyMs: 15 };

/** Waits until `load` is well under way, so that a fault lands with work in flight. */
async function underWay(load: Load): Promise<void> {
  await waitFor(
    () => load.streamed >= 20 && load.answered >= 10,
    "20 batch items streamed and 10 singles answered",
  );
}

/** Stops `load` and checks every answer, and that every item of its batch succeeded. */
async function stopAndCheck(load: Load): Promise<void> {
  const { final } = await load.stop();
  assert.deepEqual(
    (final.data as { summary: unknown }).summary,
    { total: LOAD.items, success: LOAD.items, failed: 0 },
  );
}

Deno.test({
  name:
    "cluster restart: a server SIGSTOPped for 6 s loses its workers to the others (they ping it), and every request is answered once",
  ignore,
  async fn() {
    await using nats = await new NatsCluster(1).start();
    await using rig = await startProcessCluster(
      nats.urls[0],
      "restart",
      ["A", "B", "C"],
      { count: 6, ...TIMING },
    );
    const { programs, ports } = rig;
    // Requesters on A and C: B is the one that freezes.
    await using clients = group<TestClient>();
    for (const i of [0, 2]) {
      clients.push(
        await connectClient(`ws://127.0.0.1:${ports[i].requester}`, {
          reconnect: true,
          resubmit: true,
        }),
      );
    }
    await using running = startLoad(clients, LOAD);
    await underWay(running);
    programs[1].kill("SIGSTOP");
    const stoppedAt = Date.now();
    try {
      // B's two workers (w1 prefers B, w4 too) serve again through A or C.
      await healthUntil(
        ports[0].worker,
        (h) => h.cluster!.workers.filter((w) => w.server !== "B").length === 6,
        "B's workers to move to A or C",
      );
      const moved = Date.now() - stoppedAt;
      console.log(`B's workers served elsewhere ${moved} ms after SIGSTOP`);
      await sleep(Math.max(0, 6000 - (Date.now() - stoppedAt)));
    } finally {
      programs[1].kill("SIGCONT");
    }
    await healthUntil(
      ports[0].worker,
      (h) => h.cluster!.servers.length === 3,
      "B to rejoin",
    );
    await stopAndCheck(running);
  },
});

for (const first of ["servers", "NATS"] as const) {
  Deno.test({
    name:
      `cluster restart: everything killed and started again, ${first} first: resubmitted requests all land`,
    ignore,
    async fn() {
      await using nats = await new NatsCluster(1).start();
      await using rig = await startProcessCluster(
        nats.urls[0],
        "restart",
        ["A", "B"],
        { count: 4, ...TIMING },
      );
      const { programs, ports, workers } = rig;
      await using clients = group<TestClient>();
      for (const i of [0, 1]) {
        clients.push(
          await connectClient(
            rotate(rig.requesterUrls, i).join(","),
            { reconnect: true, resubmit: true },
          ),
        );
      }
      await using running = startLoad(clients, LOAD);
      await underWay(running);
      // Everything dies at once.
      for (const p of programs) p.kill("SIGKILL");
      await Promise.all([
        nats.nodes[0].stop(),
        ...programs.map((p) => p.done()),
      ]);
      const startServers = async () => {
        for (const i of programs.keys()) await rig.restart(i);
      };
      if (first === "servers") {
        await startServers();
        await sleep(1500);
        await nats.nodes[0].start();
      } else {
        await nats.nodes[0].start();
        await sleep(1500);
        await startServers();
      }
      await waitFor(
        () => workers.every((w) => w.status().connected),
        "every worker to reconnect",
        20_000,
      );
      await healthUntil(
        ports[0].worker,
        (h) => h.workers === 4 && h.cluster?.nats === "connected",
        "A to see every worker again",
      );
      await sleep(300);
      await stopAndCheck(running);
      console.log(
        `${first} first: ${
          clients.reduce((sum, client) => sum + client.resubmitted, 0)
        } resubmitted`,
      );
    },
  });
}
