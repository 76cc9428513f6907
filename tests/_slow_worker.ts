// A worker process with one slow action, `sleep` `{ms}`, for shutdown tests:
// `deno run -A tests/_slow_worker.ts ws://127.0.0.1:PORT`. Stops gracefully on SIGTERM.

import { Worker } from "../lib/mod.ts";

const worker = new Worker({
  url: Deno.args[0] ?? "ws://127.0.0.1:8765",
  name: "slow-worker",
  backoff: { initialMs: 50, maxMs: 200 },
});
worker.registerAction(
  "sleep",
  (params, ctx) =>
    new Promise((resolve, reject) => {
      const ms = Number((params as { ms?: unknown })?.ms ?? 0);
      const timer = setTimeout(() => resolve({ slept: ms }), ms);
      ctx.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(ctx.signal.reason);
      }, { once: true });
    }),
);
worker.onConnected((id) => console.error(`slow worker connected as ${id}`));
Deno.addSignalListener(
  "SIGTERM",
  () => void worker.stop(2000).then(() => Deno.exit(0)),
);
await worker.start();
