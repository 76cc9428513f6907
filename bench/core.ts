/**
 * Core section: broker + 2 worker subprocesses against three baselines under the same closed
 * loops of C connections × W requests in flight, with ~100 B and ~3 KB replies: a one-hop echo
 * (the floor), a feature-less relay (`Deno.serve` + a Map of pending ids + round robin, 2
 * workers on npm `ws`) and NATS request-reply (`nats-server` + 2 queue-group workers on the
 * official client; skipped, saying so, when `nats-server` is not installed). The broker runs
 * twice, as shipped (the ports' own WebSocket framing behind the connection guard) and with
 * `--no-guard` (`broker-noguard`: `Deno.serve` and the runtime's WebSocket). Plus the Nagle
 * regression guard (2 KB requests from Deno's built-in client, npm `ws` and our own client).
 *
 * The rows of one load run interleaved in short runs (broker, relay, NATS, echo, broker, …), so
 * load from other programs skews every side of a ratio alike; ratios are taken run by run and
 * reported as the median with the smallest and largest.
 *
 * @module
 */

import { startServer } from "../lib/broker/server.ts";
import {
  type ClientKind,
  type LoadResult,
  type LoadRun,
  mergeRuns,
  runLoad,
} from "./_load.ts";
import {
  cpuSeconds,
  type Helper,
  type NatsServer,
  pinProcess,
  spawnHelper,
  startNatsServer,
} from "./_spawn.ts";
import { type Check, fixed, table } from "./_stats.ts";

/** Options for {@linkcode runCore}. */
export interface CoreOptions {
  /** Measured seconds per row, split over the runs. @default 10 */
  seconds?: number;
  /** Interleaved runs per row (at least 3). @default 5 */
  runs?: number;
  /** Progress lines (stderr). */
  log?: (line: string) => void;
}

/** What answers a row's requests. */
export type Target =
  | "echo"
  | "relay"
  | "nats"
  | "broker"
  | "broker-noguard"
  | "broker-inproc"
  | "broker-twin";

/** A median with the smallest and largest value it was taken from. */
export interface Spread {
  median: number;
  min: number;
  max: number;
}

/** One measured row. */
export interface CoreRow {
  name: string;
  target: Target;
  connections: number;
  inFlight: number;
  /** Nominal reply payload, bytes. */
  size: number;
  client: ClientKind;
  /** Extra words for the row name. */
  note?: string;
  /** All runs merged (percentiles over every answer). */
  result: LoadResult;
  /** Each run's throughput and median latency, in run order. */
  runs: { rps: number; p50: number }[];
  /** CPU time per answer, in µs, of each process taking part (bench client included). */
  cpuUs: Record<string, number>;
  /** CPU time per answer, in µs, of everything but the load generator (server + workers). */
  serviceCpuUs: number;
  /**
   * Against each baseline measured with the same load and size: run-by-run ratios of req/s and
   * of p50 (this row ÷ the baseline's run next to it).
   */
  ratios: Partial<Record<Target, { rps: Spread; p50: Spread }>>;
}

/** The section's outcome. */
export interface CoreReport {
  rows: CoreRow[];
  checks: Check[];
  /** Why a baseline is missing, when one is. */
  skipped: string[];
}

/** Reply payload sizes: the answer frames come out at ~100 B and ~3 KB. */
const SMALL = 16;
const LARGE = 2900;
const LOADS = [[4, 16], [1, 1]] as const;
const BASELINES: readonly Target[] = ["relay", "nats", "echo"];

function label(size: number): string {
  return size === SMALL ? "100B" : size === LARGE ? "3KB" : `${size}B`;
}

/** The median and range of `values`; NaNs are ignored. */
export function spread(values: number[]): Spread {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return { median: NaN, min: NaN, max: NaN };
  const mid = sorted.length >> 1;
  return {
    median: sorted.length % 2
      ? sorted[mid]
      : (sorted[mid - 1] + sorted[mid]) / 2,
    min: sorted[0],
    max: sorted[sorted.length - 1],
  };
}

/** `0.93x (0.81-1.02)`. */
export function spreadText(s: Spread | undefined, digits = 2): string {
  return s === undefined
    ? ""
    : `${fixed(s.median, digits)}x (${fixed(s.min, digits)}-${
      fixed(s.max, digits)
    })`;
}

