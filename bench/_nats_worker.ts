/**
 * Bench helper: a NATS request-reply worker, the way a Node service would be written with the
 * official client: a queue-group subscription on `echo` that answers each requester-style frame
 * with a broker-shaped answer (`echoAnswer`). Prints `{"ready":true}` once subscribed, exits on
 * SIGTERM.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { connect } from "npm:@nats-io/transport-node@3.4.0";
import { echoAnswer } from "./_echo_server.ts";

/** The subject and queue group of the NATS baseline. */
export const NATS_SUBJECT = "echo";

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { url: { type: "string" } },
  });
  if (!values.url) throw new TypeError("Missing --url");
  const nc = await connect({ servers: values.url });
  nc.subscribe(NATS_SUBJECT, {
    queue: "workers",
    callback: (error, msg) => {
      if (error === null) msg.respond(echoAnswer(msg.string()));
    },
  });
  await nc.flush();
  Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
  console.log(JSON.stringify({ ready: true }));
}
