// The frame codec on its own and on loopback sockets: every length form at its boundaries in
// both directions, control-frame limits, UTF-8 failing fast as pieces of a text arrive (the
// Autobahn 6.4.x cases, ported), and a property test of the reader: random valid frames chopped
// at random points give the same messages as when whole; random invalid ones always fail with
// their code.

import assert from "node:assert/strict";
import {
  FrameReader,
  type FrameReaderOptions,
  type FrameSink,
} from "../lib/transport/_ws_reader.ts";
import { utf8Step, writeHeader } from "../lib/transport/_ws_frame.ts";
import { ConnSocket, type SocketClose } from "../lib/transport/_websocket.ts";
import { concat, frameHeader, writeAll } from "./_frames.ts";
import { mulberry32 } from "./_helpers.ts";

const encoder = new TextEncoder();

/** A frame as a peer would send it, masked with `key` when given. */
function frame(
  fin: boolean,
  opcode: number,
  payload: Uint8Array,
  key?: number[],
  rsv = 0,
): Uint8Array {
  const head = frameHeader(fin, opcode, payload.length, key);
  head[0] |= rsv << 4;
  const body = key ? payload.map((b, i) => b ^ key[i % 4]) : payload;
  return concat([head, body]);
}

type Event =
  | ["message", number, string]
  | ["control", number, string]
  | ["oversize", number]
  | ["fail", number];

/** A reader whose sink records what it finds, fed with `feed(bytes)` in any pieces. */
function recorder(options: Partial<FrameReaderOptions> = {}) {
  const events: Event[] = [];
  let failed = false;
  const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16)).join(",");
  const sink: FrameSink = {
    get reading() {
      return !failed;
    },
    message(opcode, payload) {
      events.push(["message", opcode, hex(payload)]);
      return true;
    },
    control(opcode, payload) {
      events.push(["control", opcode, hex(payload)]);
    },
    oversize(bytes) {
      events.push(["oversize", bytes]);
    },
    fail(code) {
      failed = true;
      events.push(["fail", code]);
    },
  };
  const reader = new FrameReader(
    {
      client: false,
      maxMessageBytes: 1 << 20,
      skipOversize: false,
      ...options,
    },
    sink,
    new Uint8Array(0),
  );
  return {
    events,
    /** Feeds `bytes`; false once the reader stopped. */
    feed(bytes: Uint8Array): boolean {
      let at = 0;
      if (!reader.parse()) return false;
      while (at < bytes.length) {
        const room = reader.space();
        const n = Math.min(room.length, bytes.length - at);
        room.set(bytes.subarray(at, at + n));
        at += n;
        reader.received(n);
        if (!reader.parse()) return false;
      }
      return true;
    },
  };
}

// Length forms.

Deno.test("frame codec - the writer picks the 7-, 16- and 64-bit length forms at 0, 125, 126, 65535, 65536 and 2^32", () => {
  const cases: [number, number[]][] = [
    [0, [0x81, 0]],
    [125, [0x81, 125]],
    [126, [0x81, 126, 0, 126]],
    [65535, [0x81, 126, 0xff, 0xff]],
    [65536, [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]],
    [2 ** 32, [0x81, 127, 0, 0, 0, 1, 0, 0, 0, 0]],
  ];
  for (const [n, expected] of cases) {
    const out = new Uint8Array(14);
    const length = writeHeader(out, 0, 1, n, false);
    assert.deepEqual(Array.from(out.subarray(0, length)), expected, `${n}`);
    // Masked: the same with the mask bit, and four key bytes after.
    const masked = writeHeader(out, 0, 1, n, true);
    assert.equal(masked, expected.length + 4);
    assert.equal(out[1], expected[1] | 0x80);
  }
});

Deno.test("frame codec - the reader takes every length form at its boundaries: a cap of exactly n takes n and refuses n + 1", () => {
  const key = [9, 8, 7, 6];
  for (const n of [0, 125, 126, 65535, 65536]) {
    const payload = new Uint8Array(n).map((_, i) => i * 7);
    const taken = recorder({ maxMessageBytes: n });
    assert.ok(taken.feed(frame(true, 2, payload, key)), `${n}`);
    assert.equal(taken.events.length, 1);
    const [kind, opcode, bytes] = taken.events[0];
    assert.deepEqual([kind, opcode], ["message", 2]);
    assert.equal(bytes, Array.from(payload, (x) => x.toString(16)).join(","));
    const refused = recorder({ maxMessageBytes: n });
    refused.feed(frame(true, 2, new Uint8Array(n + 1), key));
    assert.deepEqual(refused.events, [["fail", 1009]], `${n + 1}`);
  }
  // 2^32 and one more, by their headers alone: the cap tells the two lengths apart at once.
  for (const [n, fails] of [[2 ** 32, false], [2 ** 32 + 1, true]] as const) {
    const head = frameHeader(true, 2, n, key);
    const r = recorder({ maxMessageBytes: 2 ** 32 });
    r.feed(head);
    assert.deepEqual(r.events, fails ? [["fail", 1009]] : [], `${n}`);
  }
});

