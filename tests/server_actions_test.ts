import assert from "node:assert/strict";
import { calculate, serverActions } from "../lib/broker/server_actions.ts";
import { formatLocalTime } from "../lib/_local_time.ts";
import { InvalidParamsError } from "../lib/errors.ts";
import { setupLogging } from "../lib/mod.ts";
import { runProgram } from "./_procs.ts";
import { startTestServer } from "./_helpers.ts";

Deno.test("calculate() does + - * / ** %", () => {
  assert.equal(calculate({ a: 10, b: 20, op: "+" }), 30);
  assert.equal(calculate({ a: 10, b: 20, op: "-" }), -10);
  assert.equal(calculate({ a: 10, b: 20, op: "*" }), 200);
  assert.equal(calculate({ a: 10, b: 4, op: "/" }), 2.5);
  assert.equal(calculate({ a: 2, b: 10, op: "**" }), 1024);
  assert.equal(calculate({ a: 10, b: 3, op: "%" }), 1);
  assert.equal(calculate({ a: 1.5, b: 2 }), 3.5, "op defaults to +");
});

Deno.test("calculate() refuses division and modulo by zero", () => {
  for (const op of ["/", "%"]) {
    assert.throws(() => calculate({ a: 1, b: 0, op }), {
      name: "RangeError",
      message: "Division by zero",
    });
  }
});

Deno.test("calculate() refuses operands that are not finite numbers", () => {
  for (
    const bad of ["10", null, undefined, true, [1], { v: 1 }, NaN, Infinity]
  ) {
    assert.throws(
      () => calculate({ a: bad, b: 1, op: "+" }),
      (error) =>
        error instanceof InvalidParamsError &&
        error.message.startsWith("Operand 'a' must be a finite number: got "),
      `operand ${String(bad)}`,
    );
  }
  assert.throws(
    () => calculate({ a: 1, op: "+" }),
    /Operand 'b' must be a finite number: got undefined/,
  );
  assert.throws(
    () => calculate({ a: "1+1", b: 2 }),
    /Operand 'a' must be a finite number: got "1\+1"/,
  );
});

Deno.test("calculate() refuses unknown operators and params that are not an object", () => {
  for (
    const op of ["^", "//", "&&", "", 1, "constructor", "__proto__", "toString"]
  ) {
    assert.throws(
      () => calculate({ a: 1, b: 2, op }),
      (error) =>
        error instanceof InvalidParamsError &&
        error.message ===
          `Unknown operator ${
            JSON.stringify(op)
          }: expected one of + - * / ** %`,
      `op ${String(op)}`,
    );
  }
  for (const params of [null, "1+1", [1, 2], 3]) {
    assert.throws(() => calculate(params), {
      name: "InvalidParamsError",
      message: /^Params must be an object/,
    });
  }
});

Deno.test("calculate() refuses a key it does not know, listing the ones it expects", () => {
  assert.throws(() => calculate({ a: 1, b: 2, operation: "*" }), {
    name: "InvalidParamsError",
    message:
      "Unknown key 'operation' for calculate: expected a, b and op (one of + - * / ** %)",
  });
});

Deno.test("calculate - a wrong key from the requester CLI answers INVALID_PARAMS and exits 1", async () => {
  setupLogging({ level: "error" });
  await using server = startTestServer();
  const out = await runProgram("requester.ts", [
    "--url",
    server.requesterUrl,
    "--compact",
    "calculate",
    '{"a": 6, "b": 7, "operation": "*"}',
  ]);
  assert.equal(out.code, 1, out.stderr);
  const answer = JSON.parse(out.stdout);
  assert.equal(answer.success, false);
  assert.equal(answer.error_code, "INVALID_PARAMS");
  assert.match(answer.error, /Unknown key 'operation'.*expected a, b and op/);
});

Deno.test("calculate() refuses a result that is not finite", () => {
  assert.throws(
    () => calculate({ a: 10, b: 400, op: "**" }),
    /not a finite number/,
  );
});

Deno.test("calculate() never evaluates strings", () => {
  const globals = globalThis as Record<string, unknown>;
  delete globals.__evaluated;
  for (
    const op of [
      "+ (globalThis.__evaluated = 1) +",
      "+'); globalThis.__evaluated = 1; ('",
      "`${globalThis.__evaluated = 1}`",
    ]
  ) {
    assert.throws(() => calculate({ a: 1, b: 2, op }), InvalidParamsError);
  }
  assert.throws(
    () => calculate({ a: "globalThis.__evaluated = 1", b: 2 }),
    InvalidParamsError,
  );
  assert.equal(globals.__evaluated, undefined);
});

Deno.test("formatLocalTime() prints YYYY-MM-DD HH:MM:SS", () => {
  assert.equal(
    formatLocalTime(new Date(2025, 9, 20, 15, 30, 45)),
    "2025-10-20 15:30:45",
  );
  assert.equal(
    formatLocalTime(new Date(2025, 0, 2, 3, 4, 5)),
    "2025-01-02 03:04:05",
  );
});

Deno.test("serverActions() offers get_time, get_client_info and calculate", async () => {
  const ctx = { signal: new AbortController().signal, requestId: "" };
  const actions = serverActions(() => []);
  assert.deepEqual(Object.keys(actions).sort(), [
    "calculate",
    "get_client_info",
    "get_time",
  ]);
  assert.match(
    String(await actions.get_time({}, ctx)),
    /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/,
  );
  assert.deepEqual(await actions.get_client_info({}, ctx), []);
  assert.equal(await actions.calculate({ a: 6, b: 7, op: "*" }, ctx), 42);
});
