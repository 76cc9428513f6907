/**
 * Bench helper: a Switchyard server on 127.0.0.1 that joins a cluster. Args: `--cluster URL
 * --cluster-name C --name NAME [--port N --requester-port N]`. Prints `{"ready":true,"port":…,"requesterPort":…}`
 * once it has joined, closes on SIGTERM.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { startServer } from "../lib/broker/server.ts";

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      cluster: { type: "string" },
      name: { type: "string", default: "s" },
      "cluster-name": { type: "string", default: "bench" },
      port: { type: "string", default: "0" },
      "requester-port": { type: "string", default: "0" },
    },
  });
  const server = startServer({
    host: "127.0.0.1",
    port: Number(values.port),
    requesterPort: Number(values["requester-port"]),
    cluster: values.cluster
      ? {
        servers: [values.cluster],
        name: values["cluster-name"],
        serverName: values.name,
      }
      : undefined,
  });
  const stop = async () => {
    await server.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  if (server.cluster) await (await server.cluster).start();
  console.log(JSON.stringify({
    ready: true,
    port: server.port,
    requesterPort: server.requesterPort,
  }));
}
