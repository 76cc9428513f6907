/**
 * Cluster section: one, two and three servers on one NATS with three echo workers spread over
 * them and the load spread over their requester ports, as ratios against one server measured in
 * the same interleaved runs; the CPU cost of a cross-server hop (every request entering at one
 * server and served by a worker of another, against the same load served locally plus a plain
 * NATS request-reply through the same nats-server; both servers, the worker and nats-server
 * counted), at 4 connections x 16 in flight and at 1 x 1; the membership's NATS traffic at 3
 * servers x 300 workers; and the
 * recovery after a server is SIGKILLed (what requesters on the other servers saw, and how long
 * its worker took to serve again through another server). Skipped, saying so, without
 * `nats-server`.
 *
 * @module
 */

import { Worker } from "../lib/worker/worker_client.ts";
import { connectNats } from "../lib/cluster/nats_connect.ts";
import { type LoadRun, mergeRuns, runLoad } from "./_load.ts";
import {
  cpuSeconds,
  type Helper,
  spawnHelper,
  startNatsServer,
} from "./_spawn.ts";
import { type Check, fixed, table } from "./_stats.ts";
import { type Spread, spread, spreadText } from "./core.ts";

/** Options for {@linkcode runClusterBench}. */
export interface ClusterBenchOptions {
  /** Measured seconds per row per run. @default 3 */
  seconds?: number;
  /** Interleaved runs (at least 3). @default 3 */
  runs?: number;
  log?: (line: string) => void;
}

/** One layout's measurements. */
export interface ClusterRow {
  servers: number;
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  /** Run-by-run ratios against one server. */
  rpsRatio: Spread;
  p50Ratio: Spread;
}

/** The section's outcome. */
export interface ClusterReport {
  skipped?: string;
  rows: ClusterRow[];
  /** CPU per request, local, crossing servers and plain NATS request-reply, by load shape. */
  hops?: HopShape[];
  /** Membership traffic on NATS at 3 servers × 300 workers. */
  membership?: MembershipTraffic;
  /** After a server is SIGKILLed, per kill. */
  recovery?: {
    failed: number[];
    /** Longest wait for an answer on the surviving servers around the kill, ms. */
    longestMs: number[];
    /** From the kill until the killed server's worker served again via another server, ms. */
    workerBackMs: number[];
    /** From the kill until the others wrote the server off and re-dispatched its requests, ms. */
    writtenOffMs: number[];
  };
  checks: Check[];
}

/** CPU µs per request at one load shape (connections × in flight). */
export interface HopShape {
  name: string;
  /** Both servers + the worker + nats-server, the worker on the requesters' server. */
  localUs: Spread;
  /** The same, every request served by a worker of the other server. */
  crossUs: Spread;
  /** nats-server + a NATS worker, for a plain NATS request-reply echo. */
  natsUs: Spread;
  /** Run by run: crossing ÷ (local + plain NATS request-reply). */
  ratio: Spread;
  /** Median µs per request of each process (s0, s1, worker, nats-server), local and crossing. */
  byProcess: { local: number[]; cross: number[] };
}

/** What the membership costs NATS, idle and under load. */
export interface MembershipTraffic {
  servers: number;
  workers: number;
  /** Messages and bytes per second published on membership subjects (and snapshot replies). */
  idle: { msgs: number; bytes: number };
  loaded: { msgs: number; bytes: number };
  /** The same, delivered (each published message reaches the other servers). */
  idleDelivered: { msgs: number; bytes: number };
  loadedDelivered: { msgs: number; bytes: number };
}

const HOP_SHAPES = [
  { name: "4x16", connections: 4, inFlight: 16 },
  { name: "1x1", connections: 1, inFlight: 1 },
];

const SIZE = 16;
const wsUrl = (port: number) => `ws://127.0.0.1:${port}`;

let clusters = 0;

/** `n` servers forming a cluster of their own (a fresh cluster name) on `nats`. */
async function startServers(nats: string, n: number): Promise<Helper[]> {
  const cluster = `bench${++clusters}`;
  return await Promise.all(
    Array.from(
      { length: n },
      (_, i) =>
        spawnHelper("_cluster_server.ts", [
          "--cluster",
          nats,
          "--cluster-name",
          cluster,
          "--name",
          `s${i}`,
        ]),
    ),
  );
}