/**
 * Pins a client and a server process to different CPUs, or frees them again. A one-hop echo at
 * 1x1 is bimodal on a 2-CPU VM: ~15 us when the scheduler puts both processes on one CPU, ~85 us
 * when the answer has to wake the other CPU. The broker's four processes always span both CPUs,
 * so its latency baseline is the cross-CPU echo, as it would be between two machines.
 */
async function crossCore(
  pin: { client: number; server: number },
  on: boolean,
): Promise<void> {
  const all = `0-${navigator.hardwareConcurrency - 1}`;
  if (navigator.hardwareConcurrency < 2) return;
  await pinProcess(pin.client, on ? "0" : all);
  await pinProcess(pin.server, on ? "1" : all);
}

/**
 * A broker subprocess (`args` go to `_server.ts`) with two echo workers, its requester URL and
 * the processes whose CPU its rows count. Its helpers join `helpers`, which the section stops.
 */
async function spawnBroker(helpers: Helper[], args: string[] = []) {
  const server = await spawnHelper("_server.ts", args);
  helpers.push(server);
  const workers = await Promise.all(
    [1, 2].map((i) =>
      spawnHelper("_echo_worker.ts", [
        "--url",
        `ws://127.0.0.1:${server.info.port}`,
        "--name",
        `w${i}`,
      ])
    ),
  );
  helpers.push(...workers);
  return {
    url: `ws://127.0.0.1:${server.info.requesterPort}`,
    helpers: [server, ...workers],
    procs: {
      client: Deno.pid,
      server: server.pid,
      worker1: workers[0].pid,
      worker2: workers[1].pid,
    },
  };
}

