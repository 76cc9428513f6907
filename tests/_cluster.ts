/**
 * The cluster tests' rig: servers joined into a cluster (in this process or as `server.ts`
 * processes), waits on what they report, workers that reconnect across servers, and a load of
 * single requests and a streamed batch whose every answer is checked.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { ActionContext } from "../lib/action.ts";
import type { ClusterOptions } from "../lib/cluster/link.ts";
import type { RequesterAnswer } from "../lib/protocol.ts";
import { Worker } from "../lib/worker/worker_client.ts";
import {
  answerOf,
  connectClient,
  group,
  startTestServer,
  startWorker,
  type TestClient,
  type TestServer,
  type TestWorker,
  type TestWorkerOptions,
  waitFor,
  within,
} from "./_helpers.ts";
import { NatsCluster } from "./_nats.ts";
import { type Program, startServerProgram } from "./_procs.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `urls` starting from the `i`-th (wrapping), so that each user prefers another one. */
export function rotate(urls: string[], i: number): string[] {
  return [
    ...urls.slice(i % urls.length),
    ...urls.slice(0, i % urls.length),
  ];
}

/** One server's link options: its NATS URLs, and anything else but the cluster's name. */
export type LinkOptions = Partial<ClusterOptions> & { servers: string[] };

/**
 * In-process servers joined into cluster `name`, one per entry of `links` (named `s0`, `s1`, …
 * unless the entry names it); resolves once every link has joined. `await using` closes them
 * all at the end of the scope.
 */
export async function startClusterServers(
  name: string,
  links: LinkOptions[],
): Promise<TestServer[] & AsyncDisposable> {
  const servers = group<TestServer>();
  for (const [i, link] of links.entries()) {
    servers.push(startTestServer({
      cluster: { name, serverName: `s${i}`, ...link },
    }));
  }
  try {
    await Promise.all(
      servers.map(async (s) => await (await s.cluster!).start()),
    );
  } catch (error) {
    await servers[Symbol.asyncDispose]();
    throw error;
  }
  return servers;
}

/** A NATS, servers joined into a cluster on it, and the workers and clients of a test. */
export interface ClusterRig extends AsyncDisposable {
  nats: NatsCluster;
  servers: TestServer[];
  /** Workers started by {@linkcode ClusterRig.worker} (or pushed by the test). */
  workers: TestWorker[];
  /** Clients connected by {@linkcode ClusterRig.client} (or pushed by the test). */
  clients: TestClient[];
  /** Starts a worker on server `i`, kept in `workers`; resolves once that server has it. */
  worker(i: number, options: TestWorkerOptions): Promise<TestWorker>;
  /** Connects a client to server `i`, kept in `clients`. */
  client(i: number): Promise<TestClient>;
}

/**
 * A NATS of `nodes` nodes and `servers` in-process servers in cluster `name` on it, each
 * starting on a different NATS node when there are several. `await using` closes the clients,
 * the workers, the servers and NATS, in that order.
 */
export async function startClusterRig(
  servers: number,
  { nodes = 1, name = "t" }: { nodes?: number; name?: string } = {},
): Promise<ClusterRig> {
  const nats = await new NatsCluster(nodes).start();
  const workers = group<TestWorker>();
  const clients = group<TestClient>();
  let joined: TestServer[] & AsyncDisposable = group<TestServer>();
  const dispose = async () => {
    await clients[Symbol.asyncDispose]();
    await workers[Symbol.asyncDispose]();
    await joined[Symbol.asyncDispose]();
    await nats[Symbol.asyncDispose]();
  };
  try {
    joined = await startClusterServers(
      name,
      Array.from({ length: servers }, (_, i) => ({
        servers: rotate(nats.urls, i),
      })),
    );
  } catch (error) {
    await dispose();
    throw error;
  }
  return {
    nats,
    servers: joined,
    workers,
    clients,
    async worker(i, options) {
      const worker = await startWorker(joined[i], options);
      workers.push(worker);
      return worker;
    },
    async client(i) {
      const client = await connectClient(joined[i].requesterUrl);
      clients.push(client);
      return client;
    },
    [Symbol.asyncDispose]: dispose,
  };
}

/** Waits until every server has `count` registered workers. */
export async function converged(
  servers: TestServer[],
  count: number,
  timeoutMs = 10_000,
): Promise<void> {
  await waitFor(
    () =>
      servers.every((s) =>
        s.broker.workers().filter((w) => w.registered).length === count
      ),
    `every server to see ${count} workers`,
    timeoutMs,
  );
}

