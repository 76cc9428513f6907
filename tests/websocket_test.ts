// The ports' own WebSocket framing (lib/transport/_websocket.ts) on real loopback sockets. The server
// side reads three bytes at a time in the first test, so every split of a header or payload
// across reads is met, and a small message cap exercises every length form (7, 16, 64 bits).

import assert from "node:assert/strict";
import { ConnSocket, type SocketClose } from "../lib/transport/_websocket.ts";
import { concat, frameHeader, writeAll } from "./_frames.ts";
import { within } from "./_helpers.ts";

const encoder = new TextEncoder();

/** A client frame, masked with the key 1 2 3 4 unless `masked` is false. */
function clientFrame(
  fin: boolean,
  opcode: number,
  payload: Uint8Array,
  masked = true,
): Uint8Array {
  const key = masked ? [1, 2, 3, 4] : undefined;
  const body = payload.map((b, i) => key ? b ^ key[i % 4] : b);
  return concat([frameHeader(fin, opcode, payload.length, key), body]);
}

/** The server frames in `bytes`: [opcode, payload]. */
function serverFrames(bytes: Uint8Array): [number, Uint8Array][] {
  const out: [number, Uint8Array][] = [];
  let at = 0;
  while (at < bytes.length) {
    assert.equal(bytes[at + 1] & 0x80, 0, "server frames are not masked");
    let n = bytes[at + 1] & 0x7f;
    let head = 2;
    if (n === 126) {
      n = (bytes[at + 2] << 8) | bytes[at + 3];
      head = 4;
    } else if (n === 127) {
      n = Number(
        new DataView(bytes.buffer, bytes.byteOffset + at + 2, 8).getBigUint64(
          0,
        ),
      );
      head = 10;
    }
    out.push([bytes[at] & 0x0f, bytes.subarray(at + head, at + head + n)]);
    at += head + n;
  }
  return out;
}

/** Reads until the peer closes, within 10 s. */
async function readToEnd(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  const timer = setTimeout(() => conn.close(), 10_000);
  try {
    for (;;) {
      const n = await conn.read(buffer).catch(() => null);
      if (n === null) break;
      parts.push(buffer.slice(0, n));
    }
  } finally {
    clearTimeout(timer);
  }
  return concat(parts);
}

interface Pair extends AsyncDisposable {
  client: Deno.Conn;
  socket: ConnSocket;
  messages: (string | ArrayBuffer)[];
  closes: SocketClose[];
}

async function pair(
  options: ConstructorParameters<typeof ConnSocket>[1] = {},
  narrow = false,
  stuck = false,
): Promise<Pair> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [client, accepted] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    listener.accept(),
  ]);
  listener.close();
  const conn = narrow || stuck
    ? {
      read: (buffer: Uint8Array) =>
        accepted.read(narrow ? buffer.subarray(0, 3) : buffer),
      // A peer that never reads: after the kernel's buffers, writes never finish.
      write: (bytes: Uint8Array) =>
        stuck ? new Promise<number>(() => {}) : accepted.write(bytes),
      close: () => accepted.close(),
    } as unknown as Deno.Conn
    : accepted;
  const socket = new ConnSocket(conn, options);
  const messages: (string | ArrayBuffer)[] = [];
  const closes: SocketClose[] = [];
  socket.onmessage = (event) => {
    messages.push(event.data);
    if (event.data === "echo me") socket.send("echoed");
    if (event.data === "close me") socket.close(4000, "as asked");
  };
  socket.onclose = (event) => closes.push(event);
  socket.start(new Uint8Array(0));
  return {
    client,
    socket,
    messages,
    closes,
    async [Symbol.asyncDispose]() {
      try {
        client.close();
      } catch {
        // Closed by the test.
      }
      await socket.closed;
    },
  };
}

