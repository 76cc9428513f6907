// The front door of each port, against hostile peers: half-sent requests, floods from one address,
// forged peer headers, and (in a subprocess with a small descriptor limit) descriptor exhaustion.

import assert from "node:assert/strict";
import net from "node:net";
import { connectionBudget, rewriteHead } from "../lib/transport/guard.ts";
import { bodyFraming } from "../lib/transport/_body_framing.ts";
import { RequesterClient } from "../lib/requester/requester_client.ts";
import { RawPeer, startTestServer, startWorker, waitFor } from "./_helpers.ts";
import { SERVER_LOOPBACK_ARGS } from "./_procs.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** A raw TCP connection from `localAddress` (any 127.x.y.z works on Linux). */
function tcp(port: number, localAddress = "127.0.0.1"): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port, localAddress });
    socket.once("connect", () => resolve(socket));
    socket.once("error", reject);
  });
}

/** Everything the peer reads until the server closes, bounded. */
function readAll(socket: net.Socket, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`Server did not close within ${timeoutMs} ms: ${text}`));
    }, timeoutMs);
    socket.on("data", (d: Uint8Array) => text += new TextDecoder().decode(d));
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(text);
    });
  });
}

function destroyAll(sockets: net.Socket[]): Promise<void> {
  return Promise.all(sockets.map((s) =>
    new Promise<void>((resolve) => {
      if (s.destroyed) return resolve();
      s.once("close", () => resolve());
      s.destroy();
    })
  )).then(() => {});
}

Deno.test("guard - a request head that never completes is answered 408 and closed, by the header timeout (not the body timeout)", async () => {
  // The body timeout is far past the read's bound: a header timeout that took its value fails.
  await using server = startTestServer({
    headerTimeoutMs: 100,
    bodyTimeoutMs: 3_600_000,
  });
  const socket = await tcp(server.requesterPort);
  socket.write("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websock");
  const text = await readAll(socket);
  assert.match(text, /^HTTP\/1\.1 408 Request Timeout/);
  assert.equal(server.guardStats()!.requester.header_timeouts, 1);
  assert.equal(server.guardStats()!.requester.open, 0);
});

const encoder = new TextEncoder();

/** A raw Deno TCP connection that has sent `text`. */
async function sendRaw(port: number, text: string): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(encoder.encode(text));
  return conn;
}

/** Everything a raw Deno connection reads until the server closes it, bounded. */
async function readUntilClosed(conn: Deno.Conn, ms = 5000): Promise<string> {
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    conn.close();
  }, ms);
  const decoder = new TextDecoder();
  const buffer = new Uint8Array(4096);
  let text = "";
  try {
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      text += decoder.decode(buffer.subarray(0, n), { stream: true });
    }
  } catch (error) {
    if (!timedOut) throw error;
  } finally {
    clearTimeout(timer);
  }
  if (timedOut) {
    throw new Error(`Server did not close within ${ms} ms: ${text}`);
  }
  conn.close();
  return text;
}

