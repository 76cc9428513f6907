// Cluster chaos: three server processes on one NATS, workers attached across them, a 300-item
// streamed batch and a stream of single requests while servers are SIGKILLed and restarted and
// workers vanish at random (fixed seed). Every request must be answered exactly once, correctly.

import assert from "node:assert/strict";
import type { ActionContext } from "../lib/action.ts";
import type { RequesterAnswer } from "../lib/protocol.ts";
import { Worker } from "../lib/worker/worker_client.ts";
import {
  answerOf,
  connectClient,
  group,
  mulberry32,
  type TestClient,
  type TestWorker,
  within,
} from "./_helpers.ts";
import { type Program, startServerProgram } from "./_procs.ts";
import { NATS_MISSING, NatsCluster } from "./_nats.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A Worker that connects in the background; `await using` stops it at once. */
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
    await sleep(10);
    return params;
  });
  worker.registerAction(
    "get_markets",
    async (params: unknown, ctx: ActionContext) => {
      const list = params as { code: string }[];
      const out = [];
      for (const [i, p] of list.entries()) {
        await sleep(4);
        if (ctx.signal.aborted) throw new Error("stopped");
        const result = { success: true, code: p.code, data: [p.code.length] };
        ctx.progress?.(i + 1, list.length, { index: i, result });
        out.push(result);
      }
      return out;
    },
  );
  void worker.start();
  return worker;
}

Deno.test({
  name:
    "cluster chaos - servers killed and restarted, workers lost: every request answered once",
  ignore: NATS_MISSING !== undefined,
  async fn() {
    const random = mulberry32(11_2026);
    await using nats = await new NatsCluster(1).start();
    const serverArgs = (name: string, port: number, requesterPort: number) => [
      "--cluster",
      nats.urls[0],
      "--cluster-name",
      "chaos",
      "--server-name",
      name,
      "--max-attempts",
      "10",
      "--port",
      String(port),
      "--requester-port",
      String(requesterPort),
    ];
    const names = ["A", "B", "C"];
    // Killed servers move from `programs` to `retired`, so both are waited for at the end.
    await using programs = group<Program>();
    await using retired = group<Program>();
    const ports: { worker: number; requester: number }[] = [];
    for (const name of names) {
      const s = await startServerProgram(serverArgs(name, 0, 0));
      programs.push(s.program);
      ports.push({ worker: s.workerPort, requester: s.requesterPort });
    }
    const workerUrls = ports.map((p) => `ws://127.0.0.1:${p.worker}`);
    const requesterUrls = ports.map((p) => `ws://127.0.0.1:${p.requester}`);
    // Each worker and requester prefers a different server and knows all three.
    const rotate = (urls: string[], i: number) => [
      ...urls.slice(i % urls.length),
      ...urls.slice(0, i % urls.length),
    ];
    await using workers = group(
      [0, 1, 2, 3, 4].map((i) => startWorker(rotate(workerUrls, i), `cw${i}`)),
    );
    await using clients = group<TestClient>();
    // Stops the stream of single requests (below) before the clients close.
    await using background = new AsyncDisposableStack();
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
    for (const p of ports) {
      const until = Date.now() + 10_000;
      while (true) {
        const h = await (await fetch(`http://127.0.0.1:${p.worker}/health`))
          .json();
        if (h.workers === workers.length) break;
        if (Date.now() > until) throw new Error(JSON.stringify(h));
        await sleep(25);
      }
    }

    const items = Array.from({ length: 300 }, (_, i) => ({
      symbol_type: "etf",
      code: `5${String(i).padStart(5, "0")}`,
    }));
    const batch = clients[1].stream("get_markets", items, { timeout: 120 });
    const streamed = new Map<number, unknown>();
    const batchDone = (async () => {
      for await (const { index, result } of batch) {
        assert.ok(!streamed.has(index), `item ${index} streamed twice`);
        streamed.set(index, result);
      }
      return await batch.answer;
    })();
    // Awaited below; handled now, so an earlier failure does not leave it unhandled.
    batchDone.catch(() => {});

    let running = true;
    const singles: Promise<[number, RequesterAnswer]>[] = [];
    const stream = (async () => {
      for (let n = 0; running && n < 300; n++) {
        const client = clients[n % clients.length];
        singles.push(
          answerOf(
            client.request("echo", { n }, { timeout: 120 }).then((
              a,
            ) => [n, a]),
            `echo ${n}`,
            130_000,
          ),
        );
        await sleep(12);
      }
    })();
    background.defer(async () => {
      running = false;
      await stream;
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
            serverArgs(names[i], ports[i].worker, ports[i].requester),
          )).program;
        } else {
          const i = Math.floor(random() * workers.length);
          await workers[i].stop(0);
          workerKills++;
          workers[i] = startWorker(rotate(workerUrls, i), `cw${i}`);
        }
      }
    })();

    await chaos;
    running = false;
    await stream;
    const answers = await Promise.all(singles);
    for (const [n, answer] of answers) {
      assert.equal(
        answer.success,
        true,
        `echo ${n}: ${JSON.stringify(answer)}`,
      );
      assert.deepEqual(answer.data, { n });
    }
    const final = await batchDone;
    assert.equal(final.success, true, JSON.stringify(final).slice(0, 300));
    assert.equal(streamed.size, items.length);
    for (const [index, result] of streamed) {
      assert.equal((result as { code: string }).code, items[index].code);
    }
    for (const client of clients) {
      assert.equal(client.strayAnswers, 0, "a duplicate answer came");
    }
    assert.ok(serverKills + workerKills === 4);
    console.log(
      `${answers.length} requests and a ${items.length}-item batch, ${serverKills} servers and ${workerKills} workers killed; ` +
        `${clients.reduce((s, c) => s + c.resubmitted, 0)} resubmitted`,
    );
  },
});
