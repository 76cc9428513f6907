/**
 * Bench helper: the one-hop baseline. A bare `Deno.serve` + `Deno.upgradeWebSocket` server that
 * answers each requester-style frame directly, with a reply shaped and sized like the broker's.
 * Prints `{"ready":true,"port":…}` on stdout, exits on SIGTERM.
 *
 * @module
 */

import { payload, requestedSize } from "./_payload.ts";

/** Answers `{request_id, data: {size}}` with a broker-shaped answer carrying `size` bytes. */
export function echoAnswer(text: string): string {
  const frame = JSON.parse(text) as { request_id?: unknown; data?: unknown };
  return JSON.stringify({
    request_id: frame.request_id,
    success: true,
    data: payload(requestedSize(frame.data)),
    error: null,
    processed_by: "echo",
  });
}

if (import.meta.main) {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (event) => socket.send(echoAnswer(String(event.data)));
      return response;
    },
  );
  Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
  console.log(JSON.stringify({ ready: true, port: server.addr.port }));
}
