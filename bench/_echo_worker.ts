/**
 * Bench helper: a lib `Worker` with an `echo` action (`{size}` → a string of `size` bytes;
 * `--action` names it otherwise) and, with `--eastmoney URL`, the market actions against that
 * upstream. Prints `{"ready":true}` once registered, stops on SIGTERM.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Worker } from "../lib/worker/worker_client.ts";
import { createMarketService } from "../lib/market/mod.ts";
import { payload, requestedSize } from "./_payload.ts";

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      url: { type: "string" },
      name: { type: "string" },
      concurrency: { type: "string", default: "32" },
      // The echo action's name, so that two workers can be told apart by what they offer.
      action: { type: "string", default: "echo" },
      eastmoney: { type: "string" },
      "rate-limit": { type: "string", default: "20" },
    },
  });
  if (!values.url) throw new TypeError("Missing --url");
  const worker = new Worker({
    url: values.url,
    name: values.name,
    concurrency: Number(values.concurrency),
    backoff: { initialMs: 100, maxMs: 1000 },
  });
  worker.registerAction(
    values.action,
    (params) => payload(requestedSize(params)),
  );
  const market = values.eastmoney
    ? createMarketService({
      providers: ["eastmoney"],
      eastmoneyUrl: values.eastmoney,
      rateLimit: Number(values["rate-limit"]),
      hostConcurrency: 2,
    })
    : undefined;
  for (const [name, handler] of Object.entries(market?.actions() ?? {})) {
    worker.registerAction(name, handler);
  }
  const stop = async () => {
    await worker.stop(1000);
    market?.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  void worker.start();
  await worker.ready();
  console.log(JSON.stringify({ ready: true, name: worker.name }));
}
