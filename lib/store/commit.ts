/**
 * The store's writes: one commit's changes in one transaction, and the sort that keeps each
 * series' bars together.
 *
 * @module
 */

import type { DuckDBConnection } from "npm:@duckdb/node-api@1.5.6-r.1";
import type { Bar } from "../market/types.ts";
import { inTransaction } from "./database.ts";
import {
  appendBar,
  appendKey,
  appendRows,
  dateValue,
  refill,
  seriesRows,
  withAppender,
} from "./rows.ts";
import {
  seriesId,
  type SeriesInfo,
  type SeriesKey,
  type StoreChanges,
} from "./types.ts";

type SeriesBars = { key: SeriesKey; bars: readonly Bar[] };

/**
 * Writes `changes` in one transaction: all of it lands, or (on any error, or a kill) none.
 * Replaced series lose their old bars; series statistics are recomputed from the bars.
 */
export async function commitChanges(
  conn: DuckDBConnection,
  changes: StoreChanges,
): Promise<void> {
  const replace = changes.replace ?? [];
  const append = (changes.append ?? []).filter((a) => a.bars.length > 0);
  for (const { key, bars } of replace) {
    if (bars.length === 0) {
      throw new RangeError(
        `Cannot store an empty history for ${seriesId(key)}`,
      );
    }
  }
  await inTransaction(conn, async () => {
    if (replace.length + append.length > 0) {
      await writeSeries(conn, replace, append);
    }
    await writeSymbols(conn, changes);
    await writeRawLast(conn, changes.raw ?? []);
    await writeCalendar(conn, changes.calendar ?? []);
    const written = replace.reduce((n, r) => n + r.bars.length, 0) +
      append.reduce((n, a) => n + a.bars.length, 0);
    if (written > 0) await addUnsorted(conn, written);
    for (const [key, value] of Object.entries(changes.meta ?? {})) {
      await conn.run("DELETE FROM meta WHERE key = $1", [key]);
      await conn.run("INSERT INTO meta VALUES ($1, $2)", [key, value]);
    }
  });
}

/** The bars of replaced and appended series, and those series' rows. */
async function writeSeries(
  conn: DuckDBConnection,
  replace: readonly SeriesBars[],
  append: readonly SeriesBars[],
): Promise<void> {
  const touched = [...replace, ...append].map((c) => c.key);
  await refill(conn, "_touched", touched, appendKey);
  // Series statistics come from the bars written and the series rows, never from a scan
  // of all bars: a commit costs what it writes, however large the store.
  const before = await seriesRows(
    conn,
    "SEMI JOIN _touched USING (symbol_type, code, adjust)",
  );
  const stale = replace.filter(({ key }) => before.has(seriesId(key)));
  if (stale.length > 0) {
    await refill(conn, "_replaced", stale, (a, { key }) => appendKey(a, key));
    await conn.run(
      `DELETE FROM bars WHERE (symbol_type, code, adjust) IN (SELECT * FROM _replaced)`,
    );
  }
  const after = new Map<string, SeriesInfo>();
  await withAppender(conn, "bars", (appender) => {
    for (const { key, bars } of replace) {
      for (const bar of bars) appendBar(appender, key, bar);
      after.set(seriesId(key), {
        ...key,
        bars: bars.length,
        firstDate: bars[0].date,
        lastDate: bars[bars.length - 1].date,
        lastClose: bars[bars.length - 1].close,
      });
    }
    for (const { key, bars } of append) {
      const id = seriesId(key);
      const info = after.get(id) ?? before.get(id);
      let last = info?.lastDate ?? "";
      let added = 0;
      let lastClose = info?.lastClose ?? 0;
      for (const bar of bars) {
        // Appends only ever extend a series: a bar at or before its end would duplicate it.
        if (bar.date <= last) {
          throw new RangeError(
            `Cannot append bar ${bar.date} to ${id}: the series ends ${last}`,
          );
        }
        appendBar(appender, key, bar);
        last = bar.date;
        lastClose = bar.close;
        added++;
      }
      after.set(id, {
        ...key,
        bars: (info?.bars ?? 0) + added,
        firstDate: info?.firstDate ?? bars[0].date,
        lastDate: last,
        lastClose,
      });
    }
  });
  await conn.run(
    `DELETE FROM series WHERE (symbol_type, code, adjust) IN (SELECT * FROM _touched)`,
  );
  await appendRows(conn, "series", [...after.values()], (a, info) => {
    appendKey(a, info);
    a.appendBigInt(BigInt(info.bars));
    a.appendDate(dateValue(info.firstDate));
    a.appendDate(dateValue(info.lastDate));
    a.appendDouble(info.lastClose);
  });
}