/** A server ConnSocket and a raw client connection on loopback. */
async function socketPair(
  options: ConstructorParameters<typeof ConnSocket>[1] = {},
) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [raw, accepted] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    listener.accept(),
  ]);
  listener.close();
  const socket = new ConnSocket(accepted, options);
  const messages: (string | ArrayBuffer)[] = [];
  const closes: SocketClose[] = [];
  socket.onmessage = (event) => messages.push(event.data);
  socket.onclose = (event) => closes.push(event);
  socket.start(new Uint8Array(0));
  let pending: Uint8Array = new Uint8Array(0);
  const buffer = new Uint8Array(1 << 17);
  /** Reads the next whole frame the socket sent: [fin, opcode, payload, header]. */
  async function nextFrame(): Promise<
    [boolean, number, Uint8Array, Uint8Array]
  > {
    for (;;) {
      if (pending.length >= 2) {
        const len7 = pending[1] & 0x7f;
        const headLen = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0);
        if (pending.length >= headLen) {
          let n = len7;
          if (len7 === 126) n = (pending[2] << 8) | pending[3];
          if (len7 === 127) {
            n = Number(
              new DataView(pending.buffer, pending.byteOffset + 2, 8)
                .getBigUint64(0),
            );
          }
          if (pending.length >= headLen + n) {
            const out: [boolean, number, Uint8Array, Uint8Array] = [
              (pending[0] & 0x80) !== 0,
              pending[0] & 0x0f,
              pending.slice(headLen, headLen + n),
              pending.slice(0, headLen),
            ];
            pending = pending.slice(headLen + n);
            return out;
          }
        }
      }
      // Bounded: a frame that never comes fails the test instead of hanging it.
      const timer = setTimeout(() => raw.close(), 10_000);
      const n = await raw.read(buffer).catch(() => null).finally(() =>
        clearTimeout(timer)
      );
      if (n === null) throw new Error("No whole frame came");
      pending = concat([pending, buffer.subarray(0, n)]);
    }
  }
  return {
    raw,
    socket,
    messages,
    closes,
    nextFrame,
    async [Symbol.asyncDispose]() {
      try {
        raw.close();
      } catch {
        // Closed already.
      }
      await socket.closed;
    },
  };
}

Deno.test("frame codec - on a socket, messages of 0, 125, 126, 65535 and 65536 bytes cross both ways whole, with the right length form", async () => {
  await using p = await socketPair();
  const key = [1, 2, 3, 4];
  for (const n of [0, 125, 126, 65535, 65536]) {
    const payload = new Uint8Array(n).map((_, i) => (i * 31) & 0xff);
    // Server to peer.
    p.socket.send(payload);
    const [fin, opcode, got, head] = await p.nextFrame();
    assert.deepEqual([fin, opcode], [true, 2]);
    assert.equal(head.length, n < 126 ? 2 : n < 65536 ? 4 : 10, `${n}`);
    assert.deepEqual(got, payload);
    // Peer to server.
    const before = p.messages.length;
    await writeAll(p.raw, frame(true, 2, payload, key));
    await writeAll(p.raw, frame(true, 9, encoder.encode("sync"), key));
    const [, pong] = await p.nextFrame();
    assert.equal(pong, 0xa);
    assert.equal(p.messages.length, before + 1);
    assert.deepEqual(new Uint8Array(p.messages.at(-1) as ArrayBuffer), payload);
  }
});

// Control frames.

