// Server processes frozen or restarted under load: a server SIGSTOPped and then continued, and
// everything (servers and NATS) killed and started again, servers first or NATS first. A stream
// of single requests and a streamed batch from requesters that resubmit; every request gets one
// answer with its real result.

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
  type TestClient,
  waitFor,
  within,
} from "./_helpers.ts";
import { type Program, startServerProgram } from "./_procs.ts";
import { NATS_MISSING, NatsCluster } from "./_nats.ts";

const ignore = NATS_MISSING !== undefined;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const TIMING = { echoMs: 20, itemMs: 20 };

/** Singles every 15 ms and a 150-item streamed batch, until `stop()` checks every answer. */
function load(clients: TestClient[]) {
  const running = startLoad(clients, { items: 150, everyMs: 15 });
  return {
    async stop(): Promise<void> {
      const { final } = await running.stop();
      assert.deepEqual(
        (final.data as { summary: unknown }).summary,
        { total: 150, success: 150, failed: 0 },
      );
    },
    [Symbol.asyncDispose]: () => running[Symbol.asyncDispose](),
  };
}

Deno.test({
  name:
    "cluster restart: a server SIGSTOPped for 6 s loses its workers to the others (they ping it), and every request is answered once",
  ignore,
  async fn() {
    await using nats = await new NatsCluster(1).start();
    await using programs = group<Program>();
    const ports: { worker: number; requester: number }[] = [];
    for (const name of ["A", "B", "C"]) {
      const s = await startServerProgram(
        clusterServerArgs(nats.urls[0], "restart", name),
      );
      programs.push(s.program);
      ports.push({ worker: s.workerPort, requester: s.requesterPort });
    }
    const workerUrls = ports.map((p) => `ws://127.0.0.1:${p.worker}`);
    await using workers = group(
      [0, 1, 2, 3, 4, 5].map((i) =>
        startLoadWorker(rotate(workerUrls, i), `w${i}`, TIMING)
      ),
    );
    await within(
      Promise.all(workers.map((w) => w.ready())),
      "every worker",
      20_000,
    );
    await healthUntil(
      ports[0].worker,
      (h) => h.workers === 6,
      "A to see 6 workers",
    );
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
    await using running = load(clients);
    await sleep(300);
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
    await running.stop();
  },
});

for (const first of ["servers", "NATS"] as const) {
  Deno.test({
    name:
      `cluster restart: everything killed and started again, ${first} first: resubmitted requests all land`,
    ignore,
    async fn() {
      await using nats = await new NatsCluster(1).start();
      await using programs = group<Program>();
      await using retired = group<Program>();
      const ports: { worker: number; requester: number }[] = [];
      for (const name of ["A", "B"]) {
        const s = await startServerProgram(
          clusterServerArgs(nats.urls[0], "restart", name),
        );
        programs.push(s.program);
        ports.push({ worker: s.workerPort, requester: s.requesterPort });
      }
      const workerUrls = ports.map((p) => `ws://127.0.0.1:${p.worker}`);
      await using workers = group(
        [0, 1, 2, 3].map((i) =>
          startLoadWorker(rotate(workerUrls, i), `w${i}`, TIMING)
        ),
      );
      await within(
        Promise.all(workers.map((w) => w.ready())),
        "every worker",
        20_000,
      );
      await healthUntil(
        ports[0].worker,
        (h) => h.workers === 4,
        "A to see 4 workers",
      );
      await using clients = group<TestClient>();
      for (const i of [0, 1]) {
        clients.push(
          await connectClient(
            rotate(ports.map((p) => `ws://127.0.0.1:${p.requester}`), i)
              .join(","),
            { reconnect: true, resubmit: true },
          ),
        );
      }
      await using running = load(clients);
      await sleep(400);
      // Everything dies at once.
      for (const p of programs) p.kill("SIGKILL");
      await Promise.all([
        nats.nodes[0].stop(),
        ...programs.map((p) => p.done()),
      ]);
      retired.push(...programs.splice(0));
      const startServers = async () => {
        for (const [i, name] of ["A", "B"].entries()) {
          programs.push(
            (await startServerProgram(
              clusterServerArgs(nats.urls[0], "restart", name, ports[i]),
            )).program,
          );
        }
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
      await running.stop();
      console.log(
        `${first} first: ${
          clients.reduce((s, c) => s + c.resubmitted, 0)
        } resubmitted`,
      );
    },
  });
}
