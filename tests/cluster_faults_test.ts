// Faults of the cluster's NATS links and servers, each with a streamed batch and single requests
// in flight: every request gets exactly one answer with its real result, every batch item one
// real result. Real nats-server; each server reaches NATS through a proxy of its own, so that
// one server's link can be cut or black-holed. Timings are shortened through the link's options.

import assert from "node:assert/strict";
import type { ActionContext } from "../lib/action.ts";
import type { ClusterOptions } from "../lib/cluster/link.ts";
import {
  converged,
  everySees,
  rotate,
  startClusterServers,
} from "./_cluster.ts";
import {
  connectClient,
  group,
  startWorker,
  type TestServer,
  type TestWorker,
  waitFor,
} from "./_helpers.ts";
import { NATS_MISSING, NatsCluster } from "./_nats.ts";
import { FaultProxy } from "./_proxy.ts";

const ignore = NATS_MISSING !== undefined;

/** Short timings: heartbeats every 100 ms, a server written off after 800 ms of silence. */
const FAST: Partial<ClusterOptions> = {
  heartbeatMs: 100,
  deadAfterMs: 800,
  probeMs: 200,
  natsPingMs: 200,
};

interface Rig extends AsyncDisposable {
  servers: TestServer[];
  proxies: FaultProxy[];
  /** Runs of each single request, by its `n`. */
  runs: Map<number, number>;
  /** Runs of each batch item, by code. */
  itemRuns: Map<string, number>;
}

/**
 * Three servers, each through its own proxy to `nats`, with two workers each. `s0` takes the
 * requests; the workers of `s1` and `s2` serve most of them.
 */
async function rig(
  nats: NatsCluster,
  options: Partial<ClusterOptions> = FAST,
  itemMs = 30,
): Promise<Rig> {
  const proxies = nats.urls.length === 1
    ? [0, 1, 2].map(() => new FaultProxy({ port: nats.nodes[0].port }))
    : nats.nodes.map((n) => new FaultProxy({ port: n.port }));
  let servers: TestServer[] & AsyncDisposable = group<TestServer>();
  const workers = group<TestWorker>();
  const runs = new Map<number, number>();
  const itemRuns = new Map<string, number>();
  const dispose = async () => {
    await workers[Symbol.asyncDispose]();
    await servers[Symbol.asyncDispose]();
    await Promise.all(proxies.map((p) => p[Symbol.asyncDispose]()));
  };
  try {
    // Every server knows every proxy, its own first.
    const urls = proxies.map((p) => p.url("nats"));
    servers = await startClusterServers(
      "faults",
      [0, 1, 2].map((i) => ({
        servers: nats.urls.length === 1 ? [urls[i]] : rotate(urls, i),
        ...options,
      })),
    );
    for (const [i, server] of servers.entries()) {
      for (const k of [0, 1]) {
        workers.push(
          await startWorker(server, {
            name: `w${i}${k}`,
            concurrency: 8,
            actions: {
              work: async (p) => {
                const n = (p as { n: number }).n;
                runs.set(n, (runs.get(n) ?? 0) + 1);
                await new Promise((r) => setTimeout(r, 30));
                return { n, double: n * 2 };
              },
              get_markets: async (params: unknown, ctx: ActionContext) => {
                const list = params as { code: string }[];
                const out = [];
                for (const [index, p] of list.entries()) {
                  itemRuns.set(p.code, (itemRuns.get(p.code) ?? 0) + 1);
                  await new Promise((r) => setTimeout(r, itemMs));
                  const result = { success: true, code: p.code, data: [1] };
                  ctx.progress?.(index + 1, list.length, { index, result });
                  out.push(result);
                }
                return out;
              },
            },
          }),
        );
      }
    }
    await converged(servers, 6);
  } catch (error) {
    await dispose();
    throw error;
  }
  return {
    servers,
    proxies,
    runs,
    itemRuns,
    [Symbol.asyncDispose]: dispose,
  };
}