Deno.test("frame codec - a 125-byte ping is answered with its payload; a 126-byte ping, a fragmented ping and a 126-byte close fail with 1002", async () => {
  const key = [5, 6, 7, 8];
  {
    await using p = await socketPair();
    const payload = new Uint8Array(125).fill(0x61);
    await writeAll(p.raw, frame(true, 9, payload, key));
    const [, opcode, got] = await p.nextFrame();
    assert.equal(opcode, 0xa);
    assert.deepEqual(got, payload);
  }
  const bad = [
    frame(true, 9, new Uint8Array(126), key),
    frame(false, 9, new Uint8Array(1), key),
    frame(
      true,
      8,
      new Uint8Array(126).fill(0x20).fill(3, 0, 1).fill(232, 1, 2),
      key,
    ),
  ];
  for (const bytes of bad) {
    await using p = await socketPair();
    await writeAll(p.raw, bytes);
    const [, opcode, got] = await p.nextFrame();
    assert.equal(opcode, 8, "a close frame, no pong");
    assert.equal((got[0] << 8) | got[1], 1002);
    await p.socket.closed;
    assert.equal(p.closes[0].code, 1002);
  }
});

Deno.test("frame codec - a close reason past 123 bytes is cut at a character boundary: the close frame stays within 125", async () => {
  await using p = await socketPair();
  p.socket.close(4000, "é".repeat(100));
  const [, opcode, got] = await p.nextFrame();
  assert.equal(opcode, 8);
  assert.ok(got.length <= 125, `${got.length} bytes`);
  assert.equal(
    new TextDecoder("utf-8", { fatal: true }).decode(got.subarray(2)),
    "é".repeat(61),
  );
});

// UTF-8 as the pieces arrive (Autobahn 6.4.1–6.4.4).

const PART1 = new Uint8Array([
  0xce,
  0xba,
  0xe1,
  0xbd,
  0xb9,
  0xcf,
  0x83,
  0xce,
  0xbc,
  0xce,
  0xb5,
]);
const PART2 = new Uint8Array([0xf4, 0x90, 0x80, 0x80]);
const PART3 = encoder.encode("edited");
const WHOLE = concat([PART1, PART2, PART3]);

Deno.test("frame codec - invalid UTF-8 in a fragment fails the connection with 1007 when that fragment arrives (Autobahn 6.4.1, 6.4.2)", async () => {
  const key = [1, 2, 3, 4];
  const splits: [Uint8Array, Uint8Array, Uint8Array][] = [
    [PART1, PART2, PART3],
    [WHOLE.subarray(0, 12), WHOLE.subarray(12, 13), WHOLE.subarray(13)],
  ];
  for (const [a, b] of splits) {
    await using p = await socketPair();
    await writeAll(p.raw, frame(false, 1, a, key));
    // A ping behind the first fragment: its pong says the fragment was taken.
    await writeAll(p.raw, frame(true, 9, encoder.encode("A"), key));
    const [, pong] = await p.nextFrame();
    assert.equal(pong, 0xa);
    await writeAll(p.raw, frame(false, 0, b, key));
    // Strict: the close comes before any pong for this ping (the third part is never sent).
    await writeAll(p.raw, frame(true, 9, encoder.encode("B"), key));
    const [, opcode, payload] = await p.nextFrame();
    assert.equal(opcode, 8, "a close frame, not the pong for B");
    assert.equal((payload[0] << 8) | payload[1], 1007);
    await p.socket.closed;
    assert.equal(p.closes[0].code, 1007);
    assert.equal(p.messages.length, 0);
  }
});

Deno.test("frame codec - invalid UTF-8 in one text frame sent in chops fails when the bad chop arrives, before the frame ends (Autobahn 6.4.3, 6.4.4)", async () => {
  const key = [1, 2, 3, 4];
  const masked = frame(true, 1, WHOLE, key);
  const head = masked.length - WHOLE.length;
  for (const cut of [PART1.length + PART2.length, 13]) {
    await using p = await socketPair();
    // The header and the valid start.
    await writeAll(
      p.raw,
      masked.subarray(0, head + (cut === 13 ? 12 : PART1.length)),
    );
    // The bad bytes; the rest of the frame is never sent.
    await writeAll(
      p.raw,
      masked.subarray(head + (cut === 13 ? 12 : PART1.length), head + cut),
    );
    const [, opcode, payload] = await p.nextFrame();
    assert.equal(opcode, 8);
    assert.equal((payload[0] << 8) | payload[1], 1007);
  }
  // The same in the reader, piece by piece: nothing until the bad byte, the failure on it.
  const r = recorder();
  assert.ok(r.feed(masked.subarray(0, head + 12)));
  assert.deepEqual(r.events, []);
  assert.equal(r.feed(masked.subarray(head + 12, head + 13)), false);
  assert.deepEqual(r.events, [["fail", 1007]]);
});

