/**
 * Bench helper for `metrics_cost.ts`: `_server.ts` with the request path's metrics switched by
 * `--metrics`: `on` (as shipped), `off` (recording skipped), `prom` (recorded with prom-client's
 * own `Counter.inc()` and `Histogram.observe()` instead).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Counter, Histogram, Registry } from "npm:prom-client@15.1.3";
import { LATENCY_BUCKETS } from "../lib/broker/metrics.ts";
import { startServer } from "../lib/broker/server.ts";

/**
 * Records one request the way prom-client's own API does: `Counter.inc()` and
 * `Histogram.observe()`, per call. The bench's yardstick for what our plain counters save.
 */
export function promRecorder(): (
  command: string,
  code: string | undefined,
  ms: number,
) => void {
  const registers = [new Registry()];
  const requests = new Counter({
    name: "requests_total",
    help: "requests",
    labelNames: ["command", "outcome"],
    registers,
  });
  const latency = new Histogram({
    name: "request_duration_seconds",
    help: "latency",
    labelNames: ["command"],
    buckets: [...LATENCY_BUCKETS],
    registers,
  });
  return (command, code, ms) => {
    requests.inc({ command, outcome: code ?? "success" });
    latency.observe({ command }, ms / 1000);
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { metrics: { type: "string", default: "on" } },
  });
  const server = startServer({ host: "127.0.0.1", port: 0, requesterPort: 0 });
  const metrics = server.broker.metrics as { request: (...a: never[]) => void };
  if (values.metrics === "off") {
    metrics.request = () => {};
  } else if (values.metrics === "prom") {
    metrics.request = promRecorder() as never;
  }
  const stop = async () => {
    await server.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  console.log(JSON.stringify({
    ready: true,
    port: server.port,
    requesterPort: server.requesterPort,
  }));
}
