// Hostile and broken workers: oversize registrations, a `non_retriable` list meant for everyone,
// a worker that swallows requests, one that goes silent (frozen) while holding work, one that
// stops reading. Each may hurt only itself. Time is the server's injected clock; the sweep is
// called by hand.

import assert from "node:assert/strict";
import { isCandidate } from "../lib/broker/balancer.ts";
import { PROBE_AFTER_MS, REGISTRATION_LIMITS } from "../lib/broker/registry.ts";
import {
  answerOf,
  connectClient,
  emptyBars,
  type Frame,
  idOf,
  openRawWorker,
  RawPeer,
  respond,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";

/** A clock the test moves by hand, starting at the wall clock. */
function manualClock() {
  let offset = 0;
  return {
    now: () => Date.now() + offset,
    advance(ms: number) {
      offset += ms;
    },
  };
}

Deno.test("registration - a 4 MiB host is refused with a clear error and the worker may register again", async () => {
  await using server = startTestServer();
  const { peer, id } = await openRawWorker(server, false);
  try {
    peer.sendEnvelope("connect", { name: "big", host: "h".repeat(4 << 20) });
    const error = await peer.envelope("error");
    assert.equal(error.data.code, "INVALID_FIELD");
    assert.match(
      error.data.error,
      /Field 'host' of connect is too large: \d+ characters of JSON \(limit 4096\)/,
    );
    const info = server.broker.workers().find((w) => w.client_id === id)!;
    assert.equal(info.registered, false);
    assert.equal(info.host, null);
    peer.sendEnvelope("connect", { name: "small", host: { os: "linux" } });
    await waitFor(() =>
      server.broker.workers().some((w) => w.client_id === id && w.registered)
    );
  } finally {
    await peer.close();
  }
});

Deno.test("registration - every field and list has a bound, named in the error; weight is capped", async () => {
  await using server = startTestServer();
  const { peer, id } = await openRawWorker(server, false);
  try {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ name: "n".repeat(201) }, /'name' .*201 characters \(limit 200\)/],
      [{ version: "v".repeat(300) }, /'version' .*300 characters/],
      [
        { actions: Array.from({ length: 1001 }, (_, i) => `a${i}`) },
        /'actions' .*1001 entries \(limit 1000\)/,
      ],
      [{ actions: ["x".repeat(201)] }, /'actions' .*an entry of 201/],
      [
        { non_retriable: Array.from({ length: 5000 }, () => "get_time") },
        /'non_retriable' .*5000 entries/,
      ],
    ];
    for (const [registration, message] of cases) {
      peer.sendEnvelope("connect", registration);
      const error = await peer.envelope("error");
      assert.equal(error.data.code, "INVALID_FIELD");
      assert.match(error.data.error, message);
    }
    peer.sendEnvelope("connect", { name: "heavy", weight: 1000 });
    await waitFor(() =>
      server.broker.workers().some((w) => w.client_id === id && w.registered)
    );
    const info = server.broker.workers().find((w) => w.client_id === id)!;
    assert.equal(info.weight, REGISTRATION_LIMITS.weight);
  } finally {
    await peer.close();
  }
});

Deno.test("non_retriable - one worker's list covers its own requests only, and leaves with it", async () => {
  await using server = startTestServer();
  // A worker declares everyone's actions non-retriable, then leaves.
  const poison = await openRawWorker(server, {
    actions: ["get_data"],
    non_retriable: ["get_data", "get_time"],
  });
  await poison.peer.close();
  await waitFor(() => server.broker.workers().length === 0);
  // A retriable action on a worker that vanishes still moves to another worker.
  const doomed = await openRawWorker(server, { actions: ["get_data"] });
  await using client = await connectClient(server.requesterUrl);
  await using survivor = await startWorker(server, {
    name: "survivor",
    actions: { get_data: () => "from survivor" },
  });
  // Only the doomed worker is free at first: the survivor is told to drain for a moment.
  const survivorPeer = server.broker.dispatcher.registry.get(
    idOf(survivor),
  )!;
  survivorPeer.draining = true;
  const pending = answerOf(
    client.request("get_data", {}, { timeout: 10 }),
    "the first get_data",
    15_000,
  );
  await doomed.peer.envelope("request");
  survivorPeer.draining = false;
  await doomed.peer.close();
  const answer = await pending;
  assert.equal(answer.success, true, JSON.stringify(answer));
  assert.equal(answer.data, "from survivor");
  assert.equal(answer.attempts, 2);

  // The worker's own list covers what it held: that request is not run twice.
  const careful = await openRawWorker(server, {
    actions: ["get_data"],
    non_retriable: ["get_data"],
  });
  survivorPeer.draining = true;
  const held = answerOf(
    client.request("get_data", {}, { timeout: 10 }),
    "the held get_data",
    15_000,
  );
  await careful.peer.envelope("request");
  survivorPeer.draining = false;
  await careful.peer.close();
  const lost = await held;
  assert.equal(lost.success, false);
  assert.equal(lost.error_code, "WORKER_LOST");
});

