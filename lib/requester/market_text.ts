/**
 * Reads a streamed `get_markets` item straight from its frame's bytes: the result's small fields
 * parsed, and its bars turned into CSV bytes without a string or an object per bar.
 *
 * A full daily history is ~0.5 MB of JSON and ~2,900 bars. Decoding the frame to a string,
 * parsing it (some 35,000 objects and numbers) and rendering the CSV string makes several times
 * the data in garbage per item; over a thousand symbols that garbage, not the data, is what sets
 * the requester's memory. The scanner here walks the frame's UTF-8 bytes, validates every byte
 * (it accepts exactly JSON), and writes the CSV into one byte buffer. It gives up, returning
 * `undefined`, on anything it does not expect, such as a bar field holding an object: the caller
 * then parses the frame as before.
 *
 * @module
 */

import { BAR_FIELDS, columnsOf, type ColumnStyle } from "./market_files.ts";

/** An item frame, read: its result without `data`, and its bars ready to render. */
export interface ItemText {
  /** The item's position in the batch. */
  index: number;
  /** The item's result with its `data` left out. */
  result: Record<string, unknown>;
  /** How many bars `data` holds (0 when it is not an array). */
  bars: number;
  /**
   * The bars as CSV bytes, exactly what `renderMarketFile(result, "csv", columns, options)`
   * writes, UTF-8 encoded; `undefined` when a bar holds an object or an array.
   */
  csv(
    columns?: ColumnStyle,
    options?: {
      symbol?: { symbol_type: string; code: string };
      header?: boolean;
    },
  ): Uint8Array | undefined;
}

const MAX_DEPTH = 64;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function space(s: Uint8Array, i: number): number {
  while (i < s.length) {
    const c = s[i];
    if (c === 32 || c === 10 || c === 13 || c === 9) i++;
    else break;
  }
  return i;
}

function isHex(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102);
}

/** What the last string scanned held: escapes, or bytes outside ASCII. */
let stringPlain = true;

/** The end of the string that starts at `i` (a `"`), or -1 when it is not valid JSON. */
function endOfString(s: Uint8Array, i: number): number {
  if (s[i] !== 34) return -1;
  stringPlain = true;
  i++;
  while (i < s.length) {
    const c = s[i];
    if (c === 34) return i + 1;
    if (c < 32) return -1;
    if (c === 92) {
      stringPlain = false;
      const e = s[i + 1];
      if (e === 117) {
        if (
          !(isHex(s[i + 2]) && isHex(s[i + 3]) && isHex(s[i + 4]) &&
            isHex(s[i + 5]))
        ) {
          return -1;
        }
        i += 6;
        continue;
      }
      // " \ / b f n r t
      if (
        e !== 34 && e !== 92 && e !== 47 && e !== 98 && e !== 102 &&
        e !== 110 && e !== 114 && e !== 116
      ) return -1;
      i += 2;
      continue;
    }
    if (c >= 128) stringPlain = false;
    i++;
  }
  return -1;
}

function digits(s: Uint8Array, i: number): number {
  const start = i;
  while (i < s.length && s[i] >= 48 && s[i] <= 57) i++;
  return i > start ? i : -1;
}

/** Whether the last number scanned would print differently in JavaScript. */
let numberOdd = false;

/** The end of the number that starts at `i`, or -1 when it is not valid JSON. */
function endOfNumber(s: Uint8Array, i: number): number {
  const start = i;
  numberOdd = false;
  if (s[i] === 45) i++;
  if (s[i] === 48) i++;
  else if ((i = digits(s, i)) < 0) return -1;
  if (s[i] === 46) {
    if ((i = digits(s, i + 1)) < 0) return -1;
    if (s[i - 1] === 48) numberOdd = true; // a trailing zero: 1.50 prints as 1.5
  }
  if (s[i] === 101 || s[i] === 69) {
    numberOdd = true;
    i++;
    if (s[i] === 43 || s[i] === 45) i++;
    if ((i = digits(s, i)) < 0) return -1;
  }
  // -0 prints as 0; past 15 digits the printed number may differ from its text.
  if (
    i - start > 15 ||
    (s[start] === 45 && s[start + 1] === 48 && i === start + 2)
  ) {
    numberOdd = true;
  }
  return i;
}

function word(s: Uint8Array, i: number, w: string): boolean {
  for (let k = 0; k < w.length; k++) {
    if (s[i + k] !== w.charCodeAt(k)) return false;
  }
  return true;
}