async function startWorkers(
  urls: string[][],
  action = "echo",
): Promise<Helper[]> {
  return await Promise.all(
    urls.map((u, i) =>
      spawnHelper("_echo_worker.ts", [
        "--url",
        u.join(","),
        "--name",
        `cw${i}${action === "echo" ? "" : `-${action}`}`,
        "--concurrency",
        "32",
        "--action",
        action,
      ])
    ),
  );
}

/**
 * Three servers with 100 workers each (in this process), and a NATS client of our own that
 * counts what is published on the membership subjects: idle for `seconds`, then for `seconds`
 * under a load through one server that keeps the workers' load changing.
 */
async function measureMembership(
  natsUrl: string,
  seconds: number,
  log: (line: string) => void,
): Promise<{ report: MembershipTraffic; helpers: Helper[] }> {
  log("cluster: membership traffic, 3 servers x 300 workers");
  const servers = await startServers(natsUrl, 3);
  const cluster = `bench${clusters}`;
  const workers: Worker[] = [];
  try {
    for (let i = 0; i < 300; i++) {
      const w = new Worker({
        url: wsUrl(servers[i % 3].info.port as number),
        name: `m${i}`,
        concurrency: 4,
        backoff: { initialMs: 100, maxMs: 1000 },
      });
      w.registerAction("echo", () => "x");
      workers.push(w);
      void w.start();
    }
    await Promise.all(workers.map((w) => w.ready()));
    for (const s of servers) await workersSeen(s.info.port as number, 300);
    const spy = await connectNats({ servers: natsUrl });
    const counted = { msgs: 0, bytes: 0 };
    const membershipSubject = new RegExp(
      `^switchyard\\.${cluster}\\.(hb|reg|srv\\.[^.]+\\.workers)$`,
    );
    const inboxes = new Set<string>();
    spy.subscribe(">", {
      callback: (_error, msg) => {
        // Snapshot replies go to the asker's inbox: counted as membership too.
        if (msg.reply && membershipSubject.test(msg.subject)) {
          inboxes.add(msg.reply);
        }
        if (
          membershipSubject.test(msg.subject) || inboxes.delete(msg.subject)
        ) {
          counted.msgs++;
          counted.bytes += msg.data.length + (msg.headers ? 64 : 0);
        }
      },
    });
    await spy.flush();
    const window = async (during: () => Promise<unknown>) => {
      counted.msgs = counted.bytes = 0;
      const started = Date.now();
      await during();
      const s = (Date.now() - started) / 1000;
      return { msgs: counted.msgs / s, bytes: counted.bytes / s };
    };
    const idle = await window(() =>
      new Promise((r) => setTimeout(r, seconds * 1000))
    );
    const loaded = await window(() =>
      runLoad({
        url: wsUrl(servers[0].info.requesterPort as number),
        connections: 4,
        inFlight: 16,
        seconds,
        warmupSeconds: 0,
        command: "echo",
        data: {},
      })
    );
    await spy.close();
    // Every published membership message reaches the other two servers.
    const delivered = (x: { msgs: number; bytes: number }) => ({
      msgs: x.msgs * 2,
      bytes: x.bytes * 2,
    });
    return {
      report: {
        servers: 3,
        workers: 300,
        idle,
        loaded,
        idleDelivered: delivered(idle),
        loadedDelivered: delivered(loaded),
      },
      helpers: servers,
    };
  } finally {
    await Promise.all(workers.map((w) => w.stop(0)));
  }
}