Deno.test("health - a worker whose request timed out gets no new work until it answers one in time", async () => {
  const clock = manualClock();
  await using server = startTestServer({ clock });
  const swallower = await openRawWorker(server, { actions: ["echo"] });
  await using client = await connectClient(server.requesterUrl);
  try {
    const first = await client.request("echo", { n: 0 }, { timeout: 0.2 });
    assert.equal(first.error_code, "TIMEOUT");
    assert.equal(first.processed_by, swallower.id);
    const good = await startWorker(server, {
      name: "good",
      actions: { echo: (p) => p },
    });
    try {
      const answers = await Promise.all(
        Array.from(
          { length: 30 },
          (_, n) => client.request("echo", { n }, { timeout: 5 }),
        ),
      );
      for (const a of answers) {
        assert.equal(a.success, true);
        assert.equal(a.processed_by, idOf(good));
      }
      assert.equal(
        swallower.peer.unread.filter((f: Frame) => f.type === "request").length,
        1,
      );
      const record = server.broker.dispatcher.registry.get(swallower.id)!;
      assert.equal(record.healthy, false);
      assert.equal(isCandidate(record, "echo"), false);
      // After a while it may take one request to show that it answers again.
      clock.advance(PROBE_AFTER_MS);
      assert.equal(isCandidate(record, "echo"), true);
    } finally {
      await good.stop();
    }
    await waitFor(() => server.broker.workers().length === 1);
    const probe = answerOf(
      client.request("echo", { n: "probe" }, { timeout: 5 }),
      "the probe",
      10_000,
    );
    const request = await swallower.peer.next((f: Frame) =>
      f.type === "request" && f.data.params.n === "probe"
    );
    respond(swallower.peer, request, "late but in time");
    assert.equal((await probe).success, true);
    assert.equal(
      server.broker.dispatcher.registry.get(swallower.id)!.healthy,
      true,
    );
  } finally {
    await swallower.peer.close();
  }
});

Deno.test("health - a worker silent while holding work stops getting new work; a frame brings it back", async () => {
  const clock = manualClock();
  await using server = startTestServer({ clock, silenceMs: 2000 });
  const quiet = await openRawWorker(server, { actions: ["echo"] });
  await using client = await connectClient(server.requesterUrl);
  try {
    const held = answerOf(
      client.request("echo", { n: "held" }, { timeout: 10 }),
      "the held echo",
      15_000,
    );
    const request = await quiet.peer.envelope("request");
    const record = server.broker.dispatcher.registry.get(quiet.id)!;
    clock.advance(1500);
    server.broker.sweep();
    assert.equal(record.healthy, true);
    clock.advance(1000);
    server.broker.sweep();
    assert.equal(record.healthy, false);
    assert.equal(isCandidate(record, "echo"), false);
    quiet.peer.sendEnvelope("heartbeat", {});
    await waitFor(() => record.healthy, "the silent flag to clear");
    respond(quiet.peer, request, "done");
    assert.equal((await held).success, true);
  } finally {
    await quiet.peer.close();
  }
});

Deno.test("stall - a frozen worker's retriable requests move on after the stall timeout; its late answer is dropped", async () => {
  const clock = manualClock();
  await using server = startTestServer({ clock, stallTimeoutMs: 10_000 });
  const frozen = await openRawWorker(server, {
    actions: ["echo", "pay"],
    non_retriable: ["pay"],
  });
  await using client = await connectClient(server.requesterUrl);
  try {
    const echo = answerOf(
      client.request("echo", { n: 1 }, { timeout: 30 }),
      "the echo",
      35_000,
    );
    const pay = answerOf(
      client.request("pay", { n: 2 }, { timeout: 30 }),
      "the payment",
      35_000,
    );
    const requests = [
      await frozen.peer.envelope("request"),
      await frozen.peer.envelope("request"),
    ];
    const good = await startWorker(server, {
      name: "good",
      actions: { echo: () => "from good", pay: () => "paid twice" },
    });
    try {
      clock.advance(9000);
      server.broker.sweep();
      assert.equal(
        frozen.peer.unread.length,
        0,
        "nothing moved before the stall timeout",
      );
      clock.advance(2000);
      server.broker.sweep();
      const answer = await echo;
      assert.equal(answer.success, true);
      assert.equal(answer.data, "from good");
      assert.equal(answer.processed_by, idOf(good));
      assert.equal(answer.attempts, 2);
      // The frozen worker is told, and what it answers now goes nowhere.
      const cancel = await frozen.peer.envelope("cancel");
      const echoRequest = requests.find((r) => r.data.action === "echo")!;
      assert.equal(cancel.data.request_id, echoRequest.msg_id);
      respond(frozen.peer, echoRequest, "from frozen, late");
      // `pay` stays with the worker that said it must not run twice; it answers it.
      const payRequest = requests.find((r) => r.data.action === "pay")!;
      respond(frozen.peer, payRequest, "paid once");
      const paid = await pay;
      assert.equal(paid.data, "paid once");
      assert.equal(paid.processed_by, frozen.id);
      assert.equal(client.strayAnswers, 0);
    } finally {
      await good.stop();
    }
  } finally {
    await frozen.peer.close();
  }
});