/** The end of any JSON value that starts at `i`, or -1. */
function endOfValue(s: Uint8Array, i: number, depth: number): number {
  const c = s[i];
  if (c === 34) return endOfString(s, i);
  if (c === 123) return members(s, i, depth + 1, () => true);
  if (c === 91) {
    return elements(s, i, depth + 1, (at) => endOfValue(s, at, depth + 1));
  }
  if (c === 45 || (c >= 48 && c <= 57)) return endOfNumber(s, i);
  if (c === 116 && word(s, i, "true")) return i + 4;
  if (c === 102 && word(s, i, "false")) return i + 5;
  if (c === 110 && word(s, i, "null")) return i + 4;
  return -1;
}

/**
 * Walks the object at `i`, calling `visit` with each key's span (quotes included), whether the
 * key is plain ASCII, and the value's span; `visit` returning false stops the walk as invalid.
 * Returns the object's end, or -1.
 */
function members(
  s: Uint8Array,
  i: number,
  depth: number,
  visit: (
    ks: number,
    ke: number,
    plain: boolean,
    start: number,
    end: number,
  ) => boolean,
): number {
  if (depth > MAX_DEPTH || s[i] !== 123) return -1;
  i = space(s, i + 1);
  if (s[i] === 125) return i + 1;
  while (true) {
    const keyEnd = endOfString(s, i);
    if (keyEnd < 0) return -1;
    const plain = stringPlain;
    let at = space(s, keyEnd);
    if (s[at] !== 58) return -1;
    at = space(s, at + 1);
    const end = endOfValue(s, at, depth);
    if (end < 0 || !visit(i, keyEnd, plain, at, end)) return -1;
    i = space(s, end);
    if (s[i] === 125) return i + 1;
    if (s[i] !== 44) return -1;
    i = space(s, i + 1);
  }
}

/** Walks the array at `i`; `element` returns each element's end (or -1). Returns the end, or -1. */
function elements(
  s: Uint8Array,
  i: number,
  depth: number,
  element: (at: number) => number,
): number {
  if (depth > MAX_DEPTH || s[i] !== 91) return -1;
  i = space(s, i + 1);
  if (s[i] === 93) return i + 1;
  while (true) {
    const end = element(i);
    if (end < 0) return -1;
    i = space(s, end);
    if (s[i] === 93) return i + 1;
    if (s[i] !== 44) return -1;
    i = space(s, i + 1);
  }
}

/** The key at `ks..ke` (quotes included), decoded. */
function keyOf(s: Uint8Array, ks: number, ke: number, plain: boolean): string {
  return plain
    ? String.fromCharCode(...s.subarray(ks + 1, ke - 1))
    : JSON.parse(decoder.decode(s.subarray(ks, ke)));
}

/** Reads an item frame `{"request_id", "item": {"index", "result"}}`; undefined if it is not one. */
export function readItemBytes(bytes: Uint8Array): ItemText | undefined {
  const s = bytes;
  let item: [number, number] | undefined;
  const top = members(s, space(s, 0), 1, (ks, ke, plain, start, end) => {
    if (ke - ks < 16 && keyOf(s, ks, ke, plain) === "item") item = [start, end];
    return true;
  });
  if (top < 0 || space(s, top) !== s.length || !item) return undefined;
  let index: number | undefined;
  let result: [number, number] | undefined;
  if (
    members(s, item[0], 2, (ks, ke, plain, start, end) => {
        const key = ke - ks < 16 ? keyOf(s, ks, ke, plain) : "";
        if (key === "index") {
          index = Number(decoder.decode(s.subarray(start, end)));
        }
        if (key === "result") result = [start, end];
        return true;
      }) < 0 || !Number.isInteger(index) || !result || s[result[0]] !== 123
  ) return undefined;
  let data: [number, number] | undefined;
  members(s, result[0], 3, (ks, ke, plain, start, end) => {
    if (ke - ks < 16 && keyOf(s, ks, ke, plain) === "data") data = [start, end];
    return true;
  });
  // The result without its bars: small, so parsed the ordinary way.
  const meta = JSON.parse(
    data
      ? decoder.decode(s.subarray(result[0], data[0])) + "null" +
        decoder.decode(s.subarray(data[1], result[1]))
      : decoder.decode(s.subarray(result[0], result[1])),
  ) as Record<string, unknown>;
  const isArray = data !== undefined && s[data[0]] === 91;
  if (data) delete meta.data;
  let bars = 0;
  if (isArray) {
    elements(s, data![0], 4, (at) => {
      bars++;
      return endOfValue(s, at, 4);
    });
  }
  return {
    index: index!,
    result: meta,
    bars,
    csv: (columns = "english", options = {}) =>
      isArray ? barsCsv(s, data![0], columns, options) : undefined,
  };
}

/** {@linkcode readItemBytes} of a frame that is already text. */
export function readItemText(text: string): ItemText | undefined {
  return readItemBytes(encoder.encode(text));
}

