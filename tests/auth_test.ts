// Tokens per port: who may connect where, and that a token never leaks into the logs.

import assert from "node:assert/strict";
import net from "node:net";
import { resetSync } from "npm:@logtape/logtape@2.4.2";
import { setupLogging } from "../lib/log.ts";
import { RequesterClient } from "../lib/requester/requester_client.ts";
import { Worker } from "../lib/worker/worker_client.ts";
import {
  RawPeer,
  releasing,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";

const WORKER_TOKEN = "wtok-3f9a1c-secret";
const REQUESTER_TOKEN = "rtok-7b2e4d-secret";

// What a browser or any WebSocket client sends to open a connection.
const UPGRADE_HEADERS = {
  upgrade: "websocket",
  connection: "Upgrade",
  "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
  "sec-websocket-version": "13",
};

function tokenServer() {
  return startTestServer({
    workerToken: WORKER_TOKEN,
    requesterToken: REQUESTER_TOKEN,
  });
}

/** The HTTP status the port gives a WebSocket handshake with `headers` (no upgrade happens). */
async function handshakeStatus(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; text: string; challenge: string | null }> {
  const res = await fetch(url.replace(/^ws/, "http"), {
    headers: { ...UPGRADE_HEADERS, ...headers },
  });
  const text = await res.text();
  return {
    status: res.status,
    text,
    challenge: res.headers.get("www-authenticate"),
  };
}

Deno.test("auth - a handshake without a token gets HTTP 401 before the upgrade, on both ports", async () => {
  await using server = tokenServer();
  for (const url of [server.workerUrl, server.requesterUrl]) {
    const res = await handshakeStatus(url);
    assert.equal(res.status, 401, url);
    assert.equal(res.challenge, "Bearer");
    assert.match(res.text, /Unauthorized: missing or invalid token/);
  }
  assert.equal(server.broker.stats().workers, 0);
  assert.equal(server.broker.stats().requesters, 0);
});

Deno.test("auth - wrong tokens and the other port's token are refused", async () => {
  await using server = tokenServer();
  const cases: [string, Record<string, string>][] = [
    [server.workerUrl, { authorization: "Bearer nope" }],
    [server.workerUrl, { authorization: `Bearer ${REQUESTER_TOKEN}` }],
    [server.workerUrl, { authorization: `Basic ${WORKER_TOKEN}` }],
    [server.workerUrl, { authorization: `Bearer ${WORKER_TOKEN}x` }],
    [server.workerUrl, { authorization: "Bearer" }],
    [`${server.workerUrl}/?token=`, {}],
    [server.requesterUrl, { authorization: `Bearer ${WORKER_TOKEN}` }],
    [`${server.requesterUrl}/?token=${WORKER_TOKEN}`, {}],
    [`${server.requesterUrl}/?token=${REQUESTER_TOKEN.slice(0, -1)}`, {}],
  ];
  for (const [url, headers] of cases) {
    const res = await handshakeStatus(url, headers);
    assert.equal(res.status, 401, `${url} ${JSON.stringify(headers)}`);
  }
  // The clients say so in words.
  const wrong = new RequesterClient(server.requesterUrl, {
    token: WORKER_TOKEN,
  });
  await assert.rejects(
    wrong.connect(),
    /Cannot connect to ws:\/\/127\.0\.0\.1:\d+: unauthorized \(missing or wrong token\)/,
  );
  const none = new RequesterClient(server.requesterUrl);
  await assert.rejects(none.connect(), /unauthorized/);
  assert.equal(none.connected, false);
});

Deno.test("auth - a Bearer header and a ?token= query are both accepted", async () => {
  await using server = tokenServer();
  await using _worker = await startWorker(server, { token: WORKER_TOKEN });
  await using client = releasing(
    new RequesterClient(server.requesterUrl, { token: REQUESTER_TOKEN }),
    (c) => c.close(),
  );
  await using viaQuery = await RawPeer.open(
    `${server.requesterUrl}/?token=${encodeURIComponent(REQUESTER_TOKEN)}`,
  );
  await using workerViaQuery = await RawPeer.open(
    `${server.workerUrl}/?token=${WORKER_TOKEN}`,
  );
  await workerViaQuery.envelope("connect");
  // Registered for an action nobody asks for, so get_time goes to the real worker.
  workerViaQuery.sendEnvelope("connect", { name: "q", actions: ["noop"] });
  await waitFor(() => server.broker.workers().length === 2);
  await client.connect();
  const answer = await client.request("get_time");
  assert.equal(answer.success, true, answer.error ?? "");
  viaQuery.send({ request_id: "q1", command: "get_time" });
  const queried = await viaQuery.answer("q1");
  assert.equal(queried.success, true, queried.error);
  // Header checks are case-insensitive on the scheme, as RFC 6750 says.
  await using lower = await RawPeer.open(server.requesterUrl, {
    authorization: `bearer ${REQUESTER_TOKEN}`,
  });
  lower.send({ request_id: "l1", command: "get_time" });
  assert.equal((await lower.answer("l1")).success, true);
});

/** Paths of the leaves of `value` that are not numbers. */
function nonNumbers(value: unknown, path = "$"): string[] {
  if (typeof value === "number") return [];
  if (typeof value === "object" && value !== null && !Array.isArray(value)) {
    return Object.entries(value).flatMap(([k, v]) =>
      nonNumbers(v, `${path}.${k}`)
    );
  }
  return [`${path} = ${JSON.stringify(value)}`];
}

Deno.test("auth - /health answers without a token: it reveals only counts", async () => {
  await using server = tokenServer();
  {
    await using worker = await startWorker(server, {
      name: "payroll-host-7",
      token: WORKER_TOKEN,
    });
    await using client = releasing(
      new RequesterClient(server.requesterUrl, { token: REQUESTER_TOKEN }),
      (c) => c.close(),
    );
    await client.connect();
    const workerId = worker.status().client_id!;
    for (const port of [server.port, server.requesterPort]) {
      const res = await fetch(`http://127.0.0.1:${port}/health`);
      assert.equal(res.status, 200);
      const text = await res.text();
      const { status, port: name, version, ...counts } = JSON.parse(text);
      assert.equal(status, "ok");
      assert.ok(["worker", "requester"].includes(name));
      assert.equal(typeof version, "string");
      assert.deepEqual(nonNumbers(counts), [], "every other field is a count");
      assert.equal(counts.workers, 1);
      assert.equal(counts.requesters, 1);
      for (const secret of ["tok", "payroll", workerId, "127.0.0.1"]) {
        assert.equal(text.includes(secret), false, `${secret} in ${text}`);
      }
    }
  }
  // A plain GET elsewhere is not a way around the token either: no socket, no dashboard.
  const res = await fetch(`http://127.0.0.1:${server.requesterPort}/`);
  assert.equal(res.status, 401);
  assert.doesNotMatch(await res.text(), /<table/);
});

Deno.test("auth - tokens never appear in the logs, and a refused worker logs 'unauthorized'", async () => {
  const lines: string[] = [];
  setupLogging({ level: "debug", write: (line) => void lines.push(line) });
  try {
    await using server = tokenServer();
    // A worker with the wrong token keeps retrying and says why.
    await using refused = releasing(
      new Worker({
        url: server.workerUrl,
        name: "refused",
        token: `${WORKER_TOKEN}-old`,
        backoff: { initialMs: 20, maxMs: 20 },
      }),
      (w) => w.stop(),
    );
    void refused.start();
    await waitFor(
      () =>
        lines.some((l) => /unauthorized \(missing or wrong token\)/.test(l)),
      "the refused worker's log line",
    );
    assert.equal(refused.status().connects, 0);
    await refused.stop();

    // Good peers, with the token in the header and in the query, do some work.
    {
      await using _worker = await startWorker(server, { token: WORKER_TOKEN });
      await using _queryWorker = await startWorker(server, {
        url: `${server.workerUrl}/?token=${WORKER_TOKEN}`,
        name: "query-worker",
      });
      await using client = releasing(
        new RequesterClient(server.requesterUrl, { token: REQUESTER_TOKEN }),
        (c) => c.close(),
      );
      await using queryClient = releasing(
        new RequesterClient(`${server.requesterUrl}/?token=${REQUESTER_TOKEN}`),
        (c) => c.close(),
      );
      await client.connect();
      await queryClient.connect();
      assert.equal((await client.request("get_time")).success, true);
      assert.equal((await queryClient.request("get_time")).success, true);
      const bad = new RequesterClient(
        `${server.requesterUrl}/?token=${REQUESTER_TOKEN}-wrong`,
      );
      await assert.rejects(bad.connect(), (error: Error) => {
        assert.match(error.message, /unauthorized/);
        assert.equal(error.message.includes(REQUESTER_TOKEN), false);
        return true;
      });
    }
    // Refusals are summed up per interval, and when the server closes.
    await server.close();
    assert.ok(lines.length > 10, `too few log lines: ${lines.length}`);
    assert.ok(
      lines.some((l) =>
        /Refused \d+ connections with a missing or invalid token/.test(l)
      ),
    );
    for (const line of lines) {
      assert.equal(line.includes(WORKER_TOKEN), false, line);
      assert.equal(line.includes(REQUESTER_TOKEN), false, line);
      assert.equal(line.includes("tok-"), false, line);
    }
  } finally {
    resetSync();
  }
});

/** A raw WebSocket handshake from `localAddress`; resolves with the status line. */
function handshakeFrom(
  port: number,
  localAddress: string,
  token: string,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port, localAddress });
    socket.on("error", reject);
    socket.once("connect", () =>
      socket.write(
        `GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n` +
          `Authorization: Bearer ${token}\r\n\r\n`,
      ));
    socket.once("data", (d: Uint8Array) => {
      resolve(new TextDecoder().decode(d).split("\r\n")[0]);
      socket.destroy();
    });
  });
}