Deno.test("frame codec - a text cut mid-character across fragments is whole and valid; one that ends mid-character fails with 1007", () => {
  const key = [4, 3, 2, 1];
  const text = encoder.encode("K线：日线 😀");
  for (let cut = 0; cut <= text.length; cut++) {
    const r = recorder();
    r.feed(concat([
      frame(false, 1, text.subarray(0, cut), key),
      frame(true, 0, text.subarray(cut), key),
    ]));
    assert.equal(r.events.length, 1, `cut at ${cut}`);
    assert.equal(r.events[0][0], "message");
  }
  const r = recorder();
  r.feed(frame(true, 1, text.subarray(0, text.length - 1), key));
  assert.deepEqual(r.events.at(-1), ["message", 1, r.events.at(-1)![2]]);
  // A frame taken whole is checked when decoded (by the socket); in pieces, by the reader.
  const pieces = recorder();
  const masked = frame(false, 1, text.subarray(0, text.length - 1), key);
  pieces.feed(concat([masked, frame(true, 0, new Uint8Array(0), key)]));
  assert.deepEqual(pieces.events, [["fail", 1007]]);
});

Deno.test("utf8Step() agrees with the runtime's strict decoder on every 1- to 4-byte sequence class", () => {
  const strict = new TextDecoder("utf-8", { fatal: true });
  const valid = (bytes: Uint8Array) => {
    try {
      strict.decode(bytes);
      return true;
    } catch {
      return false;
    }
  };
  const random = mulberry32(21);
  const interesting = [
    0x00,
    0x7f,
    0x80,
    0x8f,
    0x90,
    0x9f,
    0xa0,
    0xbf,
    0xc0,
    0xc1,
    0xc2,
    0xdf,
    0xe0,
    0xe1,
    0xec,
    0xed,
    0xee,
    0xef,
    0xf0,
    0xf1,
    0xf3,
    0xf4,
    0xf5,
    0xff,
  ];
  for (let i = 0; i < 20_000; i++) {
    const n = 1 + Math.floor(random() * 4);
    const bytes = Uint8Array.from(
      { length: n },
      () => interesting[Math.floor(random() * interesting.length)],
    );
    // Whole, and fed a byte at a time with the state carried.
    assert.equal(utf8Step(bytes, 0, n, 0) === 0, valid(bytes), `${bytes}`);
    let state = 0;
    for (let j = 0; j < n && state >= 0; j++) {
      state = utf8Step(bytes, j, j + 1, state);
    }
    assert.equal(state === 0, valid(bytes), `${bytes} a byte at a time`);
  }
});

// Property test of the reader.

/** A random valid message as frames (fragmented at random, with pings between) and what it gives. */
function randomMessage(
  random: () => number,
): { bytes: Uint8Array; events: Event[] } {
  const key = () => [0, 0, 0, 0].map(() => Math.floor(random() * 256));
  const binary = random() < 0.4;
  const samples = ["a", "é", "线", "😀", '{"k":1}', " "];
  let payload: Uint8Array;
  if (binary) {
    // The length forms' edges, the larger ones more rarely (they cost the test its time).
    const sizes = [0, 1, 125, 126, 127, 300, 0, 1, 125, 126, 127, 65535, 65536];
    const n = sizes[Math.floor(random() * sizes.length)];
    payload = Uint8Array.from({ length: n }, () => Math.floor(random() * 256));
  } else {
    let text = "";
    const n = Math.floor(random() * 400);
    for (let i = 0; i < n; i++) {
      text += samples[Math.floor(random() * samples.length)];
    }
    payload = encoder.encode(text);
  }
  const hex = Array.from(payload, (x) => x.toString(16)).join(",");
  const parts: Uint8Array[] = [];
  const events: Event[] = [];
  const pieces = random() < 0.5 ? 1 : 1 + Math.floor(random() * 5);
  let at = 0;
  for (let i = 0; i < pieces; i++) {
    const end = i === pieces - 1
      ? payload.length
      : at + Math.floor(random() * (payload.length - at + 1));
    parts.push(
      frame(
        i === pieces - 1,
        i === 0 ? (binary ? 2 : 1) : 0,
        payload.subarray(at, end),
        key(),
      ),
    );
    at = end;
    if (i < pieces - 1 && random() < 0.3) {
      parts.push(frame(true, 9, encoder.encode("p"), key()));
      events.push(["control", 9, "70"]);
    }
  }
  events.push(["message", binary ? 2 : 1, hex]);
  return { bytes: concat(parts), events };
}

