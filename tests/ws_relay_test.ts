// The guard's WebSocket relay on real loopback sockets, with a small cap so every header form
// (7, 16 and 64-bit lengths) and every split of a header across reads can be exercised cheaply:
// the guard reads three bytes at a time.

import assert from "node:assert/strict";
import { relayWebSocket } from "../lib/_ws_relay.ts";

const encoder = new TextEncoder();

/** A masked client frame (mask key 1 2 3 4). */
function clientFrame(fin: boolean, opcode: number, payload: Uint8Array) {
  const n = payload.length;
  const size = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const frame = new Uint8Array(size + 4 + n);
  frame[0] = (fin ? 0x80 : 0) | opcode;
  if (n < 126) frame[1] = 0x80 | n;
  else if (n < 65536) {
    frame[1] = 0x80 | 126;
    frame[2] = n >> 8;
    frame[3] = n & 255;
  } else {
    frame[1] = 0x80 | 127;
    new DataView(frame.buffer).setBigUint64(2, BigInt(n));
  }
  frame.set([1, 2, 3, 4], size);
  for (let i = 0; i < n; i++) frame[size + 4 + i] = payload[i] ^ ((i % 4) + 1);
  return frame;
}

function serverFrame(opcode: number, text: string): Uint8Array {
  const payload = encoder.encode(text);
  return new Uint8Array([0x80 | opcode, payload.length, ...payload]);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array) {
  for (let done = 0; done < bytes.length;) {
    done += await conn.write(bytes.subarray(done));
  }
}

/** Reads until `want` bytes have come, within 10 s. */
async function readBytes(conn: Deno.Conn, want: number): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let got = 0;
  const buffer = new Uint8Array(64 * 1024);
  const timer = setTimeout(() => conn.close(), 10_000);
  try {
    while (got < want) {
      const n = await conn.read(buffer);
      if (n === null) throw new Error(`closed after ${got} of ${want} bytes`);
      parts.push(buffer.slice(0, n));
      got += n;
    }
  } finally {
    clearTimeout(timer);
  }
  return concat(parts);
}

Deno.test("ws relay - in 3-byte reads: oversize single and fragmented messages are dropped and answered between the server's frames; the rest passes unchanged", async () => {
  // Closed by hand below as well; closing again at the end of the scope is a no-op.
  using front = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using back = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using client = await Deno.connect({
    hostname: "127.0.0.1",
    port: front.addr.port,
  });
  using guardSide = await front.accept();
  using upstream = await Deno.connect({
    hostname: "127.0.0.1",
    port: back.addr.port,
  });
  using server = await back.accept();
  front.close();
  back.close();
  // Reads of at most 3 bytes: TCP would join the small writes, and every split of a header
  // across reads must be met.
  const narrow = {
    read: (buffer: Uint8Array) => guardSide.read(buffer.subarray(0, 3)),
    write: (bytes: Uint8Array) => guardSide.write(bytes),
    close: () => guardSide.close(),
  } as unknown as Deno.Conn;
  const relay = relayWebSocket(
    narrow,
    upstream,
    new Uint8Array(0),
    (n) => `too big: ${n}`,
    100,
  );
  try {
    const head = encoder.encode("HTTP/1.1 101 Switching Protocols\r\n\r\n");
    // The server is in the middle of a frame when the answers become due.
    const long = serverFrame(1, "x".repeat(100));
    await writeAll(server, concat([head, long.subarray(0, 50)]));
    assert.deepEqual(
      await readBytes(client, head.length + 50),
      concat([head, long.subarray(0, 50)]),
    );

    const passes = [
      clientFrame(true, 1, encoder.encode("hello")),
      clientFrame(true, 9, encoder.encode("ping1")),
      clientFrame(false, 1, encoder.encode("ab")),
      clientFrame(true, 10, encoder.encode("pong")),
      clientFrame(true, 0, encoder.encode("cd")),
    ];
    const dropped = [
      clientFrame(true, 1, new Uint8Array(200)), // 16-bit length
      clientFrame(true, 2, new Uint8Array(70000)), // 64-bit length
      clientFrame(false, 1, new Uint8Array(60)),
      clientFrame(false, 0, new Uint8Array(30)),
    ];
    const ping2 = clientFrame(true, 9, encoder.encode("ping2"));
    const lastFragment = clientFrame(true, 0, new Uint8Array(30));
    const after = clientFrame(true, 1, encoder.encode("after"));
    const sent = concat([
      dropped[0],
      passes[0],
      dropped[1],
      passes[1],
      dropped[2],
      ping2,
      dropped[3],
      lastFragment,
      passes[2],
      passes[3],
      passes[4],
      after,
    ]);
    await writeAll(client, sent);
    // What the server gets: everything but the dropped messages; the small fragmented message
    // arrives whole after the pong that came between its fragments.
    const expected = concat([
      passes[0],
      passes[1],
      ping2,
      passes[3],
      passes[2],
      passes[4],
      after,
    ]);
    assert.deepEqual(await readBytes(server, expected.length), expected);

    // The answers wait for the end of the server's frame.
    await writeAll(server, long.subarray(50));
    const answers = [200, 70000, 120].map((n) =>
      serverFrame(1, `too big: ${n}`)
    );
    const rest = concat([long.subarray(50), ...answers]);
    assert.deepEqual(await readBytes(client, rest.length), rest);

    // With the server idle, an answer goes out at once.
    await writeAll(client, clientFrame(true, 1, new Uint8Array(100)));
    const idle = serverFrame(1, "too big: 100");
    assert.deepEqual(await readBytes(client, idle.length), idle);
  } finally {
    client.close();
    server.close();
    await relay;
  }
});