/** Waits until every server lists a registered worker named `name`. */
export async function everySees(
  servers: TestServer[],
  name: string,
): Promise<void> {
  await waitFor(
    () =>
      servers.every((s) =>
        s.broker.workers().some((w) => w.name === name && w.registered)
      ),
    `every server to see ${name}`,
  );
}

// ---- server processes -----------------------------------------------------------------------

/**
 * `server.ts` flags joining cluster `cluster` on NATS `nats` as `name`, retrying a request up to
 * 10 times; `ports` starts it again on the ports it had (0: any free one).
 */
export function clusterServerArgs(
  nats: string,
  cluster: string,
  name: string,
  ports: { worker: number; requester: number } = { worker: 0, requester: 0 },
): string[] {
  return [
    "--cluster",
    nats,
    "--cluster-name",
    cluster,
    "--server-name",
    name,
    "--max-attempts",
    "10",
    "--port",
    String(ports.worker),
    "--requester-port",
    String(ports.requester),
  ];
}

/** What a server process's `/health` tells of the cluster. */
export interface Health {
  workers: number;
  cluster?: {
    nats: string;
    servers: { name: string }[];
    workers: { name: string; server: string }[];
  };
}

/** The `/health` of the server whose worker port is `port`. */
export async function health(port: number): Promise<Health> {
  return await (await fetch(`http://127.0.0.1:${port}/health`)).json();
}

/**
 * Waits until the `/health` of the server whose worker port is `port` satisfies `predicate`
 * (a server not listening yet is waited for too); throws after `ms` with the last `/health`,
 * and with the error of the last attempt when it failed (a server that crashed shows here).
 */
export async function healthUntil(
  port: number,
  predicate: (h: Health) => boolean,
  what: string,
  ms = 15_000,
): Promise<void> {
  const end = Date.now() + ms;
  let last: Health | undefined;
  let failure: unknown;
  while (Date.now() < end) {
    try {
      last = await health(port);
      failure = undefined;
      if (predicate(last)) return;
    } catch (error) {
      failure = error;
    }
    await sleep(25);
  }
  throw new Error(
    `Timed out waiting for ${what}: last /health ${JSON.stringify(last)}` +
      (failure === undefined ? "" : `, then: ${describe(failure)}`),
    { cause: failure },
  );
}

/** `error` with its causes: a failed fetch says why only in its cause. */
function describe(error: unknown): string {
  let text = String(error);
  for (
    let cause = (error as Error).cause;
    cause !== undefined;
    cause = (cause as Error).cause
  ) {
    text += `: ${cause instanceof Error ? cause.message : String(cause)}`;
  }
  return text;
}

/** Options for {@linkcode startLoadWorker}. */
export interface LoadWorkerOptions {
  /** How long `echo` takes, in ms. */
  echoMs: number;
  /** How long each `get_markets` item takes, in ms. */
  itemMs: number;
}

/**
 * A Worker that knows every server in `urls` (the first preferred) and reconnects quickly,
 * serving `echo` and a streaming `get_markets` for {@linkcode startLoad}. It connects in the
 * background; `await using` stops it at once.
 */
