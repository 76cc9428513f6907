import assert from "node:assert/strict";
import { ConnectionClosedError, RequestTimeoutError } from "../lib/errors.ts";
import { RequesterClient } from "../lib/requester/requester_client.ts";
import {
  answerOf,
  connectClient,
  openRawWorker,
  startTestServer,
  startWorker,
  waitFor,
  within,
} from "./_helpers.ts";

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
  await using client = await connectClient(fake.url);
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
});

Deno.test("requester client - connect() after a drop reconnects and requests work again", async () => {
  await using fake = startFakeServer((socket, request, connection) => {
    if (connection === 1) socket.close(1011, "first connection dies");
    else echo(socket, request);
  });
  await using client = await connectClient(fake.url);
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
});

Deno.test("requester client - a request in flight when the real server closes rejects or answers SHUTTING_DOWN, never hangs", async () => {
  await using server = startTestServer();
  const { peer } = await openRawWorker(server);
  await using client = await connectClient(server.requesterUrl);
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
  await within(peer.closed, "the worker's socket to close");
});

Deno.test("requester client - reconnects to a restarted server on the same port", async () => {
  await using first = startTestServer();
  const port = first.requesterPort;
  await using client = await connectClient(first.requesterUrl);
  await first.close();
  await assert.rejects(client.request("get_time"), ConnectionClosedError);
  await using second = startTestServer({ requesterPort: port });
  await using worker = await startWorker(second);
  await client.connect();
  const answer = await client.request("get_time");
  assert.equal(answer.success, true);
  await client.close();
  await worker.stop();
  await second.close();
});

Deno.test("requester client - close() rejects requests still in flight", async () => {
  await using fake = startFakeServer(() => {});
  await using client = await connectClient(fake.url);
  const pending = client.request("never");
  await client.close();
  await assert.rejects(pending, ConnectionClosedError);
});

Deno.test("requester client - gives up after the timeout plus grace when no answer comes", async () => {
  await using fake = startFakeServer(() => {});
  await using client = await connectClient(fake.url, { graceMs: 20 });
  await assert.rejects(
    client.request("never", {}, { timeout: 0.01 }),
    RequestTimeoutError,
  );
  assert.equal(client.inFlight, 0);
});

/** A fake server that holds every frame until the test answers it. */
function startHoldingServer() {
  const frames: { socket: WebSocket; request: Record<string, unknown> }[] = [];
  const fake = startFakeServer((socket, request) =>
    frames.push({ socket, request })
  );
  return Object.assign(fake, {
    frames,
    /** The `n`th frame received (from 1), once it has come. */
    async frame(n: number) {
      await waitFor(() => frames.length >= n, `frame ${n}`);
      return frames[n - 1];
    },
  });
}

Deno.test("requester client - an aborted id stays reserved until its late answer, which settles nothing", async () => {
  await using fake = startHoldingServer();
  const client = new RequesterClient(fake.url);
  try {
    await client.connect();
    const controller = new AbortController();
    const reason = new Error("changed my mind");
    const aborted = client.request("slow", { first: true }, {
      signal: controller.signal,
      requestId: "r1",
    });
    controller.abort(reason);
    await assert.rejects(within(aborted, "the abort"), (e) => e === reason);
    assert.equal(client.inFlight, 0);
    // Reusing the id now would let the first request's answer, still on its way, settle the
    // new one: refused.
    await assert.rejects(
      within(
        client.request("echo", { second: true }, { requestId: "r1" }),
        "the refusal",
      ),
      { name: "RangeError", message: /'r1' is still reserved/ },
    );
    const first = await fake.frame(1);
    echo(first.socket, first.request);
    // A request sent after the late answer is read after it too (one ordered connection).
    const probe = answerOf(client.request("probe", {}, { requestId: "probe" }));
    const probed = await fake.frame(2);
    echo(probed.socket, probed.request);
    await probe;
    // The late answer freed the id; a new request with it gets its own answer only.
    const again = answerOf(
      client.request("echo", { second: true }, { requestId: "r1" }),
    );
    const second = await fake.frame(3);
    assert.deepEqual(second.request.data, { second: true });
    echo(second.socket, second.request);
    assert.deepEqual((await again).data, {
      second: true,
    });
    assert.equal(fake.frames.length, 3, "no cancel frame unless asked for");
  } finally {
    await client.close();
  }
});