/** Runs the core section. */
export async function runCore(options: CoreOptions = {}): Promise<CoreReport> {
  const seconds = options.seconds ?? 10;
  const runCount = Math.max(3, options.runs ?? 5);
  const log = options.log ?? (() => {});
  const rows: CoreRow[] = [];
  const skipped: string[] = [];
  const helpers: Helper[] = [];
  let nats: NatsServer | undefined;
  let inproc: ReturnType<typeof startServer> | undefined;
  /** One row to measure: what to load, and which processes' CPU to count. */
  interface Spec {
    row: Omit<
      CoreRow,
      "result" | "name" | "cpuUs" | "runs" | "serviceCpuUs" | "ratios"
    >;
    url: string;
    data: unknown;
    procs: Record<string, number>;
    /** Run client and server on different CPUs (see `crossCore`). */
    pin?: { client: number; server: number };
  }
  const measure = async (specs: Spec[], secs = seconds, count = runCount) => {
    const runs = specs.map((): LoadRun[] => []);
    const cpu = specs.map((): Record<string, number> => ({}));
    for (let k = 0; k < count; k++) {
      // Rotating the order too keeps "who ran right after whom" from favouring one row.
      for (let j = 0; j < specs.length; j++) {
        const i = (j + k) % specs.length;
        const { row, url, data, procs, pin } = specs[i];
        if (pin) await crossCore(pin, true);
        const before = await cpuSeconds(Object.values(procs));
        runs[i].push(
          await runLoad({
            url,
            connections: row.connections,
            inFlight: row.inFlight,
            seconds: secs / count,
            warmupSeconds: 0.25,
            command: "echo",
            data,
            client: row.client,
          }),
        );
        const after = await cpuSeconds(Object.values(procs));
        if (pin) await crossCore(pin, false);
        Object.keys(procs).forEach((name, j) => {
          const key = name.replace(/\d+$/, "");
          cpu[i][key] = (cpu[i][key] ?? 0) + after[j] - before[j];
        });
      }
    }
    const measured = specs.map(({ row }, i): CoreRow => {
      const result = mergeRuns(runs[i]);
      const cpuUs = Object.fromEntries(
        Object.entries(cpu[i]).map(([k, v]) => [k, v * 1e6 / result.answers]),
      );
      const name = `${row.target} ${row.connections}x${row.inFlight} ${
        label(row.size)
      }${row.note ? ` ${row.note}` : ""}`;
      return {
        ...row,
        name,
        result,
        runs: runs[i].map((run) => {
          const r = mergeRuns([run]);
          return { rps: r.rps, p50: r.p50 };
        }),
        cpuUs,
        serviceCpuUs: Object.entries(cpuUs).filter(([k]) => k !== "client")
          .reduce((sum, [, v]) => sum + v, 0),
        ratios: {},
      };
    });
    for (const row of measured) {
      for (const base of measured) {
        if (base === row || !row.target.startsWith("broker")) continue;
        const control = row.target === "broker-twin" &&
          base.target === "broker";
        if (!control && !BASELINES.includes(base.target)) continue;
        row.ratios[base.target] = {
          rps: spread(row.runs.map((r, k) => r.rps / base.runs[k].rps)),
          p50: spread(row.runs.map((r, k) => r.p50 / base.runs[k].p50)),
        };
      }
      rows.push(row);
      const rps = spread(row.runs.map((r) => r.rps));
      log(
        `  ${row.name}: ${fixed(rps.median, 0)} req/s (${fixed(rps.min, 0)}-${
          fixed(rps.max, 0)
        }), p50 ${fixed(row.result.p50)} ms, server+workers ${
          fixed(row.serviceCpuUs, 1)
        } us CPU per reply`,
      );
    }
  };
  try {
    log(
      "core: echo server, relay + 2 workers, broker + 2 workers, broker without its guard + 2 workers",
    );
    const echo = await spawnHelper("_echo_server.ts");
    helpers.push(echo);
    const echoUrl = `ws://127.0.0.1:${echo.info.port}`;
    const broker = await spawnBroker(helpers);
    // The same broker without the guard in front of its ports (`startServer({ guard: false })`):
    // `Deno.serve` and the runtime's WebSocket instead of the guard's own framing.
    const bare = await spawnBroker(helpers, ["--no-guard"]);
    // A second broker, identical to the first, measured beside it in the 1x1 rows: the two
    // differ only by chance (where the scheduler puts eight processes on the CPUs), so their
    // ratio shows how finely a 1x1 ratio can be read on this machine.
    const twin = await spawnBroker(helpers);
    const relay = await spawnHelper("_relay_server.ts");
    helpers.push(relay);
    const relayWorkers = await Promise.all(
      [1, 2].map(() =>
        spawnHelper("_relay_worker.ts", [
          "--url",
          `ws://127.0.0.1:${relay.info.port}`,
        ])
      ),
    );
    helpers.push(...relayWorkers);
    const relayUrl = `ws://127.0.0.1:${relay.info.requesterPort}`;
    nats = await startNatsServer();
    const natsWorkers: Helper[] = [];
    if (nats === undefined) {
      skipped.push(
        "NATS rows skipped: nats-server is not installed (apt-get install nats-server)",
      );
      log(`core: ${skipped.at(-1)}`);
    } else {
      log(`core: nats-server + 2 queue-group workers at ${nats.url}`);
      natsWorkers.push(
        ...await Promise.all(
          [1, 2].map(() =>
            spawnHelper("_nats_worker.ts", ["--url", nats!.url])
          ),
        ),
      );
      helpers.push(...natsWorkers);
    }
    const echoProcs = { client: Deno.pid, echo: echo.pid };
    const relayProcs = {
      client: Deno.pid,
      server: relay.pid,
      worker1: relayWorkers[0].pid,
      worker2: relayWorkers[1].pid,
    };
    const natsProcs = nats && {
      client: Deno.pid,
      server: nats.pid,
      worker1: natsWorkers[0].pid,
      worker2: natsWorkers[1].pid,
    };
    // Warm up the JIT of every process before measuring.
    const warm: [string, ClientKind][] = [
      [echoUrl, "ws"],
      [broker.url, "ws"],
      [bare.url, "ws"],
      [relayUrl, "ws"],
    ];
    if (nats) warm.push([nats.url, "nats"]);
    for (const [url, client] of warm) {
      await runLoad({
        url,
        connections: 4,
        inFlight: 16,
        seconds: 1,
        warmupSeconds: 0,
        command: "echo",
        data: { size: SMALL },
        client,
      });
    }
    for (const [c, w] of LOADS) {
      for (const size of [SMALL, LARGE]) {
        const row = { connections: c, inFlight: w, size } as const;
        const specs: Spec[] = [
          {
            row: { ...row, client: "ws", target: "broker" },
            url: broker.url,
            data: { size },
            procs: broker.procs,
          },
          {
            row: { ...row, client: "ws", target: "broker-noguard" },
            url: bare.url,
            data: { size },
            procs: bare.procs,
          },
          {
            row: { ...row, client: "ws", target: "relay" },
            url: relayUrl,
            data: { size },
            procs: relayProcs,
          },
        ];
        if (c === 1) {
          specs.push({
            row: { ...row, client: "ws", target: "broker-twin" },
            url: twin.url,
            data: { size },
            procs: twin.procs,
          });
        }
        if (nats && natsProcs) {
          specs.push({
            row: { ...row, client: "nats", target: "nats" },
            url: nats.url,
            data: { size },
            procs: natsProcs,
          });
        }
        specs.push({
          row: {
            ...row,
            client: "ws",
            target: "echo",
            note: c === 1 ? "cross-cpu" : undefined,
          },
          url: echoUrl,
          data: { size },
          procs: echoProcs,
          pin: c === 1 ? { client: Deno.pid, server: echo.pid } : undefined,
        });
        // A lone request's latency swings from run to run with where the scheduler puts the
        // processes (a wake-up across CPUs costs tens of microseconds, on the same CPU a few):
        // 1x1 rows take three times as many runs, each a third as long, for a steadier median.
        await measure(specs, seconds, c === 1 ? runCount * 3 : runCount);
      }
    }
    await Promise.all(
      [
        echo,
        ...bare.helpers,
        ...twin.helpers,
        relay,
        ...relayWorkers,
        ...natsWorkers,
      ].map((
        h,
      ) => h.stop()),
    );
    await nats?.stop();
    nats = undefined;

    log("core: Nagle guard, 2 KB requests at 1x1");
    const guardSeconds = Math.min(seconds, 3);
    const pad = "p".repeat(2048);
    await measure(
      (["deno", "ws", "switchyard"] as const).map((client) => ({
        row: {
          target: "broker",
          connections: 1,
          inFlight: 1,
          size: SMALL,
          client,
          note: `2KB-req ${client}-client`,
        },
        url: broker.url,
        data: { size: SMALL, pad },
        procs: broker.procs,
      })),
      guardSeconds,
      3,
    );
    await Promise.all(broker.helpers.map((h) => h.stop()));

    log("core: broker in the bench process + 2 worker subprocesses");
    inproc = startServer({ host: "127.0.0.1", port: 0, requesterPort: 0 });
    const inWorkers = await Promise.all(
      [1, 2].map((i) =>
        spawnHelper("_echo_worker.ts", [
          "--url",
          `ws://127.0.0.1:${inproc!.port}`,
          "--name",
          `w${i}`,
        ])
      ),
    );
    helpers.push(...inWorkers);
    await measure([{
      row: {
        target: "broker-inproc",
        connections: 4,
        inFlight: 16,
        size: SMALL,
        client: "ws",
      },
      url: `ws://127.0.0.1:${inproc.requesterPort}`,
      data: { size: SMALL },
      procs: {
        "client+server": Deno.pid,
        worker1: inWorkers[0].pid,
        worker2: inWorkers[1].pid,
      },
    }]);
    await Promise.all(inWorkers.map((h) => h.stop()));
  } finally {
    await Promise.all(helpers.map((h) => h.stop()));
    await nats?.stop();
    await inproc?.close();
  }
  return { rows, checks: coreChecks(rows), skipped };
}

