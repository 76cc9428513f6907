/**
 * Bench helper: a worker of the relay baseline on npm `ws` (TCP_NODELAY, like the lib's
 * workers): answers `{id, command, data}` with `{id, result}`, `result` being the echo payload.
 * Prints `{"ready":true}` once connected, exits on SIGTERM.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { WebSocket } from "../lib/transport/_ws.ts";
import { payload, requestedSize } from "./_payload.ts";

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { url: { type: "string" } },
  });
  if (!values.url) throw new TypeError("Missing --url");
  const socket = new WebSocket(values.url, { perMessageDeflate: false });
  const decoder = new TextDecoder();
  socket.on("message", (data: Uint8Array) => {
    const { id, data: params } = JSON.parse(decoder.decode(data));
    socket.send(
      JSON.stringify({ id, result: payload(requestedSize(params)) }),
    );
  });
  await new Promise<void>((resolve, reject) => {
    socket.on("open", resolve);
    socket.on("error", reject);
  });
  Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
  console.log(JSON.stringify({ ready: true }));
}
