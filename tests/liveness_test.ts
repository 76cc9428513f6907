// Liveness on a clock of the test's own: a quiet peer is pinged after half the idle timeout and
// given up only when it leaves a ping unanswered for the other half. A connection whose peer
// answers pings stays open however late the timers fire, which is what dropped requesters
// waiting on a long request (1006 after 30 or 60 s) when the check ran on a fixed interval.

import assert from "node:assert/strict";
import { type Clock, Liveness } from "../lib/transport/_liveness.ts";
import { ConnSocket, type SocketClose } from "../lib/transport/_websocket.ts";
import { concat, frameHeader, writeAll } from "./_frames.ts";
import {
  connectClient,
  mulberry32,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";

/** A clock that moves only when told; timers fire in order as it passes them. */
class TestClock implements Clock {
  t = 1_000_000;
  #timers = new Map<number, { at: number; fn: () => void }>();
  #next = 0;
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): number {
    this.#timers.set(++this.#next, { at: this.t + ms, fn });
    return this.#next;
  }
  clearTimeout(id: unknown): void {
    this.#timers.delete(id as number);
  }
  /** Moves `ms` on, firing each timer due on the way at its own time. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let due: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.#timers) {
        if (entry[1].at <= end && (!due || entry[1].at < due[1].at)) {
          due = entry;
        }
      }
      if (!due) break;
      this.#timers.delete(due[0]);
      this.t = Math.max(this.t, due[1].at);
      due[1].fn();
    }
    this.t = end;
  }
  /** Moves on to `ms` past the next timer: a timer that fires late. */
  late(ms: number): void {
    let at = Infinity;
    for (const { at: a } of this.#timers.values()) at = Math.min(at, a);
    if (at === Infinity) return;
    this.advance(at - this.t + ms);
  }
  get pending(): number {
    return this.#timers.size;
  }
}

Deno.test("liveness - a silent peer is pinged after half the timeout and given up once the ping is unanswered for the other half", () => {
  const clock = new TestClock();
  const seen: string[] = [];
  new Liveness(30_000, {
    ping: () => seen.push(`ping at ${clock.t}`),
    expire: (quiet) => seen.push(`expire after ${quiet}`),
  }, clock);
  clock.advance(14_999);
  assert.deepEqual(seen, []);
  clock.advance(1);
  assert.deepEqual(seen, ["ping at 1015000"]);
  clock.advance(14_999);
  assert.equal(seen.length, 1, "the ping has the other half to be answered");
  clock.advance(1);
  assert.deepEqual(seen, ["ping at 1015000", "expire after 30000"]);
  assert.equal(clock.pending, 0);
});

Deno.test("liveness - a peer that answers every ping is never given up, however late the timers fire (the 30 s and 60 s drops)", () => {
  const random = mulberry32(1006);
  for (let run = 0; run < 50; run++) {
    const clock = new TestClock();
    let expired = false;
    let pings = 0;
    const liveness: Liveness = new Liveness(30_000, {
      ping: () => {
        pings++;
        // The answer comes a round trip later.
        queue.push(clock.t + Math.floor(random() * 50));
      },
      expire: () => expired = true,
    }, clock);
    const queue: number[] = [];
    // The request arrives a few ms after the connection opened; then only pongs.
    clock.advance(1 + Math.floor(random() * 10));
    liveness.heard();
    for (let step = 0; step < 40 && !expired; step++) {
      clock.late(Math.floor(random() * 200));
      while (queue.length > 0 && !expired) {
        const at = queue.shift()!;
        if (at > clock.t) clock.advance(at - clock.t);
        liveness.heard();
      }
    }
    assert.equal(expired, false, `run ${run}: given up after ${pings} pings`);
    assert.ok(pings >= 10, `run ${run}: ${pings} pings`);
  }
});

Deno.test("liveness - a peer heard from more often than half the timeout is never pinged", () => {
  const clock = new TestClock();
  let pings = 0;
  const liveness = new Liveness(30_000, {
    ping: () => pings++,
    expire: () => assert.fail("given up"),
  }, clock);
  for (let i = 0; i < 100; i++) {
    clock.advance(14_000);
    liveness.heard();
  }
  assert.equal(pings, 0);
  liveness.stop();
  assert.equal(clock.pending, 0);
});

/** A masked client frame. */
function clientFrame(opcode: number, payload: Uint8Array): Uint8Array {
  const key = [1, 2, 3, 4];
  return concat([
    frameHeader(true, opcode, payload.length, key),
    payload.map((b, i) => b ^ key[i % 4]),
  ]);
}

Deno.test("liveness - on a socket: a peer that answers pings keeps its connection past many timeouts; one that stops is closed 1001 with the reason", async () => {
  const clock = new TestClock();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [client, accepted] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    listener.accept(),
  ]);
  listener.close();
  const socket = new ConnSocket(accepted, { idleTimeout: 30, clock });
  const closes: SocketClose[] = [];
  let pongs = 0;
  socket.onclose = (event) => closes.push(event);
  socket.onpong = () => pongs++;
  socket.start(new Uint8Array(0));
  const buffer = new Uint8Array(1024);
  // Bounded: what never comes fails the test instead of hanging it.
  const read = async (): Promise<number | null> => {
    const timer = setTimeout(() => client.close(), 10_000);
    try {
      return await client.read(buffer).catch(() => null);
    } finally {
      clearTimeout(timer);
    }
  };
  try {
    for (let cycle = 0; cycle < 6; cycle++) {
      clock.late(250);
      // The ping arrives; the peer answers it.
      const n = await read();
      assert.deepEqual(Array.from(buffer.subarray(0, n!)), [0x89, 0]);
      await writeAll(client, clientFrame(0xa, new Uint8Array(0)));
      await waitFor(() => pongs === cycle + 1, "the pong to be read");
    }
    assert.equal(socket.readyState, 1, "open after 6 pings, 3 idle timeouts");
    // Now the peer stays silent.
    clock.late(0);
    const ping = await read();
    assert.deepEqual(Array.from(buffer.subarray(0, ping!)), [0x89, 0]);
    clock.late(0);
    await socket.closed;
    assert.equal(closes[0].code, 1001);
    assert.match(closes[0].reason, /Idle timeout: no answer to a ping/);
    const n = await read();
    assert.equal(buffer[0], 0x88, "a close frame");
    assert.equal((buffer[2] << 8) | buffer[3], 1001, `${n} bytes`);
  } finally {
    try {
      client.close();
    } catch {
      // Closed by a bound.
    }
    await socket.closed;
  }
});

Deno.test("liveness - a requester waiting several idle timeouts for its answer gets it", async () => {
  await using server = startTestServer({ idleTimeoutSeconds: 1 });
  const release = Promise.withResolvers<void>();
  await using _worker = await startWorker(server, {
    actions: { slow: async () => (await release.promise, "done") },
  });
  await using client = await connectClient(server.requesterUrl);
  const answer = client.request("slow", {}, { timeout: 60 });
  // The request waits through three idle timeouts, the requester answering the server's pings.
  const started = Date.now();
  await waitFor(
    () => Date.now() - started >= 3000,
    "three idle timeouts",
    10_000,
  );
  release.resolve();
  const result = await answer;
  assert.equal(result.success, true);
  assert.equal(result.data, "done");
});