Deno.test("guard - a request body not all in within the body timeout is answered 408 and closed", async () => {
  await using server = startTestServer({
    bodyTimeoutMs: 150,
    headerTimeoutMs: 60_000,
  });
  const port = server.requesterPort;
  // A head with content-length and part of the body; the rest never comes.
  const stalled = await sendRaw(
    port,
    "POST /v1/request HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n" +
      'content-length: 100\r\n\r\n{"command": "get_time", ',
  );
  // A chunked body: one chunk, and no last chunk.
  const chunked = await sendRaw(
    port,
    "POST /v1/markets HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n" +
      "5\r\n[{}, \r\n",
  );
  // A body that keeps dribbling, a byte every 20 ms: the bound is on the whole body.
  const dribbled = await sendRaw(
    port,
    "POST /v1/request HTTP/1.1\r\nHost: x\r\ncontent-length: 1000\r\n\r\n{",
  );
  let dribbling = true;
  const dribble = (async () => {
    while (dribbling) {
      await new Promise((r) => setTimeout(r, 20));
      await dribbled.write(encoder.encode(" ")).catch(() => dribbling = false);
    }
  })();
  // A path that answers without reading the body: closed all the same, without a 408.
  const early = await sendRaw(
    port,
    "POST /health HTTP/1.1\r\nHost: x\r\ncontent-length: 1000000\r\n\r\n{",
  );
  const started = performance.now();
  const [a, b, c, d] = await Promise.all(
    [stalled, chunked, dribbled, early].map((conn) => readUntilClosed(conn)),
  );
  dribbling = false;
  await dribble;
  const elapsed = performance.now() - started;
  for (const text of [a, b, c]) {
    assert.match(text, /^HTTP\/1\.1 408 Request Timeout\r\n/);
    assert.match(
      text,
      /\r\n\r\nRequest body timeout: the body did not arrive whole within 0\.15 s\n$/,
    );
  }
  assert.match(d, /^HTTP\/1\.1 426 /);
  assert.doesNotMatch(d, /408/);
  assert.ok(elapsed < 3000, `closed after ${Math.round(elapsed)} ms`);
  assert.equal(server.guardStats()!.requester.body_timeouts, 4);
  assert.equal(server.guardStats()!.requester.header_timeouts, 0);
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`))
    .text();
  assert.match(
    metrics,
    /^switchyard_connection_refusals_total\{port="requester",reason="body_timeout"\} 4$/m,
  );
  await waitFor(() => server.guardStats()!.requester.open === 0);
});

Deno.test("guard - a whole body is served however long the answer takes past the body timeout", async () => {
  await using server = startTestServer({ bodyTimeoutMs: 100 });
  await using _worker = await startWorker(server, {
    actions: {
      slow: () => new Promise((r) => setTimeout(() => r("late"), 400)),
    },
  });
  const port = server.requesterPort;
  const frame = '{"command": "slow"}';
  const plain = await sendRaw(
    port,
    `POST /v1/request HTTP/1.1\r\nHost: x\r\ncontent-length: ${frame.length}\r\n\r\n${frame}`,
  );
  // Chunked, split at awkward places, with an extension and a trailer.
  const chunkedText =
    "POST /v1/request HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n" +
    `3;ext=1\r\n${frame.slice(0, 3)}\r\n${(frame.length - 3).toString(16)}\r\n${
      frame.slice(3)
    }\r\n0\r\nx-trailer: 1\r\n\r\n`;
  const chunked = await sendRaw(port, chunkedText.slice(0, 80));
  await chunked.write(encoder.encode(chunkedText.slice(80)));
  for (
    const text of await Promise.all(
      [plain, chunked].map((c) => readUntilClosed(c)),
    )
  ) {
    assert.match(text, /^HTTP\/1\.1 200 /);
    assert.match(text, /"data":"late"/);
  }
  assert.equal(server.guardStats()!.requester.body_timeouts, 0);
});

Deno.test("bodyFraming() follows content-length and chunked bodies fed a byte at a time", () => {
  const feedBytes = (head: string, body: string) => {
    const framing = bodyFraming(head)!;
    const bytes = encoder.encode(body);
    const done: number[] = [];
    for (let i = 0; i < bytes.length; i++) {
      if (framing.feed(bytes.subarray(i, i + 1))) done.push(i);
    }
    return done[0];
  };
  const chunkedBody = "4\r\nWiki\r\n5;a=b\r\npedia\r\n0\r\nT: 1\r\n\r\n";
  assert.equal(
    feedBytes("POST / HTTP/1.1\r\nTransfer-Encoding: chunked", chunkedBody),
    chunkedBody.length - 1,
  );
  assert.equal(
    feedBytes("POST / HTTP/1.1\r\nContent-Length: 5", "hello, more"),
    4,
  );
  // Chunked wins over a length; no body, another coding, a bad length: nothing to follow.
  assert.equal(
    feedBytes(
      "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked",
      "0\r\n\r\n",
    ),
    4,
  );
  assert.equal(bodyFraming("GET / HTTP/1.1\r\nHost: x"), undefined);
  assert.equal(bodyFraming("POST / HTTP/1.1\r\nContent-Length: 0"), undefined);
  assert.equal(
    bodyFraming("POST / HTTP/1.1\r\nTransfer-Encoding: gzip"),
    undefined,
  );
  assert.equal(bodyFraming("POST / HTTP/1.1\r\nContent-Length: -1"), undefined);
  // A malformed chunk size never completes: the body timeout ends it.
  const broken = bodyFraming("POST / HTTP/1.1\r\nTransfer-Encoding: chunked")!;
  assert.equal(broken.feed(encoder.encode("zz\r\n0\r\n\r\n")), false);
});

Deno.test("guard - an oversized request head is answered 431", async () => {
  await using server = startTestServer();
  const socket = await tcp(server.port);
  socket.write(`GET / HTTP/1.1\r\nX-Pad: ${"a".repeat(20_000)}`);
  assert.match(await readAll(socket), /^HTTP\/1\.1 431/);
  assert.equal(server.guardStats()!.worker.oversized_heads, 1);
});

Deno.test("guard - an address past its limit gets 429, and another address is still served", async () => {
  await using server = startTestServer({ maxPerAddress: 3 });
  const held = await Promise.all(
    [1, 2, 3].map(() => tcp(server.requesterPort, "127.0.0.2")),
  );
  try {
    for (const s of held) s.write("GET / HTTP/1.1\r\n");
    await waitFor(() => server.guardStats()!.requester.open === 3);
    const extra = await tcp(server.requesterPort, "127.0.0.2");
    const text = await readAll(extra);
    assert.match(text, /^HTTP\/1\.1 429/);
    assert.match(text, /Too many connections from 127\.0\.0\.2 \(limit 3\)/);
    // The limit is the address's, not everyone's.
    const client = new RequesterClient(server.requesterUrl);
    try {
      await client.connect();
      const answer = await client.request("get_time");
      assert.equal(answer.processed_by, "server");
    } finally {
      await client.close();
    }
    assert.equal(server.guardStats()!.requester.refused_per_address, 1);
  } finally {
    await destroyAll(held);
  }
});

Deno.test("guard - a full port gives up the oldest half-sent request for a new connection", async () => {
  await using server = startTestServer({
    maxOpenConnections: 4,
    headerTimeoutMs: 60_000,
  });
  const partial = [];
  for (let i = 0; i < 4; i++) {
    const s = await tcp(server.requesterPort, `127.0.0.${10 + i}`);
    s.write("GET / HTTP/1.1\r\n");
    partial.push(s);
    await waitFor(() => server.guardStats()!.requester.open === i + 1);
  }
  const oldest = readAll(partial[0]);
  try {
    const client = new RequesterClient(server.requesterUrl);
    try {
      await client.connect();
      assert.equal(
        (await client.request("get_time")).processed_by,
        "server",
      );
    } finally {
      await client.close();
    }
    assert.match(await oldest, /^HTTP\/1\.1 503/);
    assert.equal(server.guardStats()!.requester.evicted, 1);
  } finally {
    await destroyAll(partial);
  }
});

Deno.test("guard - a forged peer header does not change the address the server sees", async () => {
  await using server = startTestServer();
  const peer = await RawPeer.open(server.workerUrl, {
    "x-switchyard-peer": "guess 6.6.6.6:66",
  });
  try {
    await peer.envelope("connect");
    await waitFor(() => server.broker.workers().length === 1);
    assert.match(server.broker.workers()[0].address, /^127\.0\.0\.1:\d+$/);
  } finally {
    await peer.close();
  }
  const head = rewriteHead(
    "GET / HTTP/1.1\r\nX-Switchyard-Peer: s 1.2.3.4:5\r\nConnection: keep-alive",
    "s",
    "9.9.9.9:9",
  );
  assert.equal(
    head,
    "GET / HTTP/1.1\r\nConnection: close\r\nx-switchyard-peer: s 9.9.9.9:9\r\n\r\n",
  );
});

Deno.test("guard - the connection budget follows the descriptor limit", () => {
  assert.equal(connectionBudget(1024), 160);
  assert.equal(connectionBudget(undefined), 10_000);
  assert.equal(connectionBudget(1_000_000), 10_000);
  assert.equal(connectionBudget(10), 8);
});

/** `server.ts` under `ulimit -n`, with both ports' numbers read from its log. */
async function startLimitedServer(fdLimit: number, args: string[]) {
  const child = new Deno.Command("bash", {
    args: [
      "-c",
      `ulimit -n ${fdLimit} && exec "$0" run --allow-net --allow-read --allow-env --allow-sys server.ts "$@"`,
      Deno.execPath(),
      ...SERVER_LOOPBACK_ARGS,
      "--no-console",
      ...args,
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const lines: string[] = [];
  const collected = (async () => {
    let buffer = "";
    for await (
      const chunk of child.stderr.pipeThrough(new TextDecoderStream())
    ) {
      buffer += chunk;
      let i;
      while ((i = buffer.indexOf("\n")) >= 0) {
        lines.push(buffer.slice(0, i));
        buffer = buffer.slice(i + 1);
      }
    }
  })();
  try {
    await waitFor(
      () => lines.some((l) => /Requester port listening/.test(l)),
      "the server to listen",
      20_000,
    );
  } catch (error) {
    child.kill("SIGKILL");
    await child.status;
    await collected;
    throw error;
  }
  const port = (which: string) =>
    Number(
      lines.find((l) => l.includes(`${which} port listening`))!.match(
        /:(\d+)\s*$/,
      )![1],
    );
  return {
    child,
    lines,
    workerPort: port("Worker"),
    requesterPort: port("Requester"),
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch {
        // Gone already.
      }
      const status = await child.status;
      await collected;
      return status;
    },
  };
}

/** A WebSocket handshake on a raw socket that then stays silent: an idle upgraded connection. */
async function openIdleSocket(
  port: number,
  localAddress: string,
): Promise<net.Socket> {
  const socket = await tcp(port, localAddress);
  socket.on("error", () => {});
  const key = btoa(
    String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))),
  );
  socket.write(
    `GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  );
  return await new Promise((resolve, reject) => {
    socket.once("data", (d: Uint8Array) => {
      const text = new TextDecoder().decode(d);
      if (text.startsWith("HTTP/1.1 101")) resolve(socket);
      else {
        socket.destroy();
        reject(new Error(text.split("\r\n")[0]));
      }
    });
    socket.once("close", () => reject(new Error("closed")));
  });
}

