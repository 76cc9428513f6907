// Server processes frozen or restarted under load: a server SIGSTOPped and then continued, and
// everything (servers and NATS) killed and started again, servers first or NATS first. A stream
// of single requests and a streamed batch from requesters that resubmit; every request gets one
// answer with its real result.

import assert from "node:assert/strict";
import type { ActionContext } from "../lib/action.ts";
import type { RequesterAnswer } from "../lib/protocol.ts";
import { Worker } from "../lib/worker/worker_client.ts";
import {
  answerOf,
  connectClient,
  group,
  type TestClient,
  type TestWorker,
  waitFor,
  within,
} from "./_helpers.ts";
import { type Program, startServerProgram } from "./_procs.ts";
import { NATS_MISSING, NatsCluster } from "./_nats.ts";

const ignore = NATS_MISSING !== undefined;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function startWorker(urls: string[], name: string): TestWorker {
  const worker = Object.assign(
    new Worker({
      url: urls.join(","),
      name,
      concurrency: 6,
      backoff: { initialMs: 50, maxMs: 300 },
      graceMs: 0,
    }),
    { [Symbol.asyncDispose]: () => worker.stop(0) },
  );
  worker.registerAction("echo", async (params) => {
    await sleep(20);
    return params;
  });
  worker.registerAction(
    "get_markets",
    async (params: unknown, ctx: ActionContext) => {
      const list = params as { code: string }[];
      const out = [];
      for (const [i, p] of list.entries()) {
        await sleep(20);
        if (ctx.signal.aborted) throw new Error("stopped");
        const result = { success: true, code: p.code, data: [1] };
        ctx.progress?.(i + 1, list.length, { index: i, result });
        out.push(result);
      }
      return out;
    },
  );
  void worker.start();
  return worker;
}

interface Health {
  workers: number;
  cluster?: {
    nats: string;
    servers: { name: string }[];
    workers: { name: string; server: string }[];
  };
}

async function health(port: number): Promise<Health> {
  return await (await fetch(`http://127.0.0.1:${port}/health`)).json();
}

async function until(
  port: number,
  predicate: (h: Health) => boolean,
  what: string,
  ms = 15_000,
): Promise<void> {
  const end = Date.now() + ms;
  let last: Health | undefined;
  while (Date.now() < end) {
    try {
      last = await health(port);
      if (predicate(last)) return;
    } catch {
      // Not listening yet.
    }
    await sleep(25);
  }
  throw new Error(`Timed out waiting for ${what}: ${JSON.stringify(last)}`);
}

const rotate = (urls: string[], i: number) => [
  ...urls.slice(i % urls.length),
  ...urls.slice(0, i % urls.length),
];

/** Singles every 15 ms and a 150-item streamed batch, until `stop()`; then checks every answer. */
function load(clients: TestClient[]) {
  const items = Array.from({ length: 150 }, (_, i) => ({
    symbol_type: "etf",
    code: `5${String(i).padStart(5, "0")}`,
  }));
  const batch = clients[0].stream("get_markets", items, { timeout: 120 });
  const streamed = new Map<number, unknown>();
  const batchDone = (async () => {
    for await (const { index, result } of batch) {
      assert.ok(!streamed.has(index), `item ${index} streamed twice`);
      streamed.set(index, result);
    }
    return await batch.answer;
  })();
  batchDone.catch(() => {});
  let running = true;
  const singles: Promise<[number, RequesterAnswer]>[] = [];
  const stream = (async () => {
    for (let n = 0; running; n++) {
      singles.push(
        answerOf(
          clients[n % clients.length].request("echo", { n }, { timeout: 120 })
            .then((a) => [n, a]),
          `echo ${n}`,
          130_000,
        ),
      );
      await sleep(15);
    }
  })();
  return {
    async stop(): Promise<void> {
      running = false;
      await stream;
      for (const [n, answer] of await Promise.all(singles)) {
        assert.equal(
          answer.success,
          true,
          `echo ${n}: ${JSON.stringify(answer)}`,
        );
        assert.deepEqual(answer.data, { n });
      }
      const final = await batchDone;
      assert.equal(final.success, true, JSON.stringify(final).slice(0, 300));
      assert.deepEqual(
        (final.data as { summary: unknown }).summary,
        { total: 150, success: 150, failed: 0 },
      );
      assert.equal(streamed.size, items.length);
      for (const [index, result] of streamed) {
        assert.equal((result as { code: string }).code, items[index].code);
      }
      for (const client of clients) {
        assert.equal(client.strayAnswers, 0, "a duplicate answer came");
      }
    },
  };
}

function serverArgs(
  nats: string,
  name: string,
  port = 0,
  requesterPort = 0,
): string[] {
  return [
    "--cluster",
    nats,
    "--cluster-name",
    "restart",
    "--server-name",
    name,
    "--max-attempts",
    "10",
    "--port",
    String(port),
    "--requester-port",
    String(requesterPort),
  ];
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
      const s = await startServerProgram(serverArgs(nats.urls[0], name));
      programs.push(s.program);
      ports.push({ worker: s.workerPort, requester: s.requesterPort });
    }
    const workerUrls = ports.map((p) => `ws://127.0.0.1:${p.worker}`);
    await using workers = group(
      [0, 1, 2, 3, 4, 5].map((i) =>
        startWorker(rotate(workerUrls, i), `w${i}`)
      ),
    );
    await within(
      Promise.all(workers.map((w) => w.ready())),
      "every worker",
      20_000,
    );
    await until(ports[0].worker, (h) => h.workers === 6, "A to see 6 workers");
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
    const running = load(clients);
    await sleep(300);
    programs[1].kill("SIGSTOP");
    const stoppedAt = Date.now();
    try {
      // B's two workers (w1 prefers B, w4 too) serve again through A or C.
      await until(
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
    await until(
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
        const s = await startServerProgram(serverArgs(nats.urls[0], name));
        programs.push(s.program);
        ports.push({ worker: s.workerPort, requester: s.requesterPort });
      }
      const workerUrls = ports.map((p) => `ws://127.0.0.1:${p.worker}`);
      await using workers = group(
        [0, 1, 2, 3].map((i) => startWorker(rotate(workerUrls, i), `w${i}`)),
      );
      await within(
        Promise.all(workers.map((w) => w.ready())),
        "every worker",
        20_000,
      );
      await until(
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
      const running = load(clients);
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
              serverArgs(
                nats.urls[0],
                name,
                ports[i].worker,
                ports[i].requester,
              ),
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
      await until(
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