export function startLoadWorker(
  urls: string[],
  name: string,
  options: LoadWorkerOptions,
): TestWorker {
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
    await sleep(options.echoMs);
    return params;
  });
  worker.registerAction(
    "get_markets",
    async (params: unknown, ctx: ActionContext) => {
      const list = params as { code: string }[];
      const out = [];
      for (const [i, p] of list.entries()) {
        await sleep(options.itemMs);
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

/** Server processes of one cluster, with load workers spread over them. */
export interface ProcessCluster extends AsyncDisposable {
  /** The servers' processes, in the order of their names; one started again takes its place. */
  programs: Program[];
  /** Each server's ports, kept when it is started again. */
  ports: { worker: number; requester: number }[];
  /** Each server's worker port and requester port URL. */
  workerUrls: string[];
  requesterUrls: string[];
  /** The workers: worker `i` prefers server `i` (wrapping) and knows them all. */
  workers: TestWorker[];
  /** Starts server `i` again on its ports (after it was killed). */
  restart(i: number): Promise<void>;
}

/**
 * `server.ts` processes named `names` in cluster `cluster` on NATS `nats`, and `workers` load
 * workers ({@linkcode startLoadWorker}) `w0`, `w1`, … across them; resolves once every server
 * lists every worker. `await using` stops the workers, then every server process, including
 * the ones replaced by `restart`.
 */
export async function startProcessCluster(
  nats: string,
  cluster: string,
  names: string[],
  workers: { count: number; prefix?: string } & LoadWorkerOptions,
): Promise<ProcessCluster> {
  const programs = group<Program>();
  // Replaced programs, still to be reaped at the end.
  const retired = group<Program>();
  const running = group<TestWorker>();
  const dispose = async () => {
    await running[Symbol.asyncDispose]();
    await Promise.all([
      programs[Symbol.asyncDispose](),
      retired[Symbol.asyncDispose](),
    ]);
  };
  const ports: { worker: number; requester: number }[] = [];
  try {
    for (const name of names) {
      const s = await startServerProgram(
        clusterServerArgs(nats, cluster, name),
      );
      programs.push(s.program);
      ports.push({ worker: s.workerPort, requester: s.requesterPort });
    }
    const workerUrls = ports.map((p) => `ws://127.0.0.1:${p.worker}`);
    for (let i = 0; i < workers.count; i++) {
      running.push(
        startLoadWorker(
          rotate(workerUrls, i),
          `${workers.prefix ?? "w"}${i}`,
          workers,
        ),
      );
    }
    await within(
      Promise.all(running.map((w) => w.ready())),
      "every worker to connect",
      20_000,
    );
    for (const [i, p] of ports.entries()) {
      await healthUntil(
        p.worker,
        (h) => h.workers === workers.count,
        `${names[i]} to see every worker`,
      );
    }
    return {
      programs,
      ports,
      workerUrls,
      requesterUrls: ports.map((p) => `ws://127.0.0.1:${p.requester}`),
      workers: running,
      async restart(i: number) {
        retired.push(programs[i]);
        programs[i] = (await startServerProgram(
          clusterServerArgs(nats, cluster, names[i], ports[i]),
        )).program;
      },
      [Symbol.asyncDispose]: dispose,
    };
  } catch (error) {
    await dispose();
    throw error;
  }
}

/** Options for {@linkcode startLoad}. */
export interface LoadOptions {
  /** Items in the streamed batch. */
  items: number;
  /** Which client sends the batch. @default 0 */
  batchClient?: number;
  /** The pause between two single requests, in ms. */
  everyMs: number;
  /** The most single requests sent. @default unlimited */
  most?: number;
}

/** A load under way; `await using` stops sending (without checking) if it was not stopped. */
export interface Load extends AsyncDisposable {
  /** Batch items streamed so far. */
  readonly streamed: number;
  /** Single requests answered so far. */
  readonly answered: number;
  /**
   * Stops sending single requests, waits for every answer and checks each: a success with its
   * own data, every batch item streamed once with its own code, no duplicate answer. Resolves
   * with the batch's final answer and how many singles were sent.
   */
  stop(): Promise<{ final: RequesterAnswer; singles: number }>;
}

/**
 * Sends a streamed batch of `get_markets` (from one client) and `echo` requests in turn over
 * `clients` (to workers of {@linkcode startLoadWorker}), each with a 120-s timeout, until
 * `stop()`.
 */
export function startLoad(clients: TestClient[], options: LoadOptions): Load {
  const items = Array.from({ length: options.items }, (_, i) => ({
    symbol_type: "etf",
    code: `5${String(i).padStart(5, "0")}`,
  }));
  const batch = clients[options.batchClient ?? 0].stream(
    "get_markets",
    items,
    { timeout: 120 },
  );
  const streamed = new Map<number, unknown>();
  const batchDone = (async () => {
    for await (const { index, result } of batch) {
      assert.ok(!streamed.has(index), `item ${index} streamed twice`);
      streamed.set(index, result);
    }
    return await batch.answer;
  })();
  // Awaited in stop(); handled now, so an earlier failure does not leave it unhandled.
  batchDone.catch(() => {});
  let running = true;
  const most = options.most ?? Infinity;
  const singles: Promise<[number, RequesterAnswer]>[] = [];
  let answered = 0;
  const sending = (async () => {
    for (let n = 0; running && n < most; n++) {
      singles.push(
        answerOf(
          clients[n % clients.length].request("echo", { n }, { timeout: 120 })
            .then((a): [number, RequesterAnswer] => {
              answered++;
              return [n, a];
            }),
          `echo ${n}`,
          130_000,
        ),
      );
      await sleep(options.everyMs);
    }
  })();
  return {
    get streamed() {
      return streamed.size;
    },
    get answered() {
      return answered;
    },
    async stop() {
      running = false;
      await sending;
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
      assert.equal(streamed.size, items.length);
      for (const [index, result] of streamed) {
        assert.equal((result as { code: string }).code, items[index].code);
      }
      for (const client of clients) {
        assert.equal(client.strayAnswers, 0, "a duplicate answer came");
      }
      return { final, singles: singles.length };
    },
    async [Symbol.asyncDispose]() {
      running = false;
      await sending;
    },
  };
}