Deno.test({
  name:
    "guard - 500 half-sent requests and 700 idle sockets under ulimit -n 1024 do not stop the server or starve a requester",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const server = await startLimitedServer(1024, []);
    const partial: net.Socket[] = [];
    const idle: net.Socket[] = [];
    try {
      // Five addresses of 100 half-sent requests each, seven of 100 idle WebSockets each.
      for (let a = 0; a < 5; a++) {
        const batch = await Promise.allSettled(
          Array.from(
            { length: 100 },
            () => tcp(server.requesterPort, `127.0.1.${a + 1}`),
          ),
        );
        for (const r of batch) {
          if (r.status === "fulfilled") {
            r.value.on("error", () => {});
            r.value.write("GET / HTTP/1.1\r\nHost: x\r\n");
            partial.push(r.value);
          }
        }
      }
      for (let a = 0; a < 7; a++) {
        const batch = await Promise.allSettled(
          Array.from(
            { length: 100 },
            () => openIdleSocket(server.requesterPort, `127.0.2.${a + 1}`),
          ),
        );
        for (const r of batch) {
          if (r.status === "fulfilled") idle.push(r.value);
        }
      }
      // A good requester from its own address is served.
      const started = performance.now();
      const client = new RequesterClient(
        `ws://127.0.0.1:${server.requesterPort}`,
      );
      try {
        await client.connect();
        const answer = await client.request("get_time", {}, { timeout: 10 });
        assert.equal(answer.processed_by, "server");
        console.log(
          `guard: with ${partial.length} half-sent requests and ${idle.length} idle sockets ` +
            `opened, a new requester connected and was answered in ${
              Math.round(performance.now() - started)
            } ms`,
        );
      } finally {
        await client.close();
      }
    } finally {
      await destroyAll([...idle, ...partial]);
      const status = await server.stop();
      assert.equal(status.code, 0, server.lines.join("\n"));
    }
    // One summary line for all the refusals, not one per connection.
    const summaries = server.lines.filter((l) =>
      /Requester port refused or closed connections/.test(l)
    );
    // Hundreds of refusals, a handful of lines: one per 10 s interval and one at the end.
    assert.ok(
      summaries.length >= 1 && summaries.length < 10,
      server.lines.join("\n"),
    );
    assert.match(
      summaries.join("\n"),
      /closed to make room for other addresses|over the connection limit/,
    );
  },
});