/**
 * Runs `fault` while a 120-item streamed batch and 40 single requests (a few at a time) go
 * through `s0`, then checks that every answer is there once, with its real result. Returns how
 * many singles and items ran more than once.
 */
async function underLoad(
  r: Rig,
  fault: () => Promise<void>,
): Promise<{ singlesTwice: number; itemsTwice: number }> {
  await using client = await connectClient(r.servers[0].requesterUrl);
  const codes = Array.from({ length: 120 }, (_, i) => `c${1000 + i}`);
  const batch = client.stream(
    "get_markets",
    codes.map((code) => ({ symbol_type: "etf", code })),
    { timeout: 60 },
  );
  const items = new Map<number, unknown[]>();
  const reading = (async () => {
    for await (const { index, result } of batch) {
      items.set(index, [...(items.get(index) ?? []), result]);
    }
    return await batch.answer;
  })();
  let faulting = true;
  const singles = (async () => {
    const answers = [];
    // Until the fault is over, and ten waves at least.
    for (let wave = 0; wave < 10 || faulting; wave++) {
      answers.push(
        ...await Promise.all(
          [0, 1, 2, 3].map((k) =>
            client.request("work", { n: wave * 4 + k }, { timeout: 60 })
          ),
        ),
      );
    }
    return answers;
  })();
  await fault();
  faulting = false;
  const [answers, final] = await Promise.all([singles, reading]);
  answers.forEach((a, n) => {
    assert.equal(a.success, true, `single ${n}: ${JSON.stringify(a)}`);
    assert.deepEqual(a.data, { n, double: n * 2 });
  });
  assert.equal(final.success, true, JSON.stringify(final));
  assert.deepEqual(
    (final.data as { summary: unknown }).summary,
    { total: 120, success: 120, failed: 0 },
  );
  assert.equal(items.size, 120, "every item streamed");
  for (const [index, got] of [...items].sort((a, b) => a[0] - b[0])) {
    assert.equal(got.length, 1, `item ${index} once`);
    assert.deepEqual(got[0], {
      success: true,
      code: codes[index],
      data: [1],
      processed_by: (got[0] as { processed_by: string }).processed_by,
    });
  }
  return {
    singlesTwice: [...r.runs.values()].filter((n) => n > 1).length,
    itemsTwice: [...r.itemRuns.values()].filter((n) => n > 1).length,
  };
}

Deno.test({
  name:
    "cluster faults: three 1-second NATS cuts of one server lose nothing and run nothing twice",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(1).start();
    // Cuts shorter than the silence that writes a server off are blips, not deaths (a loaded
    // machine can take more than the default 1.5 s to reconnect after a 1-s cut).
    await using r = await rig(nats, { ...FAST, deadAfterMs: 3000 }, 150);
    const outcome = await underLoad(r, async () => {
      for (let i = 0; i < 3; i++) {
        await new Promise((res) => setTimeout(res, 150));
        await r.proxies[1].cut(1000);
        await waitFor(
          () => r.servers[1].broker.stats().cluster?.nats === "connected",
          "s1 to reconnect",
          10_000,
        );
      }
    });
    console.log(`three cuts: ${JSON.stringify(outcome)}`);
    assert.deepEqual(
      outcome,
      { singlesTwice: 0, itemsTwice: 0 },
      "nothing ran twice",
    );
  },
});

Deno.test({
  name:
    "cluster faults: a black-holed NATS link is written off, its work moves, and it rejoins",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(1).start();
    await using r = await rig(nats, FAST, 100);
    const outcome = await underLoad(r, async () => {
      await new Promise((res) => setTimeout(res, 200));
      r.proxies[1].blackhole();
      await waitFor(
        () =>
          !r.servers[0].broker.stats().cluster!.servers.some((s) =>
            s.name === "s1"
          ),
        "s0 to write s1 off",
        10_000,
      );
      r.proxies[1].restore();
      // s1's client notices the dead link by its pings and connects again.
      await waitFor(
        () =>
          r.servers[0].broker.workers().filter((w) => w.registered).length ===
            6,
        "s1 to rejoin with its workers",
        15_000,
      );
    });
    console.log(`black hole: ${JSON.stringify(outcome)}`);
  },
});

