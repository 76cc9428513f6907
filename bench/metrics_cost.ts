/**
 * What request metrics cost the hot path: three brokers (metrics off, as shipped, and recorded
 * with prom-client's own `inc()`/`observe()`), each with two echo workers, loaded in turn with
 * 4 connections × 16 requests in flight and ~100 B replies, the order rotated run by run. Prints
 * per variant the median req/s and broker CPU per reply over the runs, with their range, and the
 * run-by-run ratio to "off". First, in this process, the cost of one request's recording alone:
 * `Metrics.request()` against prom-client's `inc()` + `observe()`, 1e6 calls per round.
 *
 * `deno run -A bench/metrics_cost.ts [--runs 7] [--seconds 2]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Metrics } from "../lib/broker/metrics.ts";
import { promRecorder } from "./_metrics_server.ts";
import { runLoad } from "./_load.ts";
import { cpuSeconds, type Helper, spawnHelper } from "./_spawn.ts";
import { spread, spreadText } from "./core.ts";
import { fixed, table } from "./_stats.ts";

const VARIANTS = ["off", "on", "prom"] as const;

/** Nanoseconds per recorded request, median of interleaved rounds, for ours and prom-client's. */
function microbench(rounds: number): { ours: number[]; prom: number[] } {
  const n = 1_000_000;
  const metrics = new Metrics({ isKnownCommand: () => true });
  const record = promRecorder();
  const ours: number[] = [];
  const prom: number[] = [];
  const now = Date.now();
  for (let r = 0; r < rounds; r++) {
    let t = performance.now();
    for (let i = 0; i < n; i++) {
      metrics.request("echo", undefined, (i % 50) / 10, now);
    }
    ours.push((performance.now() - t) * 1e6 / n);
    t = performance.now();
    for (let i = 0; i < n; i++) {
      record("echo", undefined, (i % 50) / 10);
    }
    prom.push((performance.now() - t) * 1e6 / n);
  }
  return { ours, prom };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      runs: { type: "string", default: "7" },
      seconds: { type: "string", default: "2" },
    },
  });
  const runs = Math.max(3, Number(values.runs));
  const seconds = Number(values.seconds);
  const micro = microbench(runs);
  const ns = (v: number[]) => {
    const m = spread(v);
    return `${fixed(m.median, 0)} ns (${fixed(m.min, 0)}-${fixed(m.max, 0)})`;
  };
  console.log(
    `Recording one request: Metrics.request() ${ns(micro.ours)}, ` +
      `prom-client inc()+observe() ${ns(micro.prom)}\n`,
  );
  const helpers: Helper[] = [];
  try {
    const setups = [];
    for (const variant of VARIANTS) {
      const server = await spawnHelper("_metrics_server.ts", [
        "--metrics",
        variant,
      ]);
      helpers.push(server);
      const workerUrl = `ws://127.0.0.1:${server.info.port}`;
      const workers = await Promise.all(
        [1, 2].map((i) =>
          spawnHelper("_echo_worker.ts", [
            "--url",
            workerUrl,
            "--name",
            `w${i}`,
          ])
        ),
      );
      helpers.push(...workers);
      setups.push({
        variant,
        pid: server.pid,
        url: `ws://127.0.0.1:${server.info.requesterPort}`,
      });
    }
    const rps = setups.map((): number[] => []);
    const cpu = setups.map((): number[] => []);
    for (let k = 0; k < runs; k++) {
      for (let j = 0; j < setups.length; j++) {
        const i = (j + k) % setups.length;
        const [before] = await cpuSeconds([setups[i].pid]);
        const run = await runLoad({
          url: setups[i].url,
          connections: 4,
          inFlight: 16,
          seconds,
          warmupSeconds: 0.25,
          command: "echo",
          data: { size: 16 },
        });
        const [after] = await cpuSeconds([setups[i].pid]);
        rps[i].push(run.answers / (run.measuredMs / 1000));
        cpu[i].push((after - before) * 1e6 / run.answers);
        console.error(
          `run ${k + 1}/${runs} ${setups[i].variant}: ${
            fixed(rps[i].at(-1)!, 0)
          } req/s, ${fixed(cpu[i].at(-1)!, 1)} us broker CPU per reply`,
        );
      }
    }
    const ratio = (values: number[][], i: number) =>
      spread(values[i].map((v, k) => v / values[0][k]));
    console.log(table(
      ["metrics", "req/s", "vs off", "broker CPU us/reply", "vs off"],
      setups.map((s, i) => {
        const r = spread(rps[i]);
        const c = spread(cpu[i]);
        return [
          s.variant,
          `${fixed(r.median, 0)} (${fixed(r.min, 0)}-${fixed(r.max, 0)})`,
          spreadText(ratio(rps, i), 3),
          `${fixed(c.median, 1)} (${fixed(c.min, 1)}-${fixed(c.max, 1)})`,
          spreadText(ratio(cpu, i), 3),
        ];
      }),
    ));
  } finally {
    await Promise.all(helpers.reverse().map((h) => h.stop()));
  }
}
