import assert from "node:assert/strict";
import { ErrorCode, ProtocolError } from "../lib/errors.ts";
import {
  decodeEnvelope,
  encodeEnvelope,
  failureAnswer,
  parseRequesterFrame,
  readRequestData,
  readResponseData,
  unixSeconds,
} from "../lib/protocol.ts";

function protocolError(code: string, message?: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof ProtocolError, `got ${error}`);
    assert.equal(error.code, code);
    if (message) assert.match(error.message, message);
    return true;
  };
}

Deno.test("encodeEnvelope() writes the original's envelope and decodeEnvelope() reads it back", () => {
  const text = encodeEnvelope(
    "request",
    { action: "get_time", params: {} },
    "msg_1",
  );
  const raw = JSON.parse(text);
  assert.deepEqual(Object.keys(raw).sort(), [
    "data",
    "msg_id",
    "timestamp",
    "type",
  ]);
  assert.equal(raw.type, "request");
  assert.equal(raw.msg_id, "msg_1");
  assert.ok(Math.abs(raw.timestamp - Date.now() / 1000) < 5, "Unix seconds");
  assert.deepEqual(decodeEnvelope(text), raw);
});

Deno.test("encodeEnvelope() makes up a msg_ id in the original's form when none is given", () => {
  const a = JSON.parse(encodeEnvelope("heartbeat", {}));
  const b = JSON.parse(encodeEnvelope("heartbeat", {}));
  assert.match(a.msg_id, /^msg_\d+$/);
  assert.notEqual(a.msg_id, b.msg_id);
});

Deno.test("unixSeconds() keeps millisecond precision as a fraction", () => {
  assert.equal(unixSeconds(1_700_000_000_123), 1_700_000_000.123);
});

Deno.test("decodeEnvelope() tolerates missing msg_id, timestamp and data", () => {
  const envelope = decodeEnvelope('{"type":"heartbeat"}');
  assert.equal(envelope.type, "heartbeat");
  assert.equal(envelope.msg_id, "");
  assert.equal(typeof envelope.timestamp, "number");
  assert.deepEqual(envelope.data, {});
});

Deno.test("decodeEnvelope() rejects text that is not JSON with INVALID_JSON", () => {
  assert.throws(
    () => decodeEnvelope("{nope"),
    protocolError(ErrorCode.INVALID_JSON, /^Cannot parse frame as JSON: /),
  );
});

Deno.test("decodeEnvelope() rejects a frame that is not an object with INVALID_FRAME", () => {
  for (
    const [text, kind] of [
      ["[1]", "array"],
      ["3", "number"],
      ['"x"', "string"],
      ["null", "null"],
    ]
  ) {
    assert.throws(
      () => decodeEnvelope(text),
      protocolError(ErrorCode.INVALID_FRAME, new RegExp(`got ${kind}$`)),
    );
  }
});

Deno.test("decodeEnvelope() rejects a missing, empty or ill-typed type and msg_id", () => {
  assert.throws(
    () => decodeEnvelope("{}"),
    protocolError(ErrorCode.INVALID_FIELD, /'type'/),
  );
  assert.throws(
    () => decodeEnvelope('{"type":""}'),
    protocolError(ErrorCode.INVALID_FIELD, /'type'/),
  );
  assert.throws(
    () => decodeEnvelope('{"type":7}'),
    protocolError(ErrorCode.INVALID_FIELD, /got number/),
  );
  assert.throws(
    () => decodeEnvelope('{"type":"request","msg_id":5}'),
    protocolError(ErrorCode.INVALID_FIELD, /'msg_id'/),
  );
});

Deno.test("parseJson maps absurdly deep nesting to a ProtocolError instead of crashing", () => {
  const deep = "[".repeat(200_000) + "]".repeat(200_000);
  assert.throws(() => decodeEnvelope(deep), (e) => e instanceof ProtocolError);
});

Deno.test("readRequestData() requires an object with a non-empty action and defaults params to {}", () => {
  assert.deepEqual(readRequestData({ action: "get_time" }), {
    action: "get_time",
    params: {},
  });
  assert.deepEqual(readRequestData({ action: "x", params: [1] }), {
    action: "x",
    params: [1],
  });
  assert.throws(
    () => readRequestData("x"),
    protocolError(ErrorCode.INVALID_FIELD, /got string/),
  );
  assert.throws(
    () => readRequestData({ action: "" }),
    protocolError(ErrorCode.INVALID_FIELD, /data\.action/),
  );
  assert.throws(
    () => readRequestData({ action: 1 }),
    protocolError(ErrorCode.INVALID_FIELD, /got number/),
  );
});

Deno.test("readResponseData() reads the original's response and infers success from error", () => {
  assert.deepEqual(
    readResponseData({
      request_id: "m1",
      success: true,
      result: 3,
      error: null,
    }),
    {
      request_id: "m1",
      success: true,
      result: 3,
      error: null,
      error_code: undefined,
    },
  );
  const failed = readResponseData({ request_id: "m2", error: "boom" });
  assert.equal(failed.success, false);
  assert.equal(failed.error, "boom");
  assert.equal(failed.result, null);
  assert.equal(readResponseData({ request_id: "m3" }).success, true);
  assert.equal(
    readResponseData({ request_id: "m4", success: false, error_code: "X" })
      .error_code,
    "X",
  );
});