Deno.test({
  name:
    "cluster faults: 2 of 3 NATS nodes SIGKILLed: servers move to the last node, nothing lost",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(3).start();
    await using r = await rig(nats, FAST, 60);
    const outcome = await underLoad(r, async () => {
      await new Promise((res) => setTimeout(res, 200));
      await Promise.all([nats.nodes[1].stop(), nats.nodes[2].stop()]);
      await waitFor(
        () =>
          r.servers.every((s) =>
            s.broker.stats().cluster?.nats === "connected" &&
            s.broker.workers().filter((w) => w.registered).length === 6
          ),
        "every server back on the last node, seeing 6 workers",
        15_000,
      );
    });
    console.log(`2 of 3 NATS nodes killed: ${JSON.stringify(outcome)}`);
  },
});

Deno.test({
  name:
    "cluster faults: a server written off cancels only the requests that server sent, not another's",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(1).start();
    await using r = await rig(nats, { ...FAST, deadAfterMs: 60_000 });
    const s = r.servers;
    // One slow worker on s1 that takes requests from both s0 and s2.
    const cancelled: string[] = [];
    const releases: (() => void)[] = [];
    await using _slow = await startWorker(s[1], {
      name: "slow",
      concurrency: 8,
      actions: {
        hold: (p, ctx: ActionContext) =>
          new Promise((resolve) => {
            const from = (p as { from: string }).from;
            ctx.signal?.addEventListener("abort", () => cancelled.push(from));
            releases.push(() => resolve(from));
          }),
      },
    });
    await everySees(s, "slow");
    await using c0 = await connectClient(s[0].requesterUrl);
    await using c2 = await connectClient(s[2].requesterUrl);
    const a0 = c0.request("hold", { from: "s0" }, { timeout: 30 });
    const a2 = c2.request("hold", { from: "s2" }, { timeout: 30 });
    await waitFor(() => releases.length === 2, "both requests to reach slow");
    // s1 hears s2 say it leaves: what s2 sent stops, what s0 sent goes on.
    await (await s[2].cluster!).close();
    await waitFor(() => cancelled.length === 1, "s2's request to stop");
    assert.deepEqual(cancelled, ["s2"]);
    for (const release of releases) release();
    const answer = await a0;
    assert.equal(answer.success, true, JSON.stringify(answer));
    assert.equal(answer.data, "s0");
    await a2.catch(() => {});
  },
});

Deno.test({
  name:
    "cluster faults: a load report lost on a broken link is made good by the next full one",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(1).start();
    await using proxy = new FaultProxy({ port: nats.nodes[0].port });
    await using servers = await startClusterServers(
      "loads",
      [nats.urls[0], proxy.url("nats")].map((url) => ({
        servers: [url],
        ...FAST,
        deadAfterMs: 60_000,
      })),
    );
    const [s0, s1] = servers;
    let release = () => {};
    await using _w = await startWorker(s1, {
      name: "busy",
      actions: { hold: () => new Promise((r) => release = () => r("done")) },
    });
    const inFlightOnS0 = () =>
      s0.broker.workers().find((w) => w.name === "busy")?.in_flight;
    await waitFor(() => inFlightOnS0() === 0, "s0 to see the worker idle");
    await using client = await connectClient(s1.requesterUrl);
    const answer = client.request("hold", {}, { timeout: 30 });
    await waitFor(() => inFlightOnS0() === 1, "s0 to see the worker busy");
    // The report that the worker is idle again is lost with the broken link.
    proxy.blackhole();
    release();
    assert.equal((await answer).data, "done");
    await new Promise((r) => setTimeout(r, 300));
    proxy.restore();
    await waitFor(
      () => inFlightOnS0() === 0,
      "s0 to see the worker idle again",
      10_000,
    );
  },
});