/** Random invalid frames and the code each must fail with. */
function randomInvalid(
  random: () => number,
): { bytes: Uint8Array; code: number } {
  const key = [7, 7, 7, 7];
  const text = encoder.encode("text");
  const bad: [() => Uint8Array, number][] = [
    [() => frame(true, 1, text, key, 1 + Math.floor(random() * 7)), 1002],
    [() => frame(true, 1, text), 1002],
    [
      () =>
        frame(
          true,
          [3, 4, 5, 6, 7, 11, 12, 13, 14, 15][Math.floor(random() * 10)],
          text,
          key,
        ),
      1002,
    ],
    [
      () =>
        frame(true, 9, new Uint8Array(126 + Math.floor(random() * 200)), key),
      1002,
    ],
    [() => frame(false, 10, new Uint8Array(0), key), 1002],
    [() => frame(true, 0, text, key), 1002],
    [
      () => concat([frame(false, 1, text, key), frame(true, 2, text, key)]),
      1002,
    ],
    [() => frame(true, 1, new Uint8Array([0x61, 0xc0, 0x80]), key), 1007],
    [
      () =>
        concat([
          frame(false, 1, new Uint8Array([0xed]), key),
          frame(true, 0, new Uint8Array([0xa0, 0x80]), key),
        ]),
      1007,
    ],
    [() => frame(true, 8, new Uint8Array([3]), key), 1002],
    [() => frame(true, 8, new Uint8Array([3, 0xed]), key), 1002],
    [() => frame(true, 8, new Uint8Array([3, 232, 0xff]), key), 1007],
  ];
  const [make, code] = bad[Math.floor(random() * bad.length)];
  return { bytes: make(), code };
}

Deno.test("frame codec - property: random valid frames chopped at random points give the same messages as when sent whole; random invalid ones always fail with their code", () => {
  const random = mulberry32(6455);
  for (let round = 0; round < 200; round++) {
    const messages = Array.from(
      { length: 1 + Math.floor(random() * 4) },
      () => randomMessage(random),
    );
    const invalid = random() < 0.5 ? randomInvalid(random) : undefined;
    const stream = concat([
      ...messages.map((m) => m.bytes),
      invalid?.bytes ?? new Uint8Array(0),
    ]);
    const expected: Event[] = messages.flatMap((m) => m.events);
    const whole = recorder();
    whole.feed(stream);
    const chopped = recorder();
    for (let at = 0; at < stream.length;) {
      const n = 1 + Math.floor(random() * (random() < 0.5 ? 8 : 4096));
      if (!chopped.feed(stream.subarray(at, at + n))) break;
      at += n;
    }
    const failure: Event[] = invalid ? [["fail", invalid.code]] : [];
    const wanted = [...expected, ...failure];
    // Close frames with a bad code or reason, and bad text that came whole, are the socket's to
    // fail: the reader passes them on.
    const closeChecked = (events: Event[]) =>
      events.map((e): Event => {
        // A text frame that came whole is the socket's to check, as it decodes it.
        if (e[0] === "message" && e[1] === 1) {
          const bytes = e[2] === ""
            ? []
            : e[2].split(",").map((x) => parseInt(x, 16));
          return utf8Step(Uint8Array.from(bytes), 0, bytes.length, 0) === 0
            ? e
            : ["fail", 1007];
        }
        if (e[0] !== "control" || e[1] !== 8) return e;
        const bytes = e[2].split(",").map((x) => parseInt(x, 16));
        if (bytes.length === 1) return ["fail", 1002];
        const code = (bytes[0] << 8) | bytes[1];
        if (
          !(code >= 1000 && code <= 1003) && !(code >= 1007 && code <= 1014) &&
          !(code >= 3000 && code <= 4999)
        ) return ["fail", 1002];
        try {
          new TextDecoder("utf-8", { fatal: true }).decode(
            Uint8Array.from(bytes.slice(2)),
          );
        } catch {
          return ["fail", 1007];
        }
        return e;
      });
    assert.deepEqual(
      closeChecked(whole.events),
      wanted,
      `round ${round}, whole`,
    );
    assert.deepEqual(
      closeChecked(chopped.events),
      wanted,
      `round ${round}, chopped`,
    );
  }
});