function coreChecks(rows: CoreRow[]): Check[] {
  const checks: Check[] = [];
  const broker = rows.filter((r) => r.target === "broker" && !r.note);
  const ratioCheck = (
    r: CoreRow,
    base: Target,
    what: "rps" | "p50",
    limit: number,
    note = "",
  ) => {
    const ratio = r.ratios[base]?.[what];
    if (ratio === undefined) return;
    checks.push({
      name: what === "rps"
        ? `throughput ${r.name} >= ${fixed(limit, 2)}x ${base}`
        : `latency ${r.name} p50 <= ${fixed(limit, 2)}x ${base}`,
      pass: what === "rps" ? ratio.median >= limit : ratio.median <= limit,
      detail: `median of ${r.runs.length} runs ${spreadText(ratio)}${note}`,
    });
  };
  for (const r of broker.filter((r) => r.connections === 4)) {
    ratioCheck(r, "relay", "rps", 1.0);
    ratioCheck(r, "nats", "rps", 0.8);
    ratioCheck(r, "relay", "p50", 1.0);
    ratioCheck(r, "echo", "rps", 0.3);
  }
  for (const r of broker.filter((r) => r.connections === 1)) {
    const twin = rows.find((t) =>
      t.target === "broker-twin" && t.size === r.size
    );
    const control = twin?.ratios.broker?.p50;
    ratioCheck(
      r,
      "relay",
      "p50",
      1.1,
      control
        ? `; an identical broker beside it: ${
          spreadText(control)
        } of its p50, ${spreadText(twin!.ratios.relay?.p50)} of the relay's`
        : "",
    );
    ratioCheck(r, "echo", "p50", 3.5);
  }
  // A Nagle/delayed-ACK stall pins latencies at ~40-44 ms; without queueing (1x1) even p90
  // stays far below that, and under load the median does.
  for (const r of rows.filter((r) => r.size === LARGE)) {
    const value = r.connections === 1 ? r.result.p90 : r.result.p50;
    checks.push({
      name: `no 44 ms stall ${r.name}`,
      pass: value < 40,
      detail: `${r.connections === 1 ? "p90" : "p50"} ${fixed(value)} ms`,
    });
  }
  const guard = rows.filter((r) => r.note?.startsWith("2KB-req"));
  const deno = guard.find((r) => r.client === "deno");
  for (const kind of ["switchyard", "ws"] as const) {
    const row = guard.find((r) => r.client === kind);
    if (!row || !deno) continue;
    checks.push({
      name: `Nagle guard: 2 KB requests via ${
        kind === "ws" ? "npm ws" : "our client (lib/transport/_connect.ts)"
      } p50 < 40 ms`,
      pass: row.result.p50 < 40,
      detail: `p50 ${fixed(row.result.p50)} ms, Deno built-in client p50 ${
        fixed(deno.result.p50)
      } ms (shows the stall when >= 40)`,
    });
  }
  return checks;
}

