/**
 * Bench helper: the feature-less relay baseline. Two `Deno.serve` WebSocket ports (workers,
 * requesters), a Map of pending ids and round robin; nothing else: no queue, deadlines,
 * failover, validation, heartbeats or auth. What a broker costs before it promises anything.
 * Sockets use `Deno.upgradeWebSocket`'s defaults, as a minimal program would.
 * Prints `{"ready":true,"port":…,"requesterPort":…}` on stdout, exits on SIGTERM.
 *
 * @module
 */

if (import.meta.main) {
  const workers: WebSocket[] = [];
  const pending = new Map<number, { socket: WebSocket; requestId: unknown }>();
  let next = 0;
  let seq = 0;
  const workerPort = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onopen = () => workers.push(socket);
      socket.onclose = () => workers.splice(workers.indexOf(socket), 1);
      socket.onmessage = (event) => {
        const { id, result } = JSON.parse(event.data as string);
        const waiting = pending.get(id);
        if (waiting === undefined) return;
        pending.delete(id);
        waiting.socket.send(JSON.stringify({
          request_id: waiting.requestId,
          success: true,
          data: result,
          error: null,
          processed_by: "relay",
        }));
      };
      return response;
    },
  );
  const requesterPort = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (event) => {
        const frame = JSON.parse(event.data as string);
        if (workers.length === 0) {
          socket.send(JSON.stringify({
            request_id: frame.request_id,
            success: false,
            data: null,
            error: "No available workers",
          }));
          return;
        }
        const id = ++seq;
        pending.set(id, { socket, requestId: frame.request_id });
        workers[next++ % workers.length].send(
          JSON.stringify({ id, command: frame.command, data: frame.data }),
        );
      };
      return response;
    },
  );
  Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
  console.log(JSON.stringify({
    ready: true,
    port: workerPort.addr.port,
    requesterPort: requesterPort.addr.port,
  }));
}
