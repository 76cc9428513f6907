import assert from "node:assert/strict";
import { ConnectionClosedError, RequestTimeoutError } from "../lib/errors.ts";
import { RequesterClient } from "../lib/requester_client.ts";
import { openRawWorker, startTestServer, startWorker } from "./_helpers.ts";

type Behaviour = (
  socket: WebSocket,
  request: Record<string, unknown>,
  connection: number,
) => void;

/**
 * A scripted requester-port server: every request frame goes to `behaviour`, with the number of
 * the connection it came on (1 for the first).
 */
function startFakeServer(behaviour: Behaviour) {
  const sockets = new Set<WebSocket>();
  let connections = 0;
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: () => {},
  }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req);
    const connection = ++connections;
    socket.onopen = () => sockets.add(socket);
    socket.onclose = () => sockets.delete(socket);
    socket.onmessage = (event) =>
      behaviour(socket, JSON.parse(event.data), connection);
    return response;
  });
  return {
    url: `ws://127.0.0.1:${server.addr.port}`,
    get connections() {
      return connections;
    },
    async [Symbol.asyncDispose]() {
      await Promise.all(
        [...sockets].map((socket) =>
          new Promise<void>((resolve) => {
            socket.addEventListener("close", () => resolve(), { once: true });
            socket.close();
          })
        ),
      );
      await server.shutdown();
    },
  };
}

function echo(socket: WebSocket, request: Record<string, unknown>) {
  socket.send(JSON.stringify({
    request_id: request.request_id,
    success: true,
    data: request.data,
    error: null,
    processed_by: "fake",
  }));
}

Deno.test("requester client - in-flight requests reject with ConnectionClosedError when the server closes the connection", async () => {
  await using fake = startFakeServer((socket) =>
    socket.close(1011, "going away")
  );
  const client = new RequesterClient(fake.url);
  await client.connect();
  const results = await Promise.allSettled([
    client.request("a"),
    client.request("b"),
  ]);
  for (const result of results) {
    assert.equal(result.status, "rejected");
    assert.ok(
      result.reason instanceof ConnectionClosedError,
      String(result.reason),
    );
    assert.match(
      result.reason.message,
      /closed \(code \d+\) before the answer came$/,
    );
  }
  assert.equal(client.connected, false);
  assert.equal(client.inFlight, 0);
  await client.close();
});

Deno.test("requester client - connect() after a drop reconnects and requests work again", async () => {
  await using fake = startFakeServer((socket, request, connection) => {
    if (connection === 1) socket.close(1011, "first connection dies");
    else echo(socket, request);
  });
  const client = new RequesterClient(fake.url);
  await client.connect();
  await assert.rejects(client.request("x"), ConnectionClosedError);
  await assert.rejects(
    client.request("x"),
    (e) =>
      e instanceof ConnectionClosedError && /Not connected/.test(e.message),
  );
  await client.connect();
  assert.equal(client.connected, true);
  const answer = await client.request("echo", { n: 7 });
  assert.deepEqual(answer.data, { n: 7 });
  assert.equal(fake.connections, 2);
  await client.close();
});

Deno.test("requester client - a request in flight when the real server closes rejects or answers SHUTTING_DOWN, never hangs", async () => {
  const server = startTestServer();
  const { peer } = await openRawWorker(server);
  const client = new RequesterClient(server.requesterUrl);
  await client.connect();
  const pending = client.request("job").then(
    (answer) => ({ answer }),
    (error) => ({ error }),
  );
  await peer.envelope("request");
  await server.close();
  const outcome = await pending;
  if ("error" in outcome) {
    assert.ok(outcome.error instanceof ConnectionClosedError);
  } else assert.equal(outcome.answer.error_code, "SHUTTING_DOWN");
  await peer.closed;
  await client.close();
});

Deno.test("requester client - reconnects to a restarted server on the same port", async () => {
  const first = startTestServer();
  const port = first.requesterPort;
  const client = new RequesterClient(first.requesterUrl);
  await client.connect();
  await first.close();
  await assert.rejects(client.request("get_time"), ConnectionClosedError);
  const second = startTestServer({ requesterPort: port });
  const worker = await startWorker(second);
  await client.connect();
  const answer = await client.request("get_time");
  assert.equal(answer.success, true);
  await client.close();
  await worker.stop();
  await second.close();
});

Deno.test("requester client - close() rejects requests still in flight", async () => {
  await using fake = startFakeServer(() => {});
  const client = new RequesterClient(fake.url);
  await client.connect();
  const pending = client.request("never");
  await client.close();
  await assert.rejects(pending, ConnectionClosedError);
});

Deno.test("requester client - gives up after the timeout plus grace when no answer comes", async () => {
  await using fake = startFakeServer(() => {});
  const client = new RequesterClient(fake.url, { graceMs: 20 });
  await client.connect();
  await assert.rejects(
    client.request("never", {}, { timeout: 0.01 }),
    RequestTimeoutError,
  );
  assert.equal(client.inFlight, 0);
  await client.close();
});

Deno.test("requester client - an aborted request rejects with the signal's reason and its late answer is ignored", async () => {
  const answers: (() => void)[] = [];
  await using fake = startFakeServer((socket, request) =>
    answers.push(() => echo(socket, request))
  );
  const client = new RequesterClient(fake.url);
  await client.connect();
  const controller = new AbortController();
  const reason = new Error("changed my mind");
  const pending = client.request("slow", {}, {
    signal: controller.signal,
    requestId: "r1",
  });
  controller.abort(reason);
  await assert.rejects(pending, (e) => e === reason);
  assert.equal(client.inFlight, 0);
  while (answers.length === 0) await new Promise((r) => setTimeout(r, 10));
  answers[0]();
  // The same id may be used again, and only its own answer settles it.
  const again = client.request("echo", { second: true }, { requestId: "r2" });
  while (answers.length < 2) await new Promise((r) => setTimeout(r, 10));
  answers[1]();
  assert.deepEqual((await again).data, { second: true });
  await client.close();
});

Deno.test("requester client - refuses a request_id already in flight", async () => {
  await using fake = startFakeServer(() => {});
  const client = new RequesterClient(fake.url);
  await client.connect();
  const first = client.request("x", {}, { requestId: "same" });
  await assert.rejects(
    client.request("x", {}, { requestId: "same" }),
    RangeError,
  );
  await client.close();
  await assert.rejects(first, ConnectionClosedError);
});

Deno.test("requester client - connect() rejects with a clear reason when nothing listens", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const client = new RequesterClient(`ws://127.0.0.1:${port}`);
  await assert.rejects(
    client.connect(),
    new RegExp(`^Error: Cannot connect to ws://127.0.0.1:${port}`),
  );
});