async function workersSeen(port: number, n: number): Promise<void> {
  const until = Date.now() + 20_000;
  let h: { workers?: number } = {};
  while (Date.now() < until) {
    h = await (await fetch(`http://127.0.0.1:${port}/health`)).json();
    if (h.workers === n) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(
    `server on ${port} never saw ${n} workers: ${JSON.stringify(h)}`,
  );
}

/** Load spread over `ports` (connections round robin), merged. */
async function load(ports: number[], seconds: number): Promise<LoadRun> {
  const runs = await Promise.all(ports.map((port, i) =>
    runLoad({
      url: wsUrl(port),
      // 4 connections × 8 in flight in all, split over the servers.
      connections: Math.max(
        1,
        Math.round(4 / ports.length) + (i < 4 % ports.length ? 1 : 0),
      ),
      inFlight: 8,
      seconds,
      warmupSeconds: 0.5,
      command: "echo",
      data: { size: SIZE },
    })
  ));
  return {
    latencies: runs.flatMap((r) => r.latencies),
    measuredMs: Math.max(...runs.map((r) => r.measuredMs)),
    errors: runs.reduce((s, r) => s + r.errors, 0),
    answers: runs.reduce((s, r) => s + r.answers, 0),
    unanswered: runs.reduce((s, r) => s + r.unanswered, 0),
    replyBytes: runs.reduce((s, r) => s + r.replyBytes, 0),
    requestBytes: runs[0].requestBytes,
  };
}

/** Runs the cluster section. */
export async function runClusterBench(
  options: ClusterBenchOptions = {},
): Promise<ClusterReport> {
  const seconds = options.seconds ?? 3;
  const runs = Math.max(3, options.runs ?? 3);
  const log = options.log ?? (() => {});
  const nats = await startNatsServer();
  if (!nats) {
    const skipped =
      "cluster section skipped: nats-server is not installed (apt-get install nats-server)";
    log(skipped);
    return { skipped, rows: [], checks: [] };
  }
  const checks: Check[] = [];
  const helpers: Helper[] = [];
  try {
    // Three layouts side by side, each with three workers, measured in turn within each run.
    const layouts: { ports: number[] }[] = [];
    for (const n of [1, 2, 3]) {
      const servers = n === 1
        ? [await spawnHelper("_server.ts")]
        : await startServers(nats.url, n);
      helpers.push(...servers);
      const workerPorts = servers.map((s) => s.info.port as number);
      const workers = await startWorkers(
        [0, 1, 2].map((i) => [wsUrl(workerPorts[i % n])]),
      );
      helpers.push(...workers);
      const ports = servers.map((s) => s.info.requesterPort as number);
      for (const s of servers) await workersSeen(s.info.port as number, 3);
      layouts.push({ ports });
    }
    const measured: LoadRun[][] = [[], [], []];
    for (let r = 0; r < runs; r++) {
      for (const [i, layout] of layouts.entries()) {
        log(`cluster: run ${r + 1}/${runs}, ${i + 1} server(s)`);
        measured[i].push(await load(layout.ports, seconds));
      }
    }
    const rows: ClusterRow[] = measured.map((list, i) => {
      const merged = mergeRuns(list);
      const ratio = (f: (run: LoadRun) => number) =>
        spread(list.map((run, k) => f(run) / f(measured[0][k])));
      const rps = (run: LoadRun) =>
        run.latencies.length / (run.measuredMs / 1000);
      const p50 = (run: LoadRun) => mergeRuns([run]).p50;
      return {
        servers: i + 1,
        rps: merged.rps,
        p50: merged.p50,
        p99: merged.p99,
        errors: merged.errors + merged.unanswered,
        rpsRatio: ratio(rps),
        p50Ratio: ratio(p50),
      };
    });
    await Promise.all(helpers.splice(0).map((h) => h.stop()));

    // The hop: load on s0 only, at two shapes. `echo` is offered only by a worker on s0 (local),
    // `echo_x` only by one on s1 (every request crosses); and a plain NATS request-reply echo
    // through the same nats-server, with its own worker, as the baseline a crossing is held to.
    const [h0, h1] = await startServers(nats.url, 2);
    helpers.push(h0, h1);
    const [wLocal] = await startWorkers([[wsUrl(h0.info.port as number)]]);
    const [wRemote] = await startWorkers(
      [[wsUrl(h1.info.port as number)]],
      "echo_x",
    );
    const natsWorker = await spawnHelper("_nats_worker.ts", [
      "--url",
      nats.url,
    ]);
    helpers.push(wLocal, wRemote, natsWorker);
    await workersSeen(h0.info.port as number, 2);
    const hops: HopShape[] = [];
    for (const shape of HOP_SHAPES) {
      const localUs: number[] = [];
      const crossUs: number[] = [];
      const natsUs: number[] = [];
      const localBy: number[][] = [];
      const crossBy: number[][] = [];
      const cpuRun = async (
        pids: number[],
        by: number[][] | undefined,
        command: string,
        client: "ws" | "nats" = "ws",
      ) => {
        const before = await cpuSeconds(pids);
        const run = await runLoad({
          url: client === "nats"
            ? nats.url
            : wsUrl(h0.info.requesterPort as number),
          client,
          connections: shape.connections,
          inFlight: shape.inFlight,
          seconds,
          warmupSeconds: 0.5,
          command,
          data: { size: SIZE },
        });
        const after = await cpuSeconds(pids);
        const each = after.map((v, k) =>
          (v - before[k]) * 1e6 / Math.max(1, run.answers)
        );
        by?.push(each);
        return each.reduce((s, v) => s + v, 0);
      };
      for (let r = 0; r < runs; r++) {
        log(`cluster: hop ${shape.name} run ${r + 1}/${runs}`);
        // Interleaved in every run; nats-server counts in all three.
        localUs.push(
          await cpuRun([h0.pid, h1.pid, wLocal.pid, nats.pid], localBy, "echo"),
        );
        crossUs.push(
          await cpuRun(
            [h0.pid, h1.pid, wRemote.pid, nats.pid],
            crossBy,
            "echo_x",
          ),
        );
        natsUs.push(
          await cpuRun([nats.pid, natsWorker.pid], undefined, "echo", "nats"),
        );
      }
      hops.push({
        name: shape.name,
        localUs: spread(localUs),
        crossUs: spread(crossUs),
        natsUs: spread(natsUs),
        ratio: spread(crossUs.map((c, k) => c / (localUs[k] + natsUs[k]))),
        byProcess: {
          local: [0, 1, 2, 3].map((i) =>
            spread(localBy.map((b) => b[i])).median
          ),
          cross: [0, 1, 2, 3].map((i) =>
            spread(crossBy.map((b) => b[i])).median
          ),
        },
      });
    }
    for (const hop of hops) {
      const target = hop.name === "1x1" ? 1.3 : 1.1;
      checks.push({
        name:
          `cluster: at ${hop.name} a cross-server request costs <= ${target}x the CPU of a local one plus a plain NATS request-reply`,
        pass: hop.ratio.median <= target,
        detail: `${spreadText(hop.ratio)} (${
          fixed(hop.localUs.median, 0)
        } µs local + ${fixed(hop.natsUs.median, 0)} µs NATS vs ${
          fixed(hop.crossUs.median, 0)
        } µs crossing)`,
      });
    }
    await Promise.all(helpers.splice(0).map((h) => h.stop()));

    const membership = await measureMembership(nats.url, seconds, log);
    helpers.push(...membership.helpers);
    await Promise.all(helpers.splice(0).map((h) => h.stop()));

    // Recovery: three servers; a worker on each, the victim's preferring it then s0; load
    // through s0 and s1 only. Kill s2, measure, restart it.
    const recovery = {
      failed: [] as number[],
      longestMs: [] as number[],
      workerBackMs: [] as number[],
      writtenOffMs: [] as number[],
    };
    for (let r = 0; r < runs; r++) {
      log(`cluster: recovery run ${r + 1}/${runs}`);
      const servers = await startServers(nats.url, 3);
      helpers.push(...servers);
      const wp = servers.map((s) => wsUrl(s.info.port as number));
      const workers = await startWorkers([[wp[0]], [wp[1]], [wp[2], wp[0]]]);
      helpers.push(...workers);
      for (const s of servers) await workersSeen(s.info.port as number, 3);
      const survivors = [servers[0], servers[1]].map((s) =>
        s.info.requesterPort as number
      );
      const loading = load(survivors, 4);
      await new Promise((res) => setTimeout(res, 1500));
      const killedAt = Date.now();
      await servers[2].stop("SIGKILL");
      // The victim's worker is back once s0 has it attached (two workers of its own); the
      // victim is written off once s0 lists two servers (its requests then run elsewhere).
      const until = Date.now() + 20_000;
      let back = NaN;
      let gone = NaN;
      while (
        Date.now() < until && (Number.isNaN(back) || Number.isNaN(gone))
      ) {
        const h =
          await (await fetch(`http://127.0.0.1:${servers[0].info.port}/health`))
            .json();
        const self = h.cluster.servers.find((x: { self: boolean }) => x.self);
        if (Number.isNaN(back) && self.workers === 2) {
          back = Date.now() - killedAt;
        }
        if (Number.isNaN(gone) && h.cluster.servers.length === 2) {
          gone = Date.now() - killedAt;
        }
        await new Promise((res) => setTimeout(res, 10));
      }
      const run = await loading;
      recovery.failed.push(run.errors + run.unanswered);
      recovery.longestMs.push(Math.max(...run.latencies));
      recovery.workerBackMs.push(back);
      recovery.writtenOffMs.push(gone);
      await Promise.all(helpers.splice(0).map((h) => h.stop()));
    }
    checks.push({
      name: "cluster: requesters on surviving servers see 0 failed requests",
      pass: recovery.failed.every((n) => n === 0),
      detail: `failed per kill: ${recovery.failed.join(", ")}`,
    });
    checks.push({
      name: "cluster: a killed server's workers serve again within 2 s",
      pass: recovery.workerBackMs.every((ms) => ms <= 2000),
      detail: `ms per kill: ${
        recovery.workerBackMs.map((v) => fixed(v, 0)).join(", ")
      }`,
    });
    return { rows, hops, membership: membership.report, recovery, checks };
  } finally {
    await Promise.all(helpers.map((h) => h.stop()));
    await nats.stop();
  }
}

/** The section's tables. */
export function clusterTable(report: ClusterReport): string {
  if (report.skipped) return report.skipped;
  const out = [
    table(
      [
        "servers",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "req/s vs 1",
        "p50 vs 1",
      ],
      report.rows.map((r) => [
        String(r.servers),
        fixed(r.rps, 0),
        fixed(r.p50),
        fixed(r.p99),
        String(r.errors),
        spreadText(r.rpsRatio),
        spreadText(r.p50Ratio),
      ]),
    ),
  ];
  for (const h of report.hops ?? []) {
    out.push(
      "",
      `CPU per request at ${h.name} (connections x in flight): local ${
        fixed(h.localUs.median, 0)
      } µs (${fixed(h.localUs.min, 0)}-${
        fixed(h.localUs.max, 0)
      }), crossing servers ${fixed(h.crossUs.median, 0)} µs (${
        fixed(h.crossUs.min, 0)
      }-${fixed(h.crossUs.max, 0)}), plain NATS request-reply ${
        fixed(h.natsUs.median, 0)
      } µs (${fixed(h.natsUs.min, 0)}-${
        fixed(h.natsUs.max, 0)
      }): crossing / (local + NATS) ${spreadText(h.ratio)}`,
      `  by process, µs per request (medians): s0 (requesters' server) / s1 / worker / nats-server: local ${
        h.byProcess.local.map((v) => fixed(v, 1)).join(" / ")
      }; crossing ${h.byProcess.cross.map((v) => fixed(v, 1)).join(" / ")}`,
    );
  }
  if (report.membership) {
    const m = report.membership;
    const rate = (x: { msgs: number; bytes: number }) =>
      `${fixed(x.msgs, 1)} msg/s, ${fixed(x.bytes / 1024, 1)} KiB/s`;
    out.push(
      "",
      `Membership on NATS at ${m.servers} servers x ${m.workers} workers: idle ${
        rate(m.idle)
      } published (${rate(m.idleDelivered)} delivered); under load ${
        rate(m.loaded)
      } published (${rate(m.loadedDelivered)} delivered)`,
    );
  }
  if (report.recovery) {
    const r = report.recovery;
    out.push(
      `After a server was SIGKILLed: failed requests on the others ${
        r.failed.join(", ")
      }; ` +
        `longest answer there ${
          r.longestMs.map((v) => fixed(v, 0)).join(", ")
        } ms; ` +
        `its worker served again via another server after ${
          r.workerBackMs.map((v) => fixed(v, 0)).join(", ")
        } ms; the others wrote it off (re-dispatching its requests) after ${
          r.writtenOffMs.map((v) => fixed(v, 0)).join(", ")
        } ms`,
    );
  }
  return out.join("\n");
}
