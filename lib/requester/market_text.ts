/**
 * Reads a streamed `get_markets` item straight from its frame's text: the result's small fields
 * parsed, and its bars turned into CSV rows without building an object per bar.
 *
 * A full daily history is ~0.5 MB of JSON and ~2,900 bars; parsing it makes some 35,000 objects
 * and numbers that live only until the CSV is written. Over a thousand symbols that garbage, not
 * the data, is what sets the requester's memory. The scanner here validates every byte it walks
 * (it accepts exactly JSON) and gives up, returning `undefined`, on anything it does not expect,
 * such as a bar field holding an object: the caller then parses the frame as before.
 *
 * @module
 */

import {
  AKSHARE_HEADERS,
  BAR_FIELDS,
  type ColumnStyle,
} from "./market_files.ts";

/** An item frame, read: its result without `data`, and its bars ready to render. */
export interface ItemText {
  /** The item's position in the batch. */
  index: number;
  /** The item's result with its `data` left out. */
  result: Record<string, unknown>;
  /** How many bars `data` holds (0 when it is not an array). */
  bars: number;
  /**
   * The bars as CSV, exactly as `renderMarketFile(result, "csv", columns, options)` writes them;
   * `undefined` when a bar holds something other than strings, numbers, booleans and nulls.
   */
  csv(
    columns?: ColumnStyle,
    options?: {
      symbol?: { symbol_type: string; code: string };
      header?: boolean;
    },
  ): string | undefined;
}

const MAX_DEPTH = 64;

function space(s: string, i: number): number {
  while (i < s.length) {
    const c = s.charCodeAt(i);
    if (c === 32 || c === 10 || c === 13 || c === 9) i++;
    else break;
  }
  return i;
}