Deno.test("requester client - an aborted id is freed once the request's deadline has passed", async () => {
  await using fake = startHoldingServer();
  const client = new RequesterClient(fake.url, { graceMs: 20 });
  const stray: Promise<unknown>[] = [];
  try {
    await client.connect();
    const controller = new AbortController();
    const aborted = client.request("slow", {}, {
      signal: controller.signal,
      requestId: "r1",
      timeout: 0.03,
    });
    controller.abort(new Error("gone"));
    await assert.rejects(within(aborted, "the abort"), { message: "gone" });
    await assert.rejects(
      within(client.request("x", {}, { requestId: "r1" }), "the refusal"),
      RangeError,
    );
    // No answer ever comes; past 30 ms + 20 ms of grace the id is free again.
    let reused: Promise<unknown> | undefined;
    await waitFor(() => {
      const attempt = client.request("x", {}, { requestId: "r1" });
      attempt.catch(() => {});
      stray.push(attempt);
      if (client.inFlight === 0) return false;
      reused = attempt;
      return true;
    }, "the id to be freed");
    assert.ok(reused);
    await fake.frame(2);
    assert.equal(fake.frames[1].request.request_id, "r1");
  } finally {
    await client.close();
    await Promise.allSettled(stray);
  }
});

Deno.test("requester client - a closed connection frees every reserved id", async () => {
  await using fake = startHoldingServer();
  const client = new RequesterClient(fake.url);
  try {
    await client.connect();
    const controller = new AbortController();
    const aborted = client.request("slow", {}, {
      signal: controller.signal,
      requestId: "r1",
    });
    controller.abort(new Error("gone"));
    await assert.rejects(within(aborted, "the abort"), { message: "gone" });
    await client.close();
    // The 300 s reservation timer is gone with the connection (the sanitizer would see it).
    await client.connect();
    const again = answerOf(
      client.request("echo", { n: 1 }, { requestId: "r1" }),
    );
    const frame = await fake.frame(2);
    echo(frame.socket, frame.request);
    assert.deepEqual((await again).data, { n: 1 });
  } finally {
    await client.close();
  }
});

Deno.test("requester client - with cancelOnAbort an abort sends a cancel frame, and the server's answer frees the id", async () => {
  await using fake = startHoldingServer();
  const client = new RequesterClient(fake.url, { cancelOnAbort: true });
  try {
    await client.connect();
    const controller = new AbortController();
    const aborted = client.request("slow", {}, {
      signal: controller.signal,
      requestId: "r1",
    });
    await fake.frame(1);
    controller.abort(new Error("gone"));
    await assert.rejects(within(aborted, "the abort"), { message: "gone" });
    const cancel = await fake.frame(2);
    assert.deepEqual(cancel.request, { request_id: "r1", cancel: true });
    cancel.socket.send(JSON.stringify({
      request_id: "r1",
      success: false,
      data: null,
      error: "Cancelled by the requester",
      error_code: "CANCELLED",
      processed_by: null,
    }));
    const probe = answerOf(client.request("probe", {}, { requestId: "probe" }));
    const probed = await fake.frame(3);
    echo(probed.socket, probed.request);
    await probe;
    const again = answerOf(
      client.request("echo", { n: 2 }, { requestId: "r1" }),
    );
    const frame = await fake.frame(4);
    echo(frame.socket, frame.request);
    assert.deepEqual((await again).data, { n: 2 });
  } finally {
    await client.close();
  }
});

Deno.test("requester client - refuses a request_id already in flight", async () => {
  await using fake = startFakeServer(() => {});
  await using client = await connectClient(fake.url);
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