Deno.test("auth - wrong tokens from one address get 429 past the limit, summed up in one log line", async () => {
  const lines: string[] = [];
  setupLogging({ level: "debug", write: (line) => void lines.push(line) });
  let offset = 0;
  const clock = { now: () => Date.now() + offset };
  try {
    await using server = startTestServer({
      workerToken: WORKER_TOKEN,
      requesterToken: REQUESTER_TOKEN,
      maxAuthFailures: 5,
      clock,
    });
    const statuses: number[] = [];
    for (let i = 0; i < 12; i++) {
      const res = await fetch(server.requesterUrl.replace(/^ws/, "http"), {
        headers: { ...UPGRADE_HEADERS, authorization: `Bearer wrong-${i}` },
      });
      statuses.push(res.status);
      if (res.status === 429) {
        assert.match(await res.text(), /Too many failed tries/);
        assert.ok(Number(res.headers.get("retry-after")) > 0);
      } else await res.body?.cancel();
    }
    assert.deepEqual(statuses, [...Array(5).fill(401), ...Array(7).fill(429)]);
    // While it waits, even the right token from that address is not looked at.
    assert.equal(
      (await handshakeStatus(server.requesterUrl, {
        authorization: `Bearer ${REQUESTER_TOKEN}`,
      })).status,
      429,
    );
    // Another address is not held back by it.
    assert.match(
      await handshakeFrom(server.requesterPort, "127.0.0.2", REQUESTER_TOKEN),
      /^HTTP\/1\.1 101/,
    );
    // The first try is said at once; the rest wait for one line once the interval has passed.
    const summary = () =>
      lines.filter((l) => /missing or invalid token/.test(l));
    assert.equal(summary().length, 1, lines.join(""));
    assert.match(summary()[0], /Refused 1 connections with a missing/);
    server.broker.sweep();
    assert.equal(summary().length, 1, lines.join(""));
    offset += 10_000;
    server.broker.sweep();
    assert.equal(summary().length, 2, lines.join(""));
    assert.match(
      summary()[1],
      /Refused 4 connections with a missing or invalid token and 8 more with 429 .* from 1 addresses, most from 127\.0\.0\.1 \(12\)/,
    );
    // The window passes: the address may try again.
    offset += 60_000;
    assert.equal(
      (await handshakeStatus(server.requesterUrl, {
        authorization: "Bearer wrong",
      })).status,
      401,
    );
  } finally {
    resetSync();
  }
});