/** A CSV cell as csv-stringify writes it: quoted when it holds a comma, a quote or a line end. */
function cell(value: string): string {
  return /[",\n\r]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value;
}

/** Bytes written into one growing buffer. */
class Out {
  buf: Uint8Array;
  n = 0;
  constructor(size: number) {
    this.buf = new Uint8Array(Math.max(size, 64));
  }
  room(k: number): void {
    if (this.n + k <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.n + k));
    next.set(this.buf.subarray(0, this.n));
    this.buf = next;
  }
  byte(b: number): void {
    this.room(1);
    this.buf[this.n++] = b;
  }
  copy(s: Uint8Array, start: number, end: number): void {
    this.room(end - start);
    for (let i = start; i < end; i++) this.buf[this.n++] = s[i];
  }
  text(t: string): void {
    const bytes = encoder.encode(t);
    this.room(bytes.length);
    this.buf.set(bytes, this.n);
    this.n += bytes.length;
  }
}

const FIELD_AT = new Map<string, number>(BAR_FIELDS.map((f, i) => [f, i]));
const FIELD_BYTES = BAR_FIELDS.map((f) => encoder.encode(f));

/** The column of the plain key at `ks..ke`, without making a string of it. */
function columnOf(s: Uint8Array, ks: number, ke: number): number | undefined {
  const len = ke - ks - 2;
  for (let f = 0; f < FIELD_BYTES.length; f++) {
    const name = FIELD_BYTES[f];
    if (name.length !== len) continue;
    let k = 0;
    while (k < len && s[ks + 1 + k] === name[k]) k++;
    if (k === len) return f;
  }
  return undefined;
}

const KIND_NONE = 0;
const KIND_COPY = 1; // the token's bytes as they are: a plain number, or a plain string's inside
const KIND_TRUE = 2;
const KIND_SLOW = 3; // decoded and rendered in JavaScript

function barsCsv(
  s: Uint8Array,
  at: number,
  columns: ColumnStyle,
  options: { symbol?: { symbol_type: string; code: string }; header?: boolean },
): Uint8Array | undefined {
  const { fields: order, names } = columnsOf(columns);
  // Scanned into BAR_FIELDS' slots, written in the style's order.
  const slots = order.map((field) => FIELD_AT.get(field)!);
  const out = new Out(s.length >> 1);
  if (options.header ?? true) {
    out.text(
      [...(options.symbol ? ["symbol_type", "code"] : []), ...names].map(cell)
        .join(",") + "\n",
    );
  }
  const lead = options.symbol
    ? encoder.encode(
      `${cell(options.symbol.symbol_type)},${cell(options.symbol.code)},`,
    )
    : undefined;
  const fields = BAR_FIELDS.length;
  const kind = new Uint8Array(fields);
  const from = new Int32Array(fields);
  const to = new Int32Array(fields);
  const quote = new Uint8Array(fields);
  let nested = false;
  const end = elements(s, at, 4, (bar) => {
    kind.fill(KIND_NONE);
    const close = members(s, bar, 5, (ks, ke, plain, start, end) => {
      const column = plain
        ? columnOf(s, ks, ke)
        : FIELD_AT.get(keyOf(s, ks, ke, plain));
      if (column === undefined) return true;
      const c = s[start];
      from[column] = start;
      to[column] = end;
      quote[column] = 0;
      if (c === 34) {
        // endOfValue just scanned this string: stringPlain speaks of it.
        if (stringPlain) {
          kind[column] = KIND_COPY;
          from[column] = start + 1;
          to[column] = end - 1;
          for (let i = start + 1; i < end - 1; i++) {
            if (s[i] === 44) quote[column] = 1;
          }
        } else kind[column] = KIND_SLOW;
      } else if (c === 123 || c === 91) {
        nested = true;
        return false;
      } else if (c === 116) kind[column] = KIND_TRUE;
      else if (c === 110 || c === 102) kind[column] = KIND_NONE;
      else kind[column] = numberOdd ? KIND_SLOW : KIND_COPY;
      return true;
    });
    if (close < 0) return -1;
    if (lead) out.copy(lead, 0, lead.length);
    for (let j = 0; j < fields; j++) {
      if (j > 0) out.byte(44);
      const f = slots[j];
      const k = kind[f];
      if (k === KIND_COPY) {
        if (quote[f]) out.byte(34);
        out.copy(s, from[f], to[f]);
        if (quote[f]) out.byte(34);
      } else if (k === KIND_TRUE) out.byte(49);
      else if (k === KIND_SLOW) {
        const token = decoder.decode(s.subarray(from[f], to[f]));
        out.text(
          s[from[f]] === 34 ? cell(JSON.parse(token)) : String(Number(token)),
        );
      }
    }
    out.byte(10);
    return close;
  });
  if (end < 0 || nested) return undefined;
  return out.buf.subarray(0, out.n);
}
