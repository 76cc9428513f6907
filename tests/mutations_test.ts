// The mutation catalogue stays usable as the code moves: every entry still names one line of
// code and test files that exist. A stale entry would make `deno task mutate` report "stale"
// long after the move that caused it, when nobody remembers where the line went.
import assert from "node:assert/strict";
import { findOnce, loadCatalogue } from "../tools/mutate.ts";

const ROOT = new URL("../", import.meta.url);

Deno.test("mutations - every catalogued breakage names one line of code and existing tests", async () => {
  const entries = await loadCatalogue();
  assert.ok(entries.length > 0, "the catalogue is empty");
  const problems: string[] = [];
  for (const entry of entries) {
    const text = await Deno.readTextFile(new URL(entry.file, ROOT));
    if (findOnce(entry, text) === undefined) {
      problems.push(
        `${entry.id}: its text is not in ${entry.file} exactly once`,
      );
    }
    if (entry.find === entry.replace) {
      problems.push(`${entry.id}: the replacement breaks nothing`);
    }
    for (const test of entry.tests) {
      try {
        await Deno.stat(new URL(test, ROOT));
      } catch {
        problems.push(`${entry.id}: no test file ${test}`);
      }
    }
  }
  assert.deepEqual(problems, []);
});
