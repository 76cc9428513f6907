/**
 * Bench helper: a Switchyard server on 127.0.0.1 with ports picked by the OS; `--no-guard`
 * serves without the guard in front of each port (to show what the guard costs);
 * `--worker-token T` takes only workers that present T. Prints
 * `{"ready":true,"port":…,"requesterPort":…}` on stdout, closes on SIGTERM.
 *
 * @module
 */

import { startServer } from "../lib/broker/server.ts";

if (import.meta.main) {
  const token = Deno.args.indexOf("--worker-token");
  const server = startServer({
    host: "127.0.0.1",
    port: 0,
    requesterPort: 0,
    guard: !Deno.args.includes("--no-guard"),
    workerToken: token >= 0 ? Deno.args[token + 1] : undefined,
  });
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
