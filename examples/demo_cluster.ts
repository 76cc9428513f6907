/**
 * `deno task demo:cluster` — a NATS server, two Switchyard servers joined into one cluster,
 * workers on both, and a batch through each server: the same symbols land on the same workers
 * whichever server takes the batch, and a request at one server runs on the other's workers.
 * Needs `nats-server` (it says how to install it when it is missing); runs on loopback only.
 *
 * @module
 */

import { createMarketService } from "../lib/market/mod.ts";
import { setupLogging } from "../lib/log.ts";
import { RequesterClient } from "../lib/requester/requester_client.ts";
import { startServer } from "../lib/broker/server.ts";
import { Worker } from "../lib/worker/worker_client.ts";

const CODES = [
  "510300",
  "510500",
  "159915",
  "588000",
  "512880",
  "512690",
  "159919",
  "562500",
  "159869",
  "513100",
];

function natsServer(): string | undefined {
  const dirs = (Deno.env.get("PATH") ?? "").split(":");
  for (const dir of [...dirs, "/usr/sbin", "/usr/bin"]) {
    try {
      if (Deno.statSync(`${dir}/nats-server`).isFile) {
        return `${dir}/nats-server`;
      }
    } catch {
      // Not here.
    }
  }
  return undefined;
}

async function startNats(
  path: string,
): Promise<{ url: string; stop(): Promise<void> }> {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const config = await Deno.makeTempFile({ suffix: ".conf" });
  await Deno.writeTextFile(
    config,
    `listen: "127.0.0.1:${port}"\nmax_payload: 8MB\n`,
  );
  const child = new Deno.Command(path, {
    args: ["-c", config],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  for (let i = 0;; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      break;
    } catch (error) {
      if (i > 200) throw new Error(`nats-server did not start: ${error}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  return {
    url: `nats://127.0.0.1:${port}`,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
      await Deno.remove(config).catch(() => {});
    },
  };
}

async function main(): Promise<number> {
  const path = natsServer();
  if (!path) {
    console.error(
      "deno task demo:cluster needs nats-server, the NATS message broker the servers talk through.\n" +
        "Install it and run again:\n" +
        "  Debian/Ubuntu:  sudo apt-get install nats-server\n" +
        "  elsewhere:      see https://docs.nats.io/running-a-nats-service/introduction/installation",
    );
    return 1;
  }
  setupLogging({ level: "warning" });
  const nats = await startNats(path);
  console.log(`NATS: ${nats.url}`);
  const servers = ["s1", "s2"].map((name) =>
    startServer({
      host: "127.0.0.1",
      port: 0,
      requesterPort: 0,
      cluster: { servers: [nats.url], name: "demo", serverName: name },
    })
  );
  await Promise.all(servers.map(async (s) => (await s.cluster!).start()));
  for (const [i, s] of servers.entries()) {
    console.log(
      `Server s${
        i + 1
      }: workers on ${s.workerUrl}, requesters on ${s.requesterUrl}`,
    );
  }
  const markets = [0, 1, 2, 3].map(() =>
    createMarketService({ providers: ["demo"] })
  );
  const workers = markets.map((market, i) => {
    // Two workers on each server; each also knows the other server, to move there if its own dies.
    const [own, other] = i < 2 ? [0, 1] : [1, 0];
    const worker = new Worker({
      url: `${servers[own].workerUrl},${servers[other].workerUrl}`,
      name: `worker-${"abcd"[i]}`,
      concurrency: 4,
    });
    for (const [name, handler] of Object.entries(market.actions())) {
      worker.registerAction(name, handler);
    }
    void worker.start();
    return worker;
  });
  await Promise.all(workers.map((w) => w.ready()));
  // Wait until each server sees all four workers registered (announcements every 250 ms): a
  // batch hashes symbols onto worker names.
  for (let i = 0; i < 400; i++) {
    const seen = (s: typeof servers[number]) =>
      s.broker.workers().filter((w) => w.registered).length === 4;
    if (servers.every(seen)) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  console.log(
    "\nEvery server lists every worker, with the server it is attached to:",
  );
  for (const w of servers[0].broker.workers()) {
    console.log(`  ${w.name.padEnd(9)} ${w.client_id}  on ${w.server}`);
  }

  const clients = servers.map((s) => new RequesterClient(s.requesterUrl));
  await Promise.all(clients.map((c) => c.connect()));
  const items = CODES.map((code) => ({
    symbol_type: "etf",
    code,
    start_date: "2025-01-01",
    end_date: "2025-10-22",
  }));
  const homes: Map<string, string>[] = [];
  for (const [i, client] of clients.entries()) {
    // Remote load is known from announcements every 250 ms: let the last batch's load reach
    // every server, or a worker still counted busy would pass its symbols on to another.
    for (let k = 0; k < 400; k++) {
      const idle = servers.every((s) =>
        s.broker.workers().every((w) => w.in_flight === 0)
      );
      if (idle) break;
      await new Promise((r) => setTimeout(r, 25));
    }
    const answer = await client.request("get_markets", items);
    const data = answer.data as {
      results: { code: string; processed_by: string; data: unknown[] }[];
      summary: { success: number; total: number };
    };
    const byId = new Map(
      servers[i].broker.workers().map((w) => [w.client_id, w]),
    );
    homes.push(
      new Map(data.results.map((r) => [r.code, r.processed_by])),
    );
    console.log(
      `\nA batch of ${items.length} ETFs through s${
        i + 1
      }: ${data.summary.success}/${data.summary.total} succeeded`,
    );
    for (const r of data.results) {
      const w = byId.get(r.processed_by);
      console.log(
        `  ${r.code}  ${String(r.data.length).padStart(4)} bars  ${
          (w?.name ?? "?").padEnd(9)
        } on ${w?.server ?? "?"}`,
      );
    }
  }
  const same = CODES.filter((c) => homes[0].get(c) === homes[1].get(c)).length;
  console.log(
    `\nSymbol affinity across servers: ${same}/${CODES.length} symbols on the same worker through s1 and s2`,
  );

  const spread = new Map<string, number>();
  const burst = await Promise.all(
    Array.from({ length: 40 }, () => clients[0].request("get_system_info")),
  );
  const byId = new Map(
    servers[0].broker.workers().map((w) => [w.client_id, w]),
  );
  for (const a of burst) {
    const server = byId.get(a.processed_by ?? "")?.server ?? "?";
    spread.set(server, (spread.get(server) ?? 0) + 1);
  }
  console.log(
    `40 requests sent to s1 ran on: ${
      [...spread].map(([s, n]) => `${n} on ${s}`).join(", ")
    }`,
  );

  await Promise.all(clients.map((c) => c.close()));
  await Promise.all(workers.map((w) => w.stop()));
  for (const m of markets) m.close();
  await Promise.all(servers.map((s) => s.close()));
  await nats.stop();
  return 0;
}

if (import.meta.main) Deno.exit(await main());