/** The end of the string that starts at `i` (a `"`), or -1 when it is not valid JSON. */
function endOfString(s: string, i: number): number {
  if (s.charCodeAt(i) !== 34) return -1;
  i++;
  while (i < s.length) {
    const c = s.charCodeAt(i);
    if (c === 34) return i + 1;
    if (c < 32) return -1;
    if (c === 92) {
      const e = s.charCodeAt(i + 1);
      if (e === 117) {
        if (!/^[0-9a-fA-F]{4}$/.test(s.slice(i + 2, i + 6))) return -1;
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
    i++;
  }
  return -1;
}

function digits(s: string, i: number): number {
  const start = i;
  while (i < s.length) {
    const c = s.charCodeAt(i);
    if (c >= 48 && c <= 57) i++;
    else break;
  }
  return i > start ? i : -1;
}

/** The end of the number that starts at `i`, or -1 when it is not valid JSON. */
function endOfNumber(s: string, i: number): number {
  if (s.charCodeAt(i) === 45) i++;
  if (s.charCodeAt(i) === 48) i++;
  else if ((i = digits(s, i)) < 0) return -1;
  if (s.charCodeAt(i) === 46 && (i = digits(s, i + 1)) < 0) return -1;
  const e = s.charCodeAt(i);
  if (e === 101 || e === 69) {
    i++;
    const sign = s.charCodeAt(i);
    if (sign === 43 || sign === 45) i++;
    if ((i = digits(s, i)) < 0) return -1;
  }
  return i;
}

/** The end of any JSON value that starts at `i`, or -1. */
function endOfValue(s: string, i: number, depth = 0): number {
  const c = s.charCodeAt(i);
  if (c === 34) return endOfString(s, i);
  if (c === 123) return members(s, i, depth + 1, () => true);
  if (c === 91) {
    return elements(s, i, depth + 1, (at) => endOfValue(s, at, depth + 1));
  }
  if (c === 45 || (c >= 48 && c <= 57)) return endOfNumber(s, i);
  for (const word of ["true", "false", "null"]) {
    if (s.startsWith(word, i)) return i + word.length;
  }
  return -1;
}

/**
 * Walks the object at `i`, calling `visit` with each key's span (quotes included) and value
 * span; `visit` returning false stops the walk as invalid. Returns the object's end, or -1.
 */
function members(
  s: string,
  i: number,
  depth: number,
  visit: (
    keyStart: number,
    keyEnd: number,
    start: number,
    end: number,
  ) => boolean,
): number {
  if (depth > MAX_DEPTH || s.charCodeAt(i) !== 123) return -1;
  i = space(s, i + 1);
  if (s.charCodeAt(i) === 125) return i + 1;
  while (true) {
    const keyEnd = endOfString(s, i);
    if (keyEnd < 0) return -1;
    let at = space(s, keyEnd);
    if (s.charCodeAt(at) !== 58) return -1;
    at = space(s, at + 1);
    const end = endOfValue(s, at, depth);
    if (end < 0 || !visit(i, keyEnd, at, end)) return -1;
    i = space(s, end);
    const c = s.charCodeAt(i);
    if (c === 125) return i + 1;
    if (c !== 44) return -1;
    i = space(s, i + 1);
  }
}

/** Walks the array at `i`; `element` returns each element's end (or -1). Returns the end, or -1. */
function elements(
  s: string,
  i: number,
  depth: number,
  element: (at: number) => number,
): number {
  if (depth > MAX_DEPTH || s.charCodeAt(i) !== 91) return -1;
  i = space(s, i + 1);
  if (s.charCodeAt(i) === 93) return i + 1;
  while (true) {
    const end = element(i);
    if (end < 0) return -1;
    i = space(s, end);
    const c = s.charCodeAt(i);
    if (c === 93) return i + 1;
    if (c !== 44) return -1;
    i = space(s, i + 1);
  }
}

function keyIs(s: string, start: number, end: number, key: string): boolean {
  return end - start === key.length + 2 && s.startsWith(key, start + 1);
}

/** Reads an item frame `{"request_id", "item": {"index", "result"}}`; undefined if it is not one. */
export function readItemText(text: string): ItemText | undefined {
  let item: [number, number] | undefined;
  const top = members(text, space(text, 0), 1, (ks, ke, start, end) => {
    if (keyIs(text, ks, ke, "item")) item = [start, end];
    return true;
  });
  if (top < 0 || space(text, top) !== text.length || !item) return undefined;
  let index: number | undefined;
  let result: [number, number] | undefined;
  if (
    members(text, item[0], 2, (ks, ke, start, end) => {
        if (keyIs(text, ks, ke, "index")) {
          index = Number(text.slice(start, end));
        }
        if (keyIs(text, ks, ke, "result")) result = [start, end];
        return true;
      }) < 0 ||
    !Number.isInteger(index) || !result ||
    text.charCodeAt(result[0]) !== 123
  ) return undefined;
  let data: [number, number] | undefined;
  members(text, result[0], 3, (ks, ke, start, end) => {
    if (keyIs(text, ks, ke, "data")) data = [start, end];
    return true;
  });
  // The result without its bars: small, so parsed the ordinary way (and checked again by it).
  const meta = JSON.parse(
    data
      ? text.slice(result[0], data[0]) + "null" + text.slice(data[1], result[1])
      : text.slice(result[0], result[1]),
  ) as Record<string, unknown>;
  const isArray = data !== undefined && text.charCodeAt(data[0]) === 91;
  if (data) delete meta.data;
  let bars = 0;
  if (isArray) {
    elements(text, data![0], 4, (at) => {
      bars++;
      return endOfValue(text, at, 4);
    });
  }
  return {
    index: index!,
    result: meta,
    bars,
    csv: (columns = "english", options = {}) =>
      isArray ? barsCsv(text, data![0], columns, options) : undefined,
  };
}

const FIELD_AT = new Map(BAR_FIELDS.map((f, i) => [f, i]));

/** A CSV cell as csv-stringify writes it: quoted when it holds a comma, a quote or a line end. */
function cell(value: string): string {
  return /[",\n\r]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value;
}

/** A JSON scalar token as csv-stringify writes its value; undefined for objects and arrays. */
function tokenCell(s: string, start: number, end: number): string | undefined {
  const c = s.charCodeAt(start);
  if (c === 34) {
    const raw = s.slice(start + 1, end - 1);
    return cell(raw.includes("\\") ? JSON.parse(s.slice(start, end)) : raw);
  }
  if (c === 110) return ""; // null
  if (c === 116) return "1"; // true, as csv-stringify casts booleans
  if (c === 102) return "";
  if (c === 123 || c === 91) return undefined;
  const token = s.slice(start, end);
  // The token is the number's text already, unless JavaScript would print it differently.
  return end - start > 15 || /[eE]/.test(token) || token === "-0" ||
      (token.includes(".") && token.endsWith("0"))
    ? String(Number(token))
    : token;
}

function barsCsv(
  s: string,
  at: number,
  columns: ColumnStyle,
  options: { symbol?: { symbol_type: string; code: string }; header?: boolean },
): string | undefined {
  const names = columns === "akshare" ? AKSHARE_HEADERS : BAR_FIELDS;
  const lead = options.symbol
    ? `${cell(options.symbol.symbol_type)},${cell(options.symbol.code)},`
    : "";
  const rows: string[] = [];
  if (options.header ?? true) {
    rows.push(
      [...(options.symbol ? ["symbol_type", "code"] : []), ...names].map(cell)
        .join(","),
    );
  }
  const cells: string[] = new Array(BAR_FIELDS.length);
  let plain = true;
  const end = elements(s, at, 4, (bar) => {
    cells.fill("");
    const close = members(s, bar, 5, (ks, ke, start, end) => {
      const raw = s.slice(ks + 1, ke - 1);
      const column = FIELD_AT.get(
        raw.includes("\\") ? JSON.parse(s.slice(ks, ke)) : raw,
      );
      if (column === undefined) return true;
      const text = tokenCell(s, start, end);
      if (text === undefined) plain = false;
      cells[column] = text ?? "";
      return plain;
    });
    if (close >= 0) rows.push(lead + cells.join(","));
    return close;
  });
  if (end < 0 || !plain) return undefined;
  return rows.length === 0 ? "" : rows.join("\n") + "\n";
}