/** The core table: medians over the runs, percentiles over every answer. */
export function coreTable(rows: CoreRow[]): string {
  return table(
    [
      "row",
      "req B",
      "reply B",
      "req/s median",
      "req/s range",
      "p50 ms",
      "p90 ms",
      "p99 ms",
      "CPU us/reply srv+wrk",
      "errors",
    ],
    rows.map((r) => {
      const rps = spread(r.runs.map((x) => x.rps));
      return [
        r.name,
        fixed(r.result.requestBytes, 0),
        fixed(r.result.replyBytes, 0),
        fixed(rps.median, 0),
        `${fixed(rps.min, 0)}-${fixed(rps.max, 0)}`,
        fixed(r.result.p50),
        fixed(r.result.p90),
        fixed(r.result.p99),
        fixed(r.serviceCpuUs, 1),
        String(r.result.errors + r.result.unanswered),
      ];
    }),
  );
}

/** Broker rows against each baseline: run-by-run ratios, median (min-max). */
export function coreRatioTable(rows: CoreRow[]): string {
  const withRatios = rows.filter((r) => Object.keys(r.ratios).length > 0);
  return table(
    [
      "row",
      "rps/relay",
      "rps/nats",
      "rps/echo",
      "p50/relay",
      "p50/nats",
      "p50/echo",
      "p50/broker (control)",
    ],
    withRatios.map((r) => [
      r.name,
      ...(["rps", "p50"] as const).flatMap((what) =>
        BASELINES.map((base) => spreadText(r.ratios[base]?.[what]))
      ),
      spreadText(r.ratios.broker?.p50),
    ]),
  );
}

/** CPU per answer by process: where a request's cost goes, broker against the baselines. */
export function coreCpuTable(rows: CoreRow[]): string {
  const names = ["client", "echo", "server", "client+server", "worker"];
  return table(
    ["row", ...names.map((n) => `${n} us`), "total us"],
    rows.map((r) => [
      r.name,
      ...names.map((n) => fixed(r.cpuUs[n], 1)),
      fixed(Object.values(r.cpuUs).reduce((a, b) => a + b, 0), 1),
    ]),
  );
}
