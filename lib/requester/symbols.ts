/**
 * Symbol lists for market jobs: codes from arguments, a file of one code a line, or a CSV file
 * with code and type columns (such as a `failed.txt` written by an earlier run).
 *
 * @module
 */

import { parse } from "npm:csv-parse@7.0.3/sync";

/** An instrument kind, as `get_market` names it. */
export type SymbolKind = "etf" | "stock" | "index";

/** The instrument kinds a job accepts. */
export const SYMBOL_KINDS: readonly SymbolKind[] = ["etf", "stock", "index"];

/** One symbol of a job. */
export interface SymbolSpec {
  /** Six-digit exchange code. */
  code: string;
  /** Instrument kind. */
  symbol_type: SymbolKind;
}

const CODE = /^\d{6}$/;
// Header names a user's file may carry, besides ours: akshare's and efinance's Chinese headers,
// and the `symbol` of many scripts.
const CODE_HEADERS = new Set(["code", "symbol", "ts_code", "代码", "股票代码"]);
const TYPE_HEADERS = new Set(["type", "symbol_type", "kind", "类型"]);

/** Checks a symbol kind, with a message that quotes what was given. */
export function symbolKind(value: string, where = "type"): SymbolKind {
  const kind = value.trim().toLowerCase();
  if (!(SYMBOL_KINDS as readonly string[]).includes(kind)) {
    throw new RangeError(
      `Invalid ${where} '${value}': expected one of ${SYMBOL_KINDS.join(", ")}`,
    );
  }
  return kind as SymbolKind;
}

/** Reads one code, tolerating exchange prefixes and suffixes (`sh510300`, `510300.SH`). */
export function symbolCode(value: string, where = "code"): string {
  const code = value.trim().replace(/^(sh|sz|bj)/i, "").replace(
    /\.(sh|sz|bj|ss)$/i,
    "",
  );
  if (!CODE.test(code)) {
    throw new RangeError(
      `Invalid ${where} '${value}': expected a six-digit code such as 510300`,
    );
  }
  return code;
}

/** Drops repeats of the same code and kind, keeping the first. */
export function uniqueSymbols(symbols: Iterable<SymbolSpec>): SymbolSpec[] {
  const seen = new Set<string>();
  const out: SymbolSpec[] = [];
  for (const s of symbols) {
    const key = `${s.symbol_type}:${s.code}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(s);
  }
  return out;
}

/**
 * Parses a symbol list: one code a line (blank lines and `#` comments skipped), or CSV whose
 * header names a code column (`code`, `symbol`, `代码`) and optionally a type column (`type`,
 * `symbol_type`); rows without a type get `defaultKind`. A headerless `code,type` file works too.
 *
 * @throws {RangeError} naming the line of the first bad code or type.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseSymbolList } from "./symbols.ts";
 * const list = parseSymbolList("code,type,error\n510300,etf,x\n000001,index,\"a, b\"\n", "etf");
 * assert.equal(list.length, 2);
 * assert.equal(list[1].symbol_type, "index");
 * ```
 */
export function parseSymbolList(
  text: string,
  defaultKind: SymbolKind = "etf",
): SymbolSpec[] {
  const lines = text.replace(/^\uFEFF/, "").split(/\r?\n/);
  const first = lines.find((l) => l.trim() !== "" && !l.startsWith("#"));
  if (first === undefined) return [];
  if (!/[,;\t]/.test(first)) {
    const out: SymbolSpec[] = [];
    lines.forEach((line, i) => {
      const t = line.trim();
      if (t === "" || t.startsWith("#")) return;
      if (t === first.trim() && CODE_HEADERS.has(t.toLowerCase())) return;
      out.push({
        code: symbolCode(t, `code on line ${i + 1}`),
        symbol_type: defaultKind,
      });
    });
    return uniqueSymbols(out);
  }
  const delimiter = first.includes(",")
    ? ","
    : first.includes("\t")
    ? "\t"
    : ";";
  const rows = parse(text.replace(/^\uFEFF/, ""), {
    delimiter,
    comment: "#",
    skip_empty_lines: true,
    relax_column_count: true,
    trim: true,
    info: true,
  }) as unknown as { record: string[]; info: { lines: number } }[];
  const header = rows[0].record.map((h) => h.toLowerCase());
  let codeAt = header.findIndex((h) => CODE_HEADERS.has(h));
  let typeAt = header.findIndex((h) => TYPE_HEADERS.has(h));
  let body = rows.slice(1);
  if (codeAt < 0) {
    if (!CODE.test(symbolCodeOrEmpty(rows[0].record[0]))) {
      throw new RangeError(
        `No code column in the header '${
          rows[0].record.join(delimiter)
        }': name one 'code' (and optionally 'type')`,
      );
    }
    // No header: `code[,type]` rows.
    codeAt = 0;
    typeAt = rows[0].record.length > 1 ? 1 : -1;
    body = rows;
  }
  const out: SymbolSpec[] = [];
  for (const { record, info } of body) {
    const rawCode = record[codeAt] ?? "";
    if (rawCode === "") continue;
    const rawType = typeAt >= 0 ? record[typeAt] ?? "" : "";
    out.push({
      code: symbolCode(rawCode, `code on line ${info.lines}`),
      symbol_type: rawType === ""
        ? defaultKind
        : symbolKind(rawType, `type on line ${info.lines}`),
    });
  }
  return uniqueSymbols(out);
}

function symbolCodeOrEmpty(value: string | undefined): string {
  try {
    return symbolCode(value ?? "");
  } catch {
    return "";
  }
}