Deno.test("batch - no item goes to a worker with a recent timeout while a healthy worker can take it", async () => {
  await using server = startTestServer();
  const swallower = await openRawWorker(server, {
    actions: ["get_markets", "get_market"],
    weight: 100,
  });
  await using client = await connectClient(server.requesterUrl);
  try {
    const timedOut = await client.request("get_market", { code: "1" }, {
      timeout: 0.2,
    });
    assert.equal(timedOut.error_code, "TIMEOUT");
    const good = await startWorker(server, {
      name: "good",
      actions: {
        get_markets: emptyBars,
      },
    });
    try {
      const items = Array.from({ length: 60 }, (_, i) => ({
        symbol_type: "etf",
        code: String(510000 + i),
      }));
      const answer = await client.request("get_markets", items, {
        timeout: 10,
      });
      assert.equal(answer.success, true);
      const data = answer.data as { results: { processed_by: string }[] };
      assert.equal(data.results.length, 60);
      for (const r of data.results) assert.equal(r.processed_by, idOf(good));
      assert.equal(
        swallower.peer.unread.filter((f: Frame) => f.type === "request")
          .length,
        1,
      );
    } finally {
      await good.stop();
    }
  } finally {
    await swallower.peer.close();
  }
});

Deno.test("worker socket - a worker that stops reading is dropped past the unread-bytes cap", async () => {
  await using server = startTestServer({ maxBufferedBytes: 256 * 1024 });
  const reader = await openRawWorker(server, { actions: ["echo"] });
  await using client = await connectClient(server.requesterUrl);
  try {
    // Stop reading: the server's frames pile up in its socket buffer.
    (reader.peer.socket as unknown as { pause(): void }).pause();
    const big = "p".repeat(900 * 1024);
    const answers = Array.from(
      { length: 40 },
      () => client.request("echo", big, { timeout: 10 }),
    );
    const settled = await Promise.all(answers);
    assert.ok(
      settled.every((a) => !a.success),
      "no answer came from the worker that does not read",
    );
    assert.ok(
      settled.some((a) => a.error_code === "WORKER_LOST"),
      JSON.stringify(settled.map((a) => a.error_code)),
    );
    await waitFor(() =>
      !server.broker.workers().some((w) => w.client_id === reader.id)
    );
  } finally {
    reader.peer.socket.terminate();
  }
});

Deno.test("frames - limits count bytes: 3-byte characters past 1 MiB are FRAME_TOO_LARGE and the connection stays", async () => {
  await using server = startTestServer();
  const peer = await RawPeer.open(server.requesterUrl);
  try {
    // 400,000 characters, 1,200,000 bytes.
    peer.send({ request_id: "wide", command: "x", data: "中".repeat(400_000) });
    const refused = await peer.answer("wide");
    assert.equal(refused.error_code, "FRAME_TOO_LARGE");
    assert.match(
      refused.error,
      /Frame too large: 1200\d{3} bytes \(limit 1048576\)/,
    );
    peer.send({ request_id: "after", command: "get_time" });
    assert.equal((await peer.answer("after")).processed_by, "server");
  } finally {
    await peer.close();
  }
});

Deno.test("frames - a frame limit at or past the runtime's 64 MiB cap is refused at start", async () => {
  for (const flag of ["--max-worker-frame", "--max-frame"]) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net",
        "--allow-read",
        "--allow-env",
        "--allow-sys",
        "server.ts",
        flag,
        "67108864",
        "--no-console",
      ],
      cwd: new URL("../", import.meta.url).pathname,
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    assert.equal(out.code, 2);
    assert.match(
      new TextDecoder().decode(out.stderr),
      new RegExp(
        `Invalid ${flag} 67108864: Deno closes a connection on a message of 67108864 bytes or more`,
      ),
    );
  }
});
