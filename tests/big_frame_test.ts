// A message of 64 MiB or more never reaches the runtime (which would close the connection with
// 1009): the guard throws it away and answers FRAME_TOO_LARGE, and the connection goes on.
// A raw TCP client writes the frames itself, so sizes, fragments and pings are exact.

import assert from "node:assert/strict";
import { RequesterClient } from "../lib/requester/requester_client.ts";
import { RUNTIME_FRAME_CAP } from "../lib/transport/_frame_size.ts";
import { concat, frameHeader, writeAll as write } from "./_frames.ts";
import {
  answerOf,
  openRawWorker,
  releasing,
  startTestServer,
  within,
} from "./_helpers.ts";

interface Frame {
  opcode: number;
  text: string;
}

/** A WebSocket client on a bare TCP socket: masked frames out (mask 0), frames in. */
class RawSocket {
  #frames: Frame[] = [];
  #waiters: (() => void)[] = [];
  #reading: Promise<void>;
  private constructor(readonly conn: Deno.TcpConn, rest: Uint8Array) {
    this.#reading = this.#read(rest);
  }

  static async open(port: number): Promise<RawSocket> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await write(
      conn,
      new TextEncoder().encode(
        `GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
          "Sec-WebSocket-Version: 13\r\n\r\n",
      ),
    );
    let got: Uint8Array = new Uint8Array(0);
    const buffer = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) throw new Error("closed during the upgrade");
      got = concat([got, buffer.subarray(0, n)]);
      const text = new TextDecoder("latin1").decode(got);
      const end = text.indexOf("\r\n\r\n");
      if (end < 0) continue;
      assert.match(text, /^HTTP\/1\.1 101/);
      return new RawSocket(conn, got.slice(end + 4));
    }
  }

  async #read(rest: Uint8Array): Promise<void> {
    let data: Uint8Array = rest;
    const buffer = new Uint8Array(64 * 1024);
    for (;;) {
      while (data.length >= 2) {
        let length = data[1] & 0x7f;
        let at = 2;
        if (length === 126) {
          if (data.length < 4) break;
          length = (data[2] << 8) | data[3];
          at = 4;
        } else if (length === 127) {
          if (data.length < 10) break;
          length = Number(
            new DataView(data.buffer, data.byteOffset).getBigUint64(2),
          );
          at = 10;
        }
        if (data.length < at + length) break;
        this.#frames.push({
          opcode: data[0] & 0x0f,
          text: new TextDecoder().decode(data.subarray(at, at + length)),
        });
        data = data.slice(at + length);
        for (const w of this.#waiters.splice(0)) w();
      }
      let n: number | null = null;
      try {
        n = await this.conn.read(buffer);
      } catch {
        // closed
      }
      if (n === null) {
        this.#frames.push({ opcode: -1, text: "closed" });
        for (const w of this.#waiters.splice(0)) w();
        return;
      }
      data = concat([data, buffer.subarray(0, n)]);
    }
  }

  /** The first unread frame that matches, within 10 s. */
  async next(match: (f: Frame) => boolean): Promise<Frame> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const i = this.#frames.findIndex((f) => match(f) || f.opcode === -1);
      if (i >= 0) {
        const [frame] = this.#frames.splice(i, 1);
        if (frame.opcode === -1) throw new Error("connection closed");
        return frame;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("no matching frame within 10 s");
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
    }
  }

  async json(match: (v: Record<string, unknown>) => boolean) {
    const frame = await this.next((f) => {
      if (f.opcode !== 1) return false;
      return match(JSON.parse(f.text));
    });
    return JSON.parse(frame.text) as Record<string, unknown>;
  }

  /** One frame header, mask key 0 0 0 0; its payload is written separately. */
  header(fin: boolean, opcode: number, length: number): Promise<void> {
    return write(this.conn, frameHeader(fin, opcode, length, [0, 0, 0, 0]));
  }

  async frame(fin: boolean, opcode: number, payload: Uint8Array) {
    await this.header(fin, opcode, payload.length);
    await write(this.conn, payload);
  }

  text(value: unknown): Promise<void> {
    return this.frame(true, 1, new TextEncoder().encode(JSON.stringify(value)));
  }

  /** `length` bytes of "x", written a MiB at a time. */
  async stream(length: number): Promise<void> {
    const block = new Uint8Array(1024 * 1024).fill(0x78);
    for (let left = length; left > 0; left -= block.length) {
      await write(this.conn, block.subarray(0, Math.min(left, block.length)));
    }
  }

  /**
   * A message of `total` bytes that starts with `prefix` (its length a multiple of 4) and goes
   * on with "x", masked with the key 1 2 3 4, in one frame or in a first fragment holding the
   * prefix and one continuation.
   */
  async masked(prefix: string, total: number, fragmented = false) {
    const key = [1, 2, 3, 4];
    const start = new TextEncoder().encode(prefix);
    assert.equal(start.length % 4, 0);
    const xor = (bytes: Uint8Array) => bytes.map((b, i) => b ^ key[i % 4]);
    if (fragmented) {
      await write(this.conn, frameHeader(false, 1, start.length, key));
      await write(this.conn, xor(start));
      await write(this.conn, frameHeader(true, 0, total - start.length, key));
    } else {
      await write(this.conn, frameHeader(true, 1, total, key));
      await write(this.conn, xor(start));
    }
    const block = xor(new Uint8Array(1024 * 1024).fill(0x78));
    for (let left = total - start.length; left > 0; left -= block.length) {
      await write(this.conn, block.subarray(0, Math.min(left, block.length)));
    }
  }

  async close(): Promise<void> {
    try {
      this.conn.close();
    } catch {
      // closed
    }
    await this.#reading;
  }

  /** Same as `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

const MiB = 1024 * 1024;
const encoder = new TextEncoder();

Deno.test("big frames - requester: a 65 MiB frame and a 70 MiB fragmented message are answered FRAME_TOO_LARGE; the connection and a request in flight go on", async () => {
  await using server = startTestServer();
  const { peer } = await openRawWorker(server, { actions: ["work"] });
  await using worker = peer;
  await using socket = await RawSocket.open(server.requesterPort);
  await socket.text({ request_id: "held", command: "work" });
  const held = await worker.envelope("request");

  await socket.header(true, 1, 65 * MiB);
  await socket.stream(65 * MiB);
  const single = await socket.json((v) => v.error_code === "FRAME_TOO_LARGE");
  assert.equal(single.request_id, null);
  assert.equal(single.success, false);
  assert.equal(
    single.error,
    `Frame too large: ${65 * MiB} bytes (limit ${1024 * 1024})`,
  );

  // Fragments: 40 MiB, a ping between, then 30 MiB: no single frame is over the cap.
  await socket.header(false, 1, 40 * MiB);
  await socket.stream(40 * MiB);
  await socket.frame(true, 9, encoder.encode("between"));
  await socket.header(true, 0, 30 * MiB);
  await socket.stream(30 * MiB);
  const pong = await socket.next((f) => f.opcode === 10);
  assert.equal(pong.text, "between");
  const fragmented = await socket.json((v) =>
    v.error_code === "FRAME_TOO_LARGE"
  );
  assert.match(String(fragmented.error), new RegExp(`: ${70 * MiB} bytes`));

  // A small fragmented message still goes through whole.
  await socket.frame(
    false,
    1,
    encoder.encode('{"request_id":"frag","comm'),
  );
  await socket.frame(true, 9, encoder.encode("p"));
  await socket.frame(true, 0, encoder.encode('and":"nothing_offers_this"}'));
  const frag = await socket.json((v) => v.request_id === "frag");
  assert.equal(frag.error, "No available workers");

  worker.sendEnvelope("response", {
    request_id: held.msg_id,
    success: true,
    result: "held done",
    error: null,
  });
  const heldAnswer = await socket.json((v) => v.request_id === "held");
  assert.equal(heldAnswer.data, "held done");

  await socket.text({ request_id: "after", command: "work" });
  const after = await worker.envelope("request");
  worker.sendEnvelope("response", {
    request_id: after.msg_id,
    success: true,
    result: "after done",
    error: null,
  });
  const afterAnswer = await socket.json((v) => v.request_id === "after");
  assert.equal(afterAnswer.data, "after done");
});

Deno.test("big frames - worker: a 65 MiB frame gets an error envelope; the worker then registers and answers on the same connection", async () => {
  await using server = startTestServer();
  await using socket = await RawSocket.open(server.port);
  await using client = releasing(
    new RequesterClient(server.requesterUrl),
    (c) => c.close(),
  );
  const hello = await socket.json((v) => v.type === "connect");
  await socket.header(true, 1, RUNTIME_FRAME_CAP);
  await socket.stream(RUNTIME_FRAME_CAP);
  const error = await socket.json((v) => v.type === "error");
  const data = error.data as Record<string, unknown>;
  assert.equal(data.code, "FRAME_TOO_LARGE");
  assert.match(
    String(data.error),
    /^Frame too large: 67108864 bytes \(limit \d+\)$/,
  );

  const envelope = (type: string, data: unknown) => ({
    type,
    msg_id: crypto.randomUUID(),
    timestamp: Date.now() / 1000,
    data,
  });
  await socket.text(envelope("connect", { name: "raw", actions: ["work"] }));
  await client.connect();
  const pending = answerOf(client.request("work", {}, { timeout: 5 }));
  const request = await socket.json((v) => v.type === "request");
  await socket.text(envelope("response", {
    request_id: request.msg_id,
    success: true,
    result: `answered by ${(hello.data as Record<string, unknown>).client_id}`,
    error: null,
  }));
  const answer = await pending;
  assert.equal(answer.success, true);
  assert.match(String(answer.data), /^answered by /);
});

/** `text` padded with spaces to a multiple of 4 bytes. */
function padded(text: string): string {
  return text +
    " ".repeat((4 - (new TextEncoder().encode(text).length % 4)) % 4);
}

Deno.test("big frames - requester: a frame too large is answered under the request_id in its first 64 KiB, whatever its size", async () => {
  await using server = startTestServer({ maxRequesterFrameBytes: 1024 * 1024 });
  await using socket = await RawSocket.open(server.requesterPort);
  // The id 60 KiB in, behind a long field.
  const prefix = (id: string) =>
    padded(
      `{"data": "${
        "y".repeat(60_000)
      }", "request_id": "${id}", "command": "x", "pad": "`,
    );
  const cases: [string, number, boolean][] = [
    ["over-the-port-limit", 2 * MiB, false],
    ["over-the-runtime-cap", RUNTIME_FRAME_CAP + 1, false],
    ["fragmented-over-the-cap", RUNTIME_FRAME_CAP + 1, true],
  ];
  for (const [id, total, fragmented] of cases) {
    await socket.masked(prefix(id), total, fragmented);
    const answer = await socket.json((v) => v.error_code === "FRAME_TOO_LARGE");
    assert.equal(answer.request_id, id);
    assert.equal(answer.success, false);
    assert.match(
      String(answer.error),
      new RegExp(`^Frame too large: ${total} bytes`),
    );
  }
  // An id past the first 64 KiB is not looked for: the answer says null.
  await socket.masked(
    padded(`{"data": "${"y".repeat(70_000)}", "request_id": "late", "pad": "`),
    RUNTIME_FRAME_CAP + 1,
  );
  const late = await socket.json((v) => v.error_code === "FRAME_TOO_LARGE");
  assert.equal(late.request_id, null);
});

Deno.test("big frames - worker: an answer over the worker port's limit fails its request at once with RESULT_TOO_LARGE, naming the worker and the size", async () => {
  for (
    const [limit, total] of [[MiB, 2 * MiB], [
      undefined,
      RUNTIME_FRAME_CAP + 8,
    ]] as const
  ) {
    await using server = startTestServer({ maxWorkerFrameBytes: limit });
    await using socket = await RawSocket.open(server.port);
    await using client = releasing(
      new RequesterClient(server.requesterUrl),
      (c) => c.close(),
    );
    await socket.json((v) => v.type === "connect");
    await socket.text({
      type: "connect",
      msg_id: "c1",
      timestamp: Date.now() / 1000,
      data: { name: "bulky", actions: ["work"] },
    });
    await client.connect();
    // Far past the test: a TIMEOUT would come only after `within` gave up.
    const pending = answerOf(client.request("work", {}, { timeout: 300 }));
    const request = await socket.json((v) => v.type === "request");
    await socket.masked(
      padded(
        `{"type": "response", "msg_id": "m-big", "timestamp": 1, "data": {"request_id": "${request.msg_id}", "success": true, "error": null, "result": "`,
      ),
      total,
    );
    const answer = await within(pending, "the requester's answer", 60_000);
    assert.equal(answer.success, false);
    assert.equal(answer.error_code, "RESULT_TOO_LARGE");
    assert.match(
      String(answer.error),
      new RegExp(`worker bulky \\(\\w+\\) answered with ${total} bytes`),
    );
    // The worker hears of it under its frame's msg_id.
    const error = await socket.json((v) => v.type === "error");
    const data = error.data as Record<string, unknown>;
    assert.equal(data.code, "FRAME_TOO_LARGE");
    assert.equal(data.msg_id, "m-big");
  }
});
