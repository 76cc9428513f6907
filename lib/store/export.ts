/**
 * The store as files others read: Parquet or CSV, written under a temporary name and renamed, so
 * a file under its final name is always whole.
 *
 * @module
 */

import type { DuckDBConnection } from "npm:@duckdb/node-api@1.5.6-r.1";

/**
 * Writes every table as files others read: `bars.parquet` (or `.csv`), plus `symbols` and
 * `calendar`. Returns the paths. Bars go out in the table's stored order, not sorted here: by
 * kind, adjustment, code and date as of the last sort (`compact()`, which a sync runs once enough
 * bars came in unsorted), then the bars committed since in the order they were written. A reader
 * that needs an order asks for one.
 */
export async function exportTables(
  conn: DuckDBConnection,
  format: "parquet" | "csv",
  dir: string,
): Promise<string[]> {
  await Deno.mkdir(dir, { recursive: true });
  const ext = format === "parquet" ? "parquet" : "csv";
  const options = format === "parquet"
    ? "(FORMAT parquet, COMPRESSION zstd)"
    : "(FORMAT csv, HEADER true)";
  const base = dir.replace(/\/+$/, "");
  const out: string[] = [];
  const queries: [string, string][] = [
    [
      "bars",
      "SELECT * FROM bars",
    ],
    ["symbols", "SELECT * FROM symbols ORDER BY symbol_type, code"],
    ["calendar", "SELECT DISTINCT date FROM calendar ORDER BY date"],
  ];
  for (const [name, query] of queries) {
    const path = `${base}/${name}.${ext}`;
    const temp = `${base}/.${name}.${crypto.randomUUID()}.${ext}`;
    await conn.run(`COPY (${query}) TO '${sqlString(temp)}' ${options}`);
    await Deno.rename(temp, path);
    out.push(path);
  }
  return out;
}

function sqlString(text: string): string {
  return text.replaceAll("'", "''");
}