/** Symbols listed, and those no longer listed. */
async function writeSymbols(
  conn: DuckDBConnection,
  changes: StoreChanges,
): Promise<void> {
  const symbols = changes.symbols ?? [];
  if (symbols.length > 0) {
    await refill(conn, "_symbols", symbols, (a, s) => {
      a.appendVarchar(s.symbolType);
      a.appendVarchar(s.code);
      a.appendVarchar(s.name);
    });
    await conn.run(
      "DELETE FROM symbols WHERE (symbol_type, code) IN (SELECT symbol_type, code FROM _symbols)",
    );
    await conn.run(
      "INSERT INTO symbols SELECT DISTINCT ON (symbol_type, code) symbol_type, code, name, NULL FROM _symbols",
    );
  }
  for (const g of changes.gone ?? []) {
    await conn.run(
      "UPDATE symbols SET gone_since = CAST($3 AS DATE) WHERE symbol_type = $1 AND code = $2 AND gone_since IS NULL",
      [g.symbolType, g.code, g.date],
    );
  }
}

/** Last unadjusted bars learned: the newest bar wins, whichever was learned first. */
async function writeRawLast(
  conn: DuckDBConnection,
  raw: NonNullable<StoreChanges["raw"]>,
): Promise<void> {
  if (raw.length === 0) return;
  await refill(conn, "_raw", raw, (a, r) => {
    a.appendVarchar(r.symbolType);
    a.appendVarchar(r.code);
    a.appendDate(dateValue(r.bar.date));
    a.appendDouble(r.bar.open);
    a.appendDouble(r.bar.high);
    a.appendDouble(r.bar.low);
    a.appendDouble(r.bar.close);
  });
  await conn.run(
    "INSERT INTO _raw SELECT * FROM raw_last WHERE (symbol_type, code) IN (SELECT symbol_type, code FROM _raw)",
  );
  await conn.run(
    "DELETE FROM raw_last WHERE (symbol_type, code) IN (SELECT symbol_type, code FROM _raw)",
  );
  await conn.run(
    "INSERT INTO raw_last SELECT DISTINCT ON (symbol_type, code) * FROM _raw ORDER BY symbol_type, code, date DESC",
  );
}

/** Trading days learned, each kept once. */
async function writeCalendar(
  conn: DuckDBConnection,
  days: readonly string[],
): Promise<void> {
  if (days.length === 0) return;
  await refill(conn, "_days", days, (a, d) => {
    a.appendDate(dateValue(d));
  });
  await conn.run(
    "INSERT INTO calendar SELECT DISTINCT date FROM _days WHERE date NOT IN (SELECT date FROM calendar)",
  );
}

/** Counts bars written since the table was last sorted, inside the caller's transaction. */
async function addUnsorted(
  conn: DuckDBConnection,
  bars: number,
): Promise<void> {
  const rows = (await conn.runAndReadAll(
    "SELECT value FROM meta WHERE key = 'unsorted_bars'",
  )).getRows();
  const before = rows.length > 0 ? Number(rows.at(-1)![0]) : 0;
  await conn.run("DELETE FROM meta WHERE key = 'unsorted_bars'");
  await conn.run("INSERT INTO meta VALUES ('unsorted_bars', $1)", [
    String(before + bars),
  ]);
}

/**
 * Rewrites the bars table sorted by series and date, in one transaction, so that one series'
 * bars sit together and a read skips the rest (DuckDB prunes by each row group's min/max).
 */
export async function sortBars(conn: DuckDBConnection): Promise<void> {
  // Written bars out of the write-ahead log first: the buffer pool can then evict them while
  // the sort runs within the memory limit.
  await conn.run("CHECKPOINT");
  await inTransaction(conn, async () => {
    await conn.run(
      "CREATE OR REPLACE TABLE _bars_sorted AS SELECT * FROM bars ORDER BY symbol_type, adjust, code, date",
    );
    await conn.run("DROP TABLE bars");
    await conn.run("ALTER TABLE _bars_sorted RENAME TO bars");
    await conn.run("DELETE FROM meta WHERE key = 'unsorted_bars'");
  });
  await conn.run("CHECKPOINT");
}