Deno.test({
  name:
    "guard - running out of descriptors (EMFILE) is survived: the port serves again once they are back",
  ignore: Deno.build.os !== "linux",
  async fn() {
    // Limits set past what 128 descriptors allow, so accept() itself fails.
    const server = await startLimitedServer(128, [
      "--max-open-connections",
      "1000",
      "--max-per-address",
      "1000",
      "--header-timeout",
      "1",
    ]);
    const partial: net.Socket[] = [];
    try {
      const batch = await Promise.allSettled(
        Array.from({ length: 300 }, () => tcp(server.requesterPort)),
      );
      for (const r of batch) {
        if (r.status === "fulfilled") {
          r.value.on("error", () => {});
          r.value.write("GET / HTTP/1.1\r\n");
          partial.push(r.value);
        }
      }
      // The half-sent requests time out, descriptors come back, and the port accepts again.
      const client = new RequesterClient(
        `ws://127.0.0.1:${server.requesterPort}`,
        { handshakeTimeoutMs: 20_000 },
      );
      try {
        await client.connect();
        assert.equal(
          (await client.request("get_time", {}, { timeout: 5 })).processed_by,
          "server",
        );
      } finally {
        await client.close();
      }
    } finally {
      await destroyAll(partial);
      const status = await server.stop();
      assert.equal(status.code, 0, server.lines.join("\n"));
    }
    assert.match(
      server.lines.join("\n"),
      /failed accepts \(.*Too many open files/,
    );
  },
});

Deno.test("guard - a head the ports would not take for an upgrade (two Upgrade headers) is relayed as plain HTTP, and its stream answers", async () => {
  await using server = startTestServer();
  const conn = await Deno.connect({
    hostname: "127.0.0.1",
    port: server.requesterPort,
  });
  try {
    await conn.write(
      new TextEncoder().encode(
        "GET /events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n",
      ),
    );
    const buffer = new Uint8Array(4096);
    const timer = setTimeout(() => conn.close(), 5000);
    const n = await conn.read(buffer).finally(() => clearTimeout(timer));
    const text = new TextDecoder().decode(buffer.subarray(0, n ?? 0));
    assert.match(text, /^HTTP\/1\.1 200/);
    assert.match(text, /text\/event-stream/);
  } finally {
    try {
      conn.close();
    } catch {
      // Closed by the timer.
    }
  }
});
