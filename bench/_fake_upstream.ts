/**
 * Bench helper: the fake Eastmoney upstream (synthetic data for any valid code) in its own
 * process, so that building and serialising its answers does not share the bench's event loop.
 * Prints `{"ready":true,"url":…}` on stdout, exits on SIGTERM.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { startFakeEastmoney } from "../tests/_fake_eastmoney.ts";

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      "latency-ms": { type: "string", default: "20" },
      end: { type: "string" },
    },
  });
  const fake = await startFakeEastmoney({
    synthetic: true,
    syntheticEnd: values.end,
    latencyMs: Number(values["latency-ms"]),
  });
  Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
  console.log(JSON.stringify({ ready: true, url: fake.url }));
}
