// The part of npm `csv-parse/sync` that lib/market/csv.ts uses. The package's own declarations
// open with `/// <reference types="node" />`, which `deno doc` (2.9.6) cannot resolve and warns
// about in the docs of every project importing `lib/mod.ts`; see lib/transport/_ws_types.d.ts.

/** Options of `parse` that lib/market/csv.ts sets (csv-parse 7). */
export interface Options {
  bom?: boolean;
  trim?: boolean;
  skip_empty_lines?: boolean;
  relax_column_count?: boolean;
}

/** Parses CSV text into rows of cells; throws a `CsvError` on malformed input. */
export declare function parse(
  input: string | Uint8Array,
  options?: Options,
): string[][];
