// Hostile input on both ports, from a seeded generator: garbage, truncated and mutated frames,
// absurd nesting and numbers, prototype keys, binary frames, wrong types, long strings, floods.
// Meanwhile a well-behaved worker and requester keep working and never see an error.

import assert from "node:assert/strict";
import {
  connectClient,
  type Frame,
  mulberry32,
  openRawWorker,
  RawPeer,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";

const SEED = 0x5eed_2025;
const FRAMES_PER_PORT = 1500;
const FLOOD = 400;
const REQUESTER_LIMIT = 128 * 1024;
const WORKER_LIMIT = 256 * 1024;
// What the good worker offers; the fuzzers never register it for themselves.
const GOOD_ACTION = "echo_good";
const WORKER_ACTIONS = new Set([GOOD_ACTION, "get_time", "get_system_info"]);

type Random = () => number;

function int(r: Random, n: number): number {
  return Math.floor(r() * n);
}

function pick<T>(r: Random, items: readonly T[]): T {
  return items[int(r, items.length)];
}

const KEYS = [
  "request_id",
  "command",
  "data",
  "timeout",
  "progress",
  "type",
  "msg_id",
  "timestamp",
  "action",
  "params",
  "success",
  "result",
  "error",
  "__proto__",
  "constructor",
  "prototype",
  "toString",
  "hasOwnProperty",
  "valueOf",
  "",
];

const NUMBERS = [
  "0",
  "-0",
  "1e400",
  "-1e400",
  "1e-400",
  "123456789012345678901234567890",
  "9007199254740993",
  "-1",
  "0.000001",
  "1.7976931348623157e308",
  "3",
];

function randomString(r: Random, max: number): string {
  const alphabets = [
    "abcdefghijklmnopqrstuvwxyz_",
    '"\\/\b\f\n\r\t{}[]:,',
    "日本語中文ü€😀\u0000\u001f\u2028\ud800",
  ];
  const n = int(r, max + 1);
  let s = "";
  for (let i = 0; i < n; i++) {
    const a = alphabets[int(r, r() < 0.8 ? 1 : 3)];
    s += a[int(r, a.length)];
  }
  return s;
}

/** A random JSON text: any value, nested a little, with hostile keys and numbers. */
function randomJson(r: Random, depth = 0): string {
  const k = int(r, depth > 3 ? 4 : 6);
  switch (k) {
    case 0:
      return pick(r, ["null", "true", "false"]);
    case 1:
      return pick(r, NUMBERS);
    case 2:
    case 3:
      return JSON.stringify(randomString(r, 20));
    case 4:
      return `[${
        Array.from({ length: int(r, 4) }, () => randomJson(r, depth + 1))
          .join(",")
      }]`;
    default:
      return `{${
        Array.from(
          { length: int(r, 5) },
          () => `${JSON.stringify(pick(r, KEYS))}:${randomJson(r, depth + 1)}`,
        ).join(",")
      }}`;
  }
}

/** A JSON value of a type other than `type`. */
function wrongTyped(r: Random, type: string): string {
  for (;;) {
    const text = randomJson(r, 2);
    const value = JSON.parse(text);
    const actual = value === null
      ? "null"
      : Array.isArray(value)
      ? "array"
      : typeof value;
    if (actual !== type) return text;
  }
}

function deep(n: number, inner = "1"): string {
  return "[".repeat(n) + inner + "]".repeat(n);
}

function validRequest(r: Random, i: number): Record<string, unknown> {
  return {
    request_id: `fz-${i}`,
    command: pick(r, ["fuzz_cmd", "get_time", "no_such", "get_markets"]),
    data: JSON.parse(randomJson(r, 2)),
    ...(r() < 0.3 ? { timeout: pick(r, [0.05, 1, 5]) } : {}),
  };
}

function mutate(r: Random, text: string): string {
  const chars = [...text];
  const n = 1 + int(r, 4);
  for (let i = 0; i < n && chars.length > 0; i++) {
    const at = int(r, chars.length);
    switch (int(r, 3)) {
      case 0:
        chars.splice(at, 1);
        break;
      case 1:
        chars.splice(at, 0, pick(r, ['"', "{", "}", "[", ",", ":", "\\", "x"]));
        break;
      default:
        chars[at] = pick(r, ['"', "0", "}", "]", "n", "\u0000"]);
    }
  }
  return chars.join("");
}

/** One hostile requester-port frame: text or bytes. */
function requesterFrame(r: Random, i: number): string | Uint8Array {
  const valid = validRequest(r, i);
  switch (int(r, 12)) {
    case 0:
      return randomString(r, 60);
    case 1: {
      const text = JSON.stringify(valid);
      return text.slice(0, int(r, text.length));
    }
    case 2:
      return pick(r, [
        "[".repeat(10_000),
        deep(10_000),
        `{"request_id":"deep-${i}","command":"${GOOD_ACTION}","data":${
          deep(5_000)
        }}`,
        `{"request_id":"deep-${i}","command":"fuzz_cmd","data":${
          '{"a":'.repeat(3000)
        }1${"}".repeat(3000)}}`,
        "{".repeat(10_000),
      ]);
    case 3:
      return pick(r, [
        `{"request_id":1e400,"command":"get_time"}`,
        `{"request_id":123456789012345678901234567890,"command":"fuzz_cmd"}`,
        `{"request_id":"n-${i}","command":"fuzz_cmd","timeout":1e400}`,
        `{"request_id":"n-${i}","command":"get_time","timeout":1e-400}`,
        `{"request_id":"n-${i}","command":"fuzz_cmd","data":1e400}`,
        "1e400",
        "123456789012345678901234567890",
      ]);
    case 4:
      return pick(r, [
        `{"__proto__":{"polluted":"yes"},"command":"fuzz_cmd","request_id":"p-${i}"}`,
        `{"constructor":{"prototype":{"polluted":"yes"}},"command":"fuzz_cmd"}`,
        `{"command":"get_time","data":{"__proto__":{"polluted":"yes"}},"request_id":"p-${i}"}`,
        `{"command":"__proto__","request_id":"__proto__"}`,
        `{"command":"constructor","request_id":"constructor"}`,
        `{"command":"toString","data":{"prototype":null}}`,
        `{"command":"hasOwnProperty"}`,
        `{"command":"get_markets","data":{"markets":{"__proto__":[]}}}`,
      ]);
    case 5: {
      const bytes = new Uint8Array(int(r, 64));
      for (let j = 0; j < bytes.length; j++) bytes[j] = int(r, 256);
      return bytes;
    }
    case 6: {
      const field = pick(r, [
        ["request_id", "string"],
        ["command", "string"],
        ["timeout", "number"],
        ["progress", "boolean"],
      ]);
      const text = JSON.stringify(valid);
      const obj = JSON.parse(text);
      delete obj[field[0]];
      const rest = JSON.stringify(obj).slice(1, -1);
      return `{"${field[0]}":${wrongTyped(r, field[1])}${
        rest ? "," + rest : ""
      }}`;
    }
    case 7:
      return pick(r, [
        JSON.stringify({ ...valid, command: "c".repeat(100_000) }),
        JSON.stringify({ ...valid, request_id: "i".repeat(10_000) }),
        JSON.stringify({ ...valid, data: "d".repeat(REQUESTER_LIMIT + 10) }),
        JSON.stringify({ ...valid, data: "d".repeat(REQUESTER_LIMIT - 200) }),
        " ".repeat(REQUESTER_LIMIT * 2),
      ]);
    case 8:
      return mutate(r, JSON.stringify(valid));
    case 9:
      return randomJson(r);
    case 10:
      return `{${
        Array.from(
          { length: 1 + int(r, 5) },
          () => `${JSON.stringify(pick(r, KEYS))}:${randomJson(r, 1)}`,
        ).join(",")
      }}`;
    default:
      return JSON.stringify(valid);
  }
}

/** Whether the server could legitimately answer `frame` with success. */
function mayPass(frame: string | Uint8Array): boolean {
  if (typeof frame !== "string" || frame.length > REQUESTER_LIMIT) {
    return false;
  }
  let value: Frame;
  try {
    value = JSON.parse(frame);
  } catch {
    return false;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return false;
  }
  const command = typeof value.command === "string" ? value.command.trim() : "";
  return WORKER_ACTIONS.has(command) || command === "get_markets";
}

/**
 * The `request_id` an answer to `frame` must carry when the frame names one the server can read
 * (a JSON object within the size limit whose `request_id` is a string of 1 to 200 characters);
 * `undefined` when the server may assign one or answer with `null`.
 */
function requestIdOf(frame: string | Uint8Array): string | undefined {
  if (typeof frame !== "string" || frame.length > REQUESTER_LIMIT) {
    return undefined;
  }
  let value: Frame;
  try {
    value = JSON.parse(frame);
  } catch {
    return undefined;
  }
  const id = value?.request_id;
  return typeof id === "string" && id.length > 0 && id.length <= 200
    ? id
    : undefined;
}

/** One hostile worker-port frame, and whether the server must call it malformed. */
function workerFrame(
  r: Random,
  i: number,
): { frame: string | Uint8Array; malformed: boolean } {
  const envelope = (type: string, data: string, msgId = `"wf-${i}"`) =>
    `{"type":${
      JSON.stringify(type)
    },"msg_id":${msgId},"timestamp":1.5,"data":${data}}`;
  const types = [
    "response",
    "heartbeat",
    "progress",
    "error",
    "request",
    "custom",
    "disconnect",
    "connect",
    "zzz",
  ];
  switch (int(r, 10)) {
    case 0:
      return { frame: randomString(r, 60), malformed: true };
    case 1: {
      const bytes = new Uint8Array(1 + int(r, 64));
      for (let j = 0; j < bytes.length; j++) bytes[j] = int(r, 256);
      return { frame: bytes, malformed: true };
    }
    case 2:
      return {
        frame: pick(r, ["[".repeat(10_000), deep(10_000), "1e400", "null"]),
        malformed: true,
      };
    case 3:
      return {
        frame: pick(r, [
          `{"type":${wrongTyped(r, "string")},"data":{}}`,
          `{"type":"","data":{}}`,
          `{"type":"heartbeat","msg_id":${wrongTyped(r, "string")}}`,
          `{"data":{"request_id":"x"}}`,
          " ".repeat(WORKER_LIMIT + 1),
        ]),
        malformed: true,
      };
    case 4:
      // A response of wrong shape or for a request this worker never got.
      return {
        frame: envelope(
          "response",
          pick(r, [
            wrongTyped(r, "object"),
            `{"request_id":${wrongTyped(r, "string")},"success":true}`,
            `{"request_id":"msg_${int(r, 1e9)}","success":${randomJson(r, 3)}}`,
            `{"request_id":"","result":${deep(3000)}}`,
          ]),
        ),
        malformed: false,
      };
    case 5:
      return {
        frame: envelope(
          pick(r, types),
          randomJson(r),
          pick(r, [`"wf-${i}"`, "null", `""`]),
        ),
        malformed: false,
      };
    case 6:
      // A connect with wrong types everywhere: must not break the registry.
      return {
        frame: envelope(
          "connect",
          `{"name":${randomJson(r, 3)},"weight":${
            pick(r, NUMBERS)
          },"max_concurrency":${randomJson(r, 3)},"actions":${
            pick(r, ["null", "7", `[1,null,{}]`, `["fuzz_only"]`])
          },"host":${randomJson(r, 2)},"__proto__":{"polluted":"yes"}}`,
        ),
        malformed: false,
      };
    case 7:
      return {
        frame: envelope(
          "request",
          pick(r, [
            `{"action":"calculate","params":{"a":1e400,"b":${
              pick(r, NUMBERS)
            },"op":${JSON.stringify(pick(r, ["+", "/", "**", "eval", ""]))}}}`,
            `{"action":"get_client_info","params":${randomJson(r, 2)}}`,
            `{"action":"__proto__"}`,
            `{"action":"constructor","params":{}}`,
            `{"action":${wrongTyped(r, "string")}}`,
          ]),
        ),
        malformed: false,
      };
    case 8:
      return {
        frame: mutate(r, envelope("heartbeat", "{}")),
        malformed: false,
      };
    default:
      return {
        frame: envelope("heartbeat", `{"blocked_sources":${randomJson(r, 2)}}`),
        malformed: false,
      };
  }
}

/** Whether the server must answer `frame` with an `error` whose msg_id is null. */
function isMalformedForWorkerPort(frame: string | Uint8Array): boolean {
  if (typeof frame !== "string" || frame.length > WORKER_LIMIT) return true;
  let value: Frame;
  try {
    value = JSON.parse(frame);
  } catch {
    return true;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return true;
  }
  if (typeof value.type !== "string" || value.type === "") return true;
  return value.msg_id !== undefined && typeof value.msg_id !== "string";
}

Deno.test("fuzz - hostile frames on both ports never disturb good peers or the server", async () => {
  const r = mulberry32(SEED);
  const protoBefore = Object.getOwnPropertyNames(Object.prototype).sort();
  const rssBefore = Deno.memoryUsage().rss;
  const started = Date.now();
  await using server = startTestServer({
    maxRequesterFrameBytes: REQUESTER_LIMIT,
    maxWorkerFrameBytes: WORKER_LIMIT,
    maxInFlightPerConnection: 100_000,
    maxQueue: 100_000,
  });
  await using worker = await startWorker(server, {
    name: "good",
    actions: {
      [GOOD_ACTION]: (params) => params,
    },
  });
  await using good = await connectClient(server.requesterUrl);
  await using fuzzRequester = await RawPeer.open(server.requesterUrl);
  const { peer: fuzzWorker, id: fuzzWorkerId } = await openRawWorker(server, {
    name: "fuzzer",
    actions: ["fuzz_only"],
  });
  await using _fuzzWorker = fuzzWorker;

  // The good requester keeps asking throughout; every answer must be right.
  let goodRequests = 0;
  let stopGood = false;
  const goodLoop = (async () => {
    const gr = mulberry32(SEED + 1);
    while (!stopGood) {
      await Promise.all(Array.from({ length: 4 }, async () => {
        const payload = {
          n: goodRequests++,
          text: randomString(gr, 40),
          list: [gr(), "x", null],
        };
        const answer = await good.request(GOOD_ACTION, payload, {
          timeout: 10,
        });
        assert.equal(answer.success, true, JSON.stringify(answer));
        assert.deepEqual(answer.data, JSON.parse(JSON.stringify(payload)));
      }));
      // A steady trickle, not a benchmark: the fuzzers are what should be busy.
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  })();

  try {
    // ---- requester port: one frame at a time, exactly one answer each -------------------------
    const answers = () =>
      fuzzRequester.received.filter((f) =>
        typeof f === "object" && f !== null && "success" in f
      ).length;
    const sent: (string | Uint8Array)[] = [];
    const kinds = { passed: 0, rejected: 0 };
    const codes: Record<string, number> = {};
    for (let i = 0; i < FRAMES_PER_PORT; i++) {
      const frame = requesterFrame(r, i);
      fuzzRequester.send(frame);
      sent.push(frame);
      const answer = await fuzzRequester.next(
        (f) => typeof f === "object" && f !== null && "success" in f,
        5000,
      ).catch(() => {
        throw new Error(
          `No answer to fuzz frame ${i}: ${String(frame).slice(0, 200)}`,
        );
      });
      const id = requestIdOf(frame);
      if (id !== undefined) {
        assert.equal(
          answer.request_id,
          id,
          `the answer to frame ${i} is its own: ${String(frame).slice(0, 200)}`,
        );
      }
      if (answer.success) {
        assert.ok(mayPass(frame), `frame ${i} passed: ${String(frame)}`);
        kinds.passed++;
      } else {
        assert.equal(typeof answer.error, "string");
        assert.ok(answer.error.length > 0);
        assert.equal(typeof answer.error_code, "string");
        codes[answer.error_code] = (codes[answer.error_code] ?? 0) + 1;
        kinds.rejected++;
      }
    }
    // A flood: many frames at once, still one answer each.
    const before = answers();
    for (let i = 0; i < FLOOD; i++) {
      const frame = requesterFrame(r, FRAMES_PER_PORT + i);
      fuzzRequester.send(frame);
      sent.push(frame);
    }
    await waitFor(
      () => answers() >= before + FLOOD,
      "an answer to each flood frame",
      10_000,
    );
    // A last request whose answer comes after every answer of the flood that was already on
    // its way; then the count must be exact: no frame got two answers.
    fuzzRequester.send({ request_id: "last", command: GOOD_ACTION, data: {} });
    sent.push("last");
    assert.equal((await fuzzRequester.answer("last")).success, true);
    const answered = fuzzRequester.received.filter((f) =>
      typeof f === "object" && f !== null && "success" in f
    );
    assert.equal(answered.length, sent.length, "exactly one answer per frame");
    // And each readable request_id got as many answers as frames carried it.
    const tally = (ids: (string | undefined)[]) => {
      const counts = new Map<string, number>();
      for (const id of ids) {
        if (id !== undefined) counts.set(id, (counts.get(id) ?? 0) + 1);
      }
      return counts;
    };
    const expected = tally(
      sent.map((f) => f === "last" ? "last" : requestIdOf(f)),
    );
    const got = tally(answered.map((f) => f.request_id));
    for (const [id, count] of expected) {
      assert.equal(got.get(id), count, `answers for request_id ${id}`);
    }

    // ---- worker port ----------------------------------------------------------------------------
    const nullErrors = () =>
      fuzzWorker.received.filter((f) =>
        f?.type === "error" && f.data?.msg_id === null
      ).length;
    let malformed = 0;
    for (let i = 0; i < FRAMES_PER_PORT; i++) {
      const { frame } = workerFrame(r, i);
      const bad = isMalformedForWorkerPort(frame);
      fuzzWorker.send(frame);
      if (bad) {
        malformed++;
        await fuzzWorker.next(
          (f) => f?.type === "error" && f.data?.msg_id === null,
        ).catch(() => {
          throw new Error(
            `No error frame for worker fuzz frame ${i}: ${
              String(frame).slice(0, 200)
            }`,
          );
        });
        assert.equal(nullErrors(), malformed, `frame ${i}`);
      }
    }
    for (let i = 0; i < FLOOD; i++) {
      fuzzWorker.sendEnvelope("heartbeat", { in_flight: i });
      fuzzWorker.send(randomString(r, 10) + "{");
    }
    malformed += FLOOD;
    await waitFor(() => nullErrors() === malformed, "flood errors", 10_000);
    // Barrier: the server has read everything before this heartbeat.
    const barrier = crypto.randomUUID();
    fuzzWorker.sendEnvelope("request", { action: "get_time" }, barrier);
    const time = await fuzzWorker.next((f) =>
      f?.type === "response" && f.data?.request_id === barrier
    );
    assert.equal(time.data.success, true);
    assert.equal(nullErrors(), malformed);

    stopGood = true;
    await goodLoop;

    // ---- afterwards: same process, still serving, nothing leaked --------------------------------
    assert.equal(fuzzRequester.socket.readyState, 1, "requester fuzzer kept");
    assert.equal(fuzzWorker.socket.readyState, 1, "worker fuzzer kept");
    assert.ok(
      server.broker.workers().some((w) => w.client_id === fuzzWorkerId),
    );
    const health = await (await fetch(
      `http://127.0.0.1:${server.requesterPort}/health`,
    )).json();
    assert.equal(health.status, "ok");
    assert.equal(health.requesters, 2);
    const last = await good.request(GOOD_ACTION, { last: true });
    assert.equal(last.success, true);
    assert.equal(worker.status().failed, 0);
    assert.deepEqual(
      Object.getOwnPropertyNames(Object.prototype).sort(),
      protoBefore,
    );
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    assert.equal(Object.prototype.toString.call([]), "[object Array]");
    const rssGrowth = (Deno.memoryUsage().rss - rssBefore) / 1024 / 1024;
    assert.ok(rssGrowth < 200, `rss grew by ${rssGrowth.toFixed(0)} MB`);
    console.log(
      `fuzz: ${
        FRAMES_PER_PORT + FLOOD
      } requester frames (${kinds.passed} valid-looking passed, ${
        kinds.rejected + FLOOD
      } rejected), ${
        FRAMES_PER_PORT + 2 * FLOOD
      } worker frames (${malformed} malformed), ` +
        `${goodRequests} good requests, 0 crashes, rss ${
          rssGrowth >= 0 ? "+" : ""
        }${rssGrowth.toFixed(0)} MB, ${Date.now() - started} ms`,
    );
    console.log(`fuzz: requester error codes ${JSON.stringify(codes)}`);
  } finally {
    stopGood = true;
    await goodLoop.catch(() => {});
  }
});