Deno.test("websocket - in 3-byte reads: oversize single and fragmented messages are answered and thrown away; pings, fragments and the rest arrive whole", async () => {
  await using p = await pair({
    maxMessageBytes: 100,
    oversizeAnswer: (n) => `too big: ${n}`,
  }, true);
  const sent = concat([
    clientFrame(true, 1, new Uint8Array(200)), // 16-bit length, over
    clientFrame(true, 1, encoder.encode("hello")),
    clientFrame(true, 2, new Uint8Array(70000)), // 64-bit length, over
    clientFrame(true, 9, encoder.encode("ping1")),
    clientFrame(false, 1, new Uint8Array(60)), // fragmented, 120 in all: over
    clientFrame(true, 9, encoder.encode("ping2")),
    clientFrame(false, 0, new Uint8Array(30)),
    clientFrame(true, 0, new Uint8Array(30)),
    clientFrame(false, 1, encoder.encode("ab")), // fragmented, small: passes
    clientFrame(true, 10, encoder.encode("pong")),
    clientFrame(true, 0, encoder.encode("cd")),
    clientFrame(true, 1, encoder.encode("中文")),
    clientFrame(true, 2, new Uint8Array([7, 8, 9])),
    clientFrame(true, 1, encoder.encode("close me")),
  ]);
  await writeAll(p.client, sent);
  const frames = serverFrames(await readToEnd(p.client));
  const decoder = new TextDecoder();
  assert.deepEqual(
    frames.map(([op, payload]) =>
      op === 8
        ? `close ${(payload[0] << 8) | payload[1]} ${
          decoder.decode(payload.subarray(2))
        }`
        : `${op} ${decoder.decode(payload)}`
    ),
    [
      "1 too big: 200",
      "1 too big: 70000",
      "10 ping1",
      "10 ping2",
      "1 too big: 120",
      "close 4000 as asked",
    ],
  );
  assert.deepEqual(p.messages.slice(0, 3), ["hello", "abcd", "中文"]);
  assert.deepEqual([...new Uint8Array(p.messages[3] as ArrayBuffer)], [
    7,
    8,
    9,
  ]);
  assert.equal(p.messages[4], "close me");
  assert.equal(p.messages.length, 5);
  await p.socket.closed;
  assert.equal(p.closes.length, 1);
  assert.equal(p.closes[0].code, 4000);
});

Deno.test("websocket - frames sent in one turn leave in one write, in order", async () => {
  await using p = await pair();
  for (let i = 0; i < 50; i++) p.socket.send(`m${i}`);
  assert.equal(
    p.socket.bufferedAmount,
    50 * 2 + [...Array(50).keys()].reduce((n, i) => n + `m${i}`.length, 0),
  );
  const buffer = new Uint8Array(64 * 1024);
  const n = await p.client.read(buffer);
  const frames = serverFrames(buffer.subarray(0, n!));
  assert.equal(frames.length, 50, "all 50 frames in the first read");
  assert.deepEqual(
    frames.map(([, payload]) => new TextDecoder().decode(payload)),
    [...Array(50).keys()].map((i) => `m${i}`),
  );
});

Deno.test("websocket - a peer's close is answered with the same code and reported once, clean", async () => {
  await using p = await pair();
  await writeAll(
    p.client,
    clientFrame(
      true,
      8,
      new Uint8Array([0x0f, 0xa0, ...encoder.encode("bye")]),
    ),
  );
  const frames = serverFrames(await readToEnd(p.client));
  assert.deepEqual(
    frames.map(([op, payload]) => [op, (payload[0] << 8) | payload[1]]),
    [[8, 4000]],
  );
  await p.socket.closed;
  assert.deepEqual(p.closes, [{ code: 4000, reason: "bye", wasClean: true }]);
  assert.equal(p.socket.readyState, 3);
});

Deno.test("websocket - protocol errors close with their RFC code: unmasked 1002, bad UTF-8 1007, over the cap without an answer 1009", async () => {
  const cases: [Uint8Array, number, Record<string, unknown>][] = [
    [clientFrame(true, 1, encoder.encode("hi"), false), 1002, {}],
    [clientFrame(true, 1, new Uint8Array([0xff, 0xfe])), 1007, {}],
    [clientFrame(true, 1, new Uint8Array(50)), 1009, { maxMessageBytes: 10 }],
    [clientFrame(true, 0, encoder.encode("x")), 1002, {}],
    [clientFrame(false, 9, new Uint8Array(0)), 1002, {}],
  ];
  for (const [frame, code, options] of cases) {
    await using p = await pair(options);
    await writeAll(p.client, frame);
    const frames = serverFrames(await readToEnd(p.client));
    assert.equal(frames.at(-1)?.[0], 8, `a close frame for code ${code}`);
    const payload = frames.at(-1)![1];
    assert.equal((payload[0] << 8) | payload[1], code);
    await p.socket.closed;
    assert.equal(p.closes.length, 1);
    assert.equal(p.closes[0].code, code);
    assert.equal(p.messages.length, 0);
  }
});

