/**
 * Streamed batch items spliced, not re-encoded: a worker's item result goes to the requester as
 * the text the worker sent, with the frames rewritten around it. Parsing a large result and
 * stringifying it again cost the server most of its CPU per item and, while items waited for a
 * slow reader, the memory of their object trees; the text costs a byte a character.
 *
 * Only what the server reads stays parsed: the envelope around the result. A spliced result is
 * a successful object (it starts with `"success": true`): the batch needs nothing else from it.
 * It turns into its value where one is needed (a store that keeps bars, a batch answered in one
 * frame, the HTTP API) through `toJSON`, so every other path is unchanged.
 *
 * @module
 */

/** Results shorter than this are parsed as before: a splice gains nothing on them. */
export const SPLICE_MIN_CHARS = 16 * 1024;

/** A successful item result held as the worker's JSON text. */
export class RawResult {
  /** The result's JSON text, as the worker sent it (plus `processed_by`, once annotated). */
  readonly text: string;
  /** What the batch reads of a result: a spliced one always succeeded. */
  readonly success = true;
  #value: unknown;

  /** A result whose JSON text is `text` (an object that starts with `"success": true`). */
  constructor(text: string) {
    this.text = text;
  }

  /** The parsed result, made once when first asked for. */
  get value(): unknown {
    return this.#value ??= JSON.parse(this.text);
  }

  /** `JSON.stringify` writes the value, so paths that serialize objects see no difference. */
  toJSON(): unknown {
    return this.value;
  }

  /**
   * The result with `processed_by: workerId` added at its end, as the batch annotates a parsed
   * one; itself when the text names a `processed_by` anywhere (parse to be sure, then).
   */
  annotated(workerId: string): RawResult | unknown {
    if (this.text.includes('"processed_by"')) {
      const value = this.value as Record<string, unknown>;
      return "processed_by" in value
        ? value
        : { ...value, processed_by: workerId };
    }
    const close = this.text.lastIndexOf("}");
    return new RawResult(
      `${this.text.slice(0, close)},"processed_by":${
        JSON.stringify(workerId)
      }}`,
    );
  }
}

/** The value of `result`: a spliced one parsed, anything else as it is. */
export function resultValue(result: unknown): unknown {
  return result instanceof RawResult ? result.value : result;
}

/** A span of the frame's text: an item result of envelope `envelope` (0 for a lone one). */
interface Span {
  envelope: number;
  start: number;
  end: number;
}

/** Where the string that opens at `at` closes (its quote), or -1. */
function stringEnd(s: string, at: number): number {
  let q = at + 1;
  for (;;) {
    q = s.indexOf('"', q);
    if (q < 0) return -1;
    let b = q - 1;
    while (s.charCodeAt(b) === 92) b--;
    // An even run of backslashes before the quote escapes only themselves.
    if (((q - 1 - b) & 1) === 0) return q;
    q++;
  }
}

// Outside strings, JSON holds only these: structure, whitespace, numbers and the literals.
const ALLOWED = new Uint8Array(128);
for (const c of "{}[],: \t\r\n0123456789+-.eEtrufalsn") {
  ALLOWED[c.charCodeAt(0)] = 1;
}

/**
 * Where the object or array that opens at `at` ends (past its closing bracket), or -1 when the
 * text is not balanced or holds a character no JSON has outside strings.
 */
function valueEnd(s: string, at: number): number {
  let depth = 0;
  const n = s.length;
  for (let i = at; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 34) {
      i = stringEnd(s, i);
      if (i < 0) return -1;
    } else if (c === 123 || c === 91) depth++;
    else if (c === 125 || c === 93) {
      if (--depth === 0) return i + 1;
    } else if (c >= 128 || ALLOWED[c] === 0) return -1;
  }
  return -1;
}

/** Whether the object at `at` starts with `"success": true`. */
function startsWithSuccess(s: string, at: number): boolean {
  return /^\{\s*"success"\s*:\s*true\s*,/.test(s.slice(at, at + 40));
}

/**
 * Finds the `data.item.result` objects of a worker frame (one envelope or an array of them)
 * that a splice can take: large, successful, balanced. Only the frame's own structure is read;
 * each result is skimmed once for its end. Undefined when there is none.
 */
function findItemResults(s: string): Span[] | undefined {
  const spans: Span[] = [];
  // For each open container: whether it is an object, and the key it has in its parent.
  const objects: boolean[] = [];
  const keys: (string | null)[] = [];
  let key: string | null = null;
  let expectKey = false;
  let envelope = -1;
  let base = -1;
  const n = s.length;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 34) {
      const end = stringEnd(s, i);
      if (end < 0) return undefined;
      if (expectKey) {
        key = s.slice(i + 1, end);
        expectKey = false;
      }
      i = end;
    } else if (c === 123 || c === 91) {
      const depth = objects.length;
      if (base < 0) base = c === 91 ? 1 : 0;
      const own = depth > 0 && objects[depth - 1] ? key : null;
      if (
        c === 123 && own === "result" && depth === base + 3 &&
        keys[base + 2] === "item" && keys[base + 1] === "data" &&
        startsWithSuccess(s, i)
      ) {
        const end = valueEnd(s, i);
        if (end < 0) return undefined;
        if (end - i >= SPLICE_MIN_CHARS) {
          spans.push({ envelope, start: i, end });
        }
        i = end - 1;
        key = null;
        continue;
      }
      if (depth === base) envelope++;
      objects.push(c === 123);
      keys.push(own);
      expectKey = c === 123;
      key = null;
    } else if (c === 125 || c === 93) {
      objects.pop();
      keys.pop();
    } else if (c === 44) {
      expectKey = objects[objects.length - 1] === true;
    }
  }
  return spans.length > 0 ? spans : undefined;
}

/**
 * Parses a worker frame with its large item results spliced out: each becomes a
 * {@linkcode RawResult} holding the worker's text. Undefined when the frame has none (parse it
 * as usual then); throws as `JSON.parse` does when the rest is not JSON.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseSpliced, RawResult } from "./raw_result.ts";
 * const result = `{"success":true,"data":"${"x".repeat(20_000)}"}`;
 * const frame = `{"type":"progress","msg_id":"m","timestamp":1,` +
 *   `"data":{"request_id":"r","done":1,"total":2,"item":{"index":0,"result":${result}}}}`;
 * const envelope = parseSpliced(frame) as { data: { item: { result: RawResult } } };
 * assert.equal(envelope.data.item.result.text, result);
 * ```
 */
export function parseSpliced(raw: string): unknown | undefined {
  if (raw.length < SPLICE_MIN_CHARS || !raw.includes('"item"')) {
    return undefined;
  }
  const spans = findItemResults(raw);
  if (spans === undefined) return undefined;
  let skeleton = "";
  let at = 0;
  for (const span of spans) {
    skeleton += raw.slice(at, span.start) + "null";
    at = span.end;
  }
  skeleton += raw.slice(at);
  const value = JSON.parse(skeleton);
  const envelopes = Array.isArray(value) ? value : [value];
  for (const span of spans) {
    const item = envelopes[span.envelope]?.data?.item;
    if (item && typeof item === "object" && item.result === null) {
      item.result = new RawResult(raw.slice(span.start, span.end));
    }
  }
  return value;
}