Deno.test("readResponseData() rejects a response without a string request_id", () => {
  assert.throws(
    () => readResponseData(null),
    protocolError(ErrorCode.INVALID_FIELD, /got null/),
  );
  assert.throws(
    () => readResponseData({ request_id: 5 }),
    protocolError(ErrorCode.INVALID_FIELD, /data\.request_id/),
  );
  assert.throws(
    () => readResponseData({ request_id: "" }),
    protocolError(ErrorCode.INVALID_FIELD),
  );
});

Deno.test("parseRequesterFrame() reads the original's request and assigns a request_id when absent", () => {
  const given = parseRequesterFrame(
    '{"request_id":"r1","command":"get_time","data":{"x":1}}',
  );
  assert.deepEqual(given, {
    request_id: "r1",
    assignedId: false,
    command: "get_time",
    data: { x: 1 },
    timeout: undefined,
    progress: false,
    stream: false,
  });
  const assigned = parseRequesterFrame('{"command":"get_time"}');
  assert.equal(assigned.assignedId, true);
  assert.match(assigned.request_id, /^[0-9a-f-]{36}$/);
  assert.deepEqual(assigned.data, {});
  assert.deepEqual(parseRequesterFrame('{"command":"c","data":null}').data, {});
});

Deno.test("parseRequesterFrame() accepts a numeric request_id as text and trims the command", () => {
  const request = parseRequesterFrame(
    '{"request_id":42,"command":"  get_time "}',
  );
  assert.equal(request.request_id, "42");
  assert.equal(request.command, "get_time");
});

Deno.test("parseRequesterFrame() caps timeout and reads progress", () => {
  const request = parseRequesterFrame(
    '{"command":"c","timeout":9999,"progress":true}',
    {
      maxTimeoutSeconds: 60,
    },
  );
  assert.equal(request.timeout, 60);
  assert.equal(request.progress, true);
  assert.equal(
    parseRequesterFrame('{"command":"c","timeout":0.5}').timeout,
    0.5,
  );
});

Deno.test("parseRequesterFrame() rejects bad fields and keeps the request_id for the answer", () => {
  const cases: [string, RegExp][] = [
    ['{"request_id":"a"}', /^Field 'command' is missing$/],
    [
      '{"request_id":"a","command":5}',
      /'command' must be a non-empty string: got number/,
    ],
    [
      '{"request_id":"a","command":"  "}',
      /'command' must be a non-empty string/,
    ],
    [
      '{"request_id":"a","command":"c","timeout":"5"}',
      /'timeout' must be a positive number/,
    ],
    [
      '{"request_id":"a","command":"c","timeout":-1}',
      /'timeout' must be a positive number/,
    ],
    [
      '{"request_id":"a","command":"c","progress":"yes"}',
      /'progress' must be a boolean: got string/,
    ],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => parseRequesterFrame(text), (e) => {
      protocolError(ErrorCode.INVALID_FIELD, message)(e);
      assert.equal((e as ProtocolError).requestId, "a", text);
      return true;
    });
  }
});

Deno.test("parseRequesterFrame() rejects an ill-typed or overlong request_id", () => {
  assert.throws(
    () => parseRequesterFrame('{"request_id":{},"command":"c"}'),
    protocolError(
      ErrorCode.INVALID_FIELD,
      /'request_id' must be a non-empty string: got object/,
    ),
  );
  assert.throws(
    () =>
      parseRequesterFrame(
        JSON.stringify({ request_id: "x".repeat(201), command: "c" }),
      ),
    protocolError(ErrorCode.INVALID_FIELD, /too long/),
  );
});

Deno.test("parseRequesterFrame() rejects non-JSON and non-objects", () => {
  assert.throws(
    () => parseRequesterFrame("hello"),
    protocolError(ErrorCode.INVALID_JSON),
  );
  assert.throws(
    () => parseRequesterFrame("[]"),
    protocolError(ErrorCode.INVALID_FRAME, /got array/),
  );
});

Deno.test("failureAnswer() has every field of the original's answer", () => {
  assert.deepEqual(
    failureAnswer("r", "No available workers", "NO_WORKERS", { attempts: 1 }),
    {
      request_id: "r",
      success: false,
      data: null,
      error: "No available workers",
      processed_by: null,
      error_code: "NO_WORKERS",
      attempts: 1,
    },
  );
});

Deno.test("parseRequesterFrame() reads a cancel frame, and cancel: false is an ordinary request", () => {
  const cancel = parseRequesterFrame('{"request_id":"r1","cancel":true}');
  assert.equal(cancel.cancel, true);
  assert.equal(cancel.request_id, "r1");
  const ordinary = parseRequesterFrame(
    '{"request_id":"r2","command":"get_time","cancel":false}',
  );
  assert.equal(ordinary.cancel, undefined);
  assert.equal(ordinary.command, "get_time");
  assert.throws(
    () => parseRequesterFrame('{"cancel":true}'),
    protocolError(ErrorCode.INVALID_FIELD, /needs the 'request_id'/),
  );
  assert.throws(
    () => parseRequesterFrame('{"request_id":"r3","cancel":1}'),
    protocolError(ErrorCode.INVALID_FIELD, /'cancel' must be true: got number/),
  );
});
