/**
 * Actions the server itself answers: requested by workers over the worker port, or run from the
 * server console.
 *
 * @module
 */

import type { ActionHandler } from "../action.ts";
import type { WorkerInfo } from "./registry.ts";
import { InvalidParamsError } from "../errors.ts";
import { formatLocalTime } from "../_local_time.ts";

const OPERATIONS: Record<string, (a: number, b: number) => number> = {
  "+": (a, b) => a + b,
  "-": (a, b) => a - b,
  "*": (a, b) => a * b,
  "/": (a, b) => a / b,
  "**": (a, b) => a ** b,
  "%": (a, b) => a % b,
};

function operand(params: Record<string, unknown>, name: "a" | "b"): number {
  const value = params[name];
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new InvalidParamsError(
      `Operand '${name}' must be a finite number: got ${
        JSON.stringify(value) ?? "undefined"
      }`,
    );
  }
  return value;
}

const CALCULATE_KEYS = ["a", "b", "op"];

/**
 * `calculate`: `{a, b, op}` with `op` one of `+ - * / ** %`. Never evaluates strings. A key it
 * does not know (`operation` for `op`) is refused rather than ignored: ignoring it would answer
 * a sum nobody asked for.
 */
export function calculate(params: unknown): number {
  if (typeof params !== "object" || params === null || Array.isArray(params)) {
    throw new InvalidParamsError(
      'Params must be an object such as {"a": 10, "b": 20, "op": "+"}',
    );
  }
  const p = params as Record<string, unknown>;
  const unknown = Object.keys(p).filter((k) => !CALCULATE_KEYS.includes(k));
  if (unknown.length > 0) {
    throw new InvalidParamsError(
      `Unknown key${unknown.length > 1 ? "s" : ""} ${
        unknown.map((k) => `'${k}'`).join(", ")
      } for calculate: expected a, b and op (one of ${
        Object.keys(OPERATIONS).join(" ")
      })`,
    );
  }
  const a = operand(p, "a");
  const b = operand(p, "b");
  const op = p.op ?? "+";
  if (typeof op !== "string" || !Object.hasOwn(OPERATIONS, op)) {
    throw new InvalidParamsError(
      `Unknown operator ${JSON.stringify(op)}: expected one of ${
        Object.keys(OPERATIONS).join(" ")
      }`,
    );
  }
  if ((op === "/" || op === "%") && b === 0) {
    throw new RangeError("Division by zero");
  }
  const result = OPERATIONS[op](a, b);
  if (!Number.isFinite(result)) {
    throw new RangeError(`Result is not a finite number: ${a} ${op} ${b}`);
  }
  return result;
}

/** The built-in server actions, bound to a function that lists the workers. */
export function serverActions(
  listWorkers: () => WorkerInfo[],
): Record<string, ActionHandler> {
  return {
    get_time: () => formatLocalTime(),
    get_client_info: () => listWorkers(),
    calculate: (params) => calculate(params),
  };
}