Deno.test("websocket - a peer that vanishes is reported as 1006; one that does not answer our close is cut off", async () => {
  {
    await using p = await pair();
    p.client.close();
    await p.socket.closed;
    assert.deepEqual(p.closes, [{ code: 1006, reason: "", wasClean: false }]);
  }
  {
    await using p = await pair();
    p.socket.close(1000, "done");
    // The client reads nothing and never answers: the socket still ends.
    await p.socket.closed;
    assert.equal(p.closes.length, 1);
    assert.equal(p.closes[0].wasClean, false);
  }
});

Deno.test("websocket - an idle peer is pinged after half the idle timeout and closed after all of it; a talking one is not", async () => {
  await using p = await pair({ idleTimeout: 0.2 });
  const buffer = new Uint8Array(1024);
  const n = await p.client.read(buffer);
  assert.deepEqual(serverFrames(buffer.subarray(0, n!)).map(([op]) => op), [9]);
  await p.socket.closed;
  assert.equal(p.closes[0].code, 1001);

  await using q = await pair({ idleTimeout: 0.2 });
  const talk = setInterval(
    () => writeAll(q.client, clientFrame(true, 10, new Uint8Array(0))),
    40,
  );
  try {
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.equal(q.socket.readyState, 1, "still open after 2.5 idle timeouts");
  } finally {
    clearInterval(talk);
  }
});

Deno.test("websocket - a handler that throws loses nothing: later messages on the connection still arrive", async () => {
  await using p = await pair();
  p.socket.onmessage = (event) => {
    p.messages.push(event.data);
    if (event.data === "boom") throw new Error("handler bug");
  };
  await writeAll(
    p.client,
    concat([
      clientFrame(true, 1, encoder.encode("boom")),
      clientFrame(true, 1, encoder.encode("after")),
    ]),
  );
  for (let i = 0; i < 100 && p.messages.length < 2; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.deepEqual(p.messages, ["boom", "after"]);
});

Deno.test("websocket - texts of every header size, ASCII and multi-byte, arrive as sent", async () => {
  await using p = await pair();
  const texts = [
    "",
    "a".repeat(125),
    "a".repeat(126),
    "中".repeat(41), // 123 bytes: room was made for a 4-byte header
    "中".repeat(42), // 126 bytes
    "é".repeat(20_000), // 40,000 bytes, encoded in place
    "x".repeat(65_535),
    "中".repeat(30_000), // 90,000 bytes: a 10-byte header
  ];
  for (const text of texts) p.socket.send(text);
  const total = texts.reduce(
    (n, t) => {
      const b = encoder.encode(t).length;
      return n + b + (b < 126 ? 2 : b < 65536 ? 4 : 10);
    },
    0,
  );
  const parts: Uint8Array[] = [];
  let got = 0;
  const buffer = new Uint8Array(64 * 1024);
  while (got < total) {
    const n = await p.client.read(buffer);
    assert.notEqual(n, null);
    parts.push(buffer.slice(0, n!));
    got += n!;
  }
  const frames = serverFrames(concat(parts));
  assert.deepEqual(
    frames.map(([op, payload]) => [op, new TextDecoder().decode(payload)]),
    texts.map((t) => [1, t]),
  );
});

Deno.test("websocket - a text that holds U+FFFD itself is valid and arrives; one that is not UTF-8 closes with 1007", async () => {
  await using p = await pair();
  await writeAll(p.client, clientFrame(true, 1, encoder.encode("a\uFFFDb")));
  await writeAll(p.client, clientFrame(true, 1, new Uint8Array([0x61, 0xc3])));
  await p.socket.closed;
  assert.deepEqual(p.messages, ["a\uFFFDb"]);
  assert.equal(p.closes[0].code, 1007);
});

Deno.test("websocket - hostile framing: a message a byte per fragment arrives whole; a length over 2^63 closes with 1002", async () => {
  {
    await using p = await pair();
    const text = "x".repeat(5000);
    const frames = [...text].map((c, i) =>
      clientFrame(i === text.length - 1, i === 0 ? 1 : 0, encoder.encode(c))
    );
    await writeAll(p.client, concat(frames));
    for (let i = 0; i < 200 && p.messages.length === 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.deepEqual(p.messages, [text]);
  }
  {
    await using p = await pair();
    const head = new Uint8Array([
      0x81,
      0x80 | 127,
      0x80,
      0,
      0,
      0,
      0,
      0,
      0,
      1,
      1,
      2,
      3,
      4,
    ]);
    await writeAll(p.client, head);
    await p.socket.closed;
    assert.equal(p.closes[0].code, 1002);
  }
});

Deno.test("websocket - a peer that pings and never reads gets no more pongs past 64 KiB unsent", async () => {
  await using p = await pair({}, false, true);
  const ping = clientFrame(true, 9, new Uint8Array(125));
  await writeAll(p.client, concat(Array.from({ length: 2000 }, () => ping)));
  for (let i = 0; i < 200 && p.socket.bufferedAmount < 64 * 1024; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  // Let the rest of the 250 KB of pings arrive too.
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.ok(p.socket.bufferedAmount >= 64 * 1024, "pongs were queued");
  assert.ok(
    p.socket.bufferedAmount < 64 * 1024 + 200,
    `${p.socket.bufferedAmount} bytes queued`,
  );
  p.socket.terminate();
});

Deno.test("websocket - a header that claims a large frame sets nothing aside until the bytes come", async () => {
  await using sockets = new AsyncDisposableStack();
  const before = Deno.memoryUsage().external;
  for (let i = 0; i < 16; i++) {
    const p = await pair();
    sockets.use(p);
    // 60 MiB claimed (under the 64 MiB cap), 10 bytes sent.
    const head = frameHeader(true, 1, 60 * 1024 * 1024, [1, 2, 3, 4]);
    await writeAll(p.client, concat([head, new Uint8Array(10)]));
  }
  await new Promise((resolve) => setTimeout(resolve, 50));
  const grown = Deno.memoryUsage().external - before;
  assert.ok(
    grown < 64 * 1024 * 1024,
    `${grown} bytes set aside for 16 claims of 60 MiB`,
  );
});

Deno.test("websocket - an idle connection holds a few KiB of buffers, not a busy one's", async () => {
  await using sockets = new AsyncDisposableStack();
  const before = Deno.memoryUsage().external;
  const n = 100;
  for (let i = 0; i < n; i++) {
    const p = await pair();
    sockets.use(p);
    await writeAll(p.client, clientFrame(true, 1, encoder.encode("echo me")));
  }
  await new Promise((resolve) => setTimeout(resolve, 50));
  const perConnection = (Deno.memoryUsage().external - before) / n;
  assert.ok(
    perConnection < 16 * 1024,
    `${perConnection} bytes per idle connection`,
  );
});

Deno.test("websocket - a text that starts with U+FEFF keeps it", async () => {
  await using p = await pair();
  await writeAll(p.client, clientFrame(true, 1, encoder.encode("\uFEFF{}")));
  for (let i = 0; i < 100 && p.messages.length === 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.deepEqual(p.messages, ["\uFEFF{}"]);
});

Deno.test("websocket - a peer that sends a close and never reads is cut off; bad close frames are protocol errors", async () => {
  {
    await using p = await pair({}, false, true);
    p.socket.send("x".repeat(1000)); // its write never ends: the close frame cannot go out
    await writeAll(
      p.client,
      clientFrame(true, 8, new Uint8Array([0x03, 0xe8])),
    );
    const ping = setInterval(
      () => writeAll(p.client, clientFrame(true, 9, new Uint8Array(0))),
      50,
    );
    try {
      await within(p.socket.closed, "the closing socket to end", 3000);
    } finally {
      clearInterval(ping);
    }
    assert.equal(p.closes.length, 1);
    assert.equal(p.closes[0].code, 1000);
  }
  const cases: [Uint8Array, number][] = [
    [new Uint8Array([0x03]), 1002], // one byte
    [new Uint8Array([0x03, 0xee]), 1002], // 1006 may not be sent
    [new Uint8Array([0x03, 0xe8, 0xff]), 1007], // reason not UTF-8
  ];
  for (const [payload, code] of cases) {
    await using p = await pair();
    await writeAll(p.client, clientFrame(true, 8, payload));
    await p.socket.closed;
    assert.equal(p.closes[0].code, code, `close payload ${[...payload]}`);
  }
});
