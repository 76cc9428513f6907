/**
 * Breaks one line on purpose, runs the tests that should notice, and puts the line back: a small
 * mutation check for Deno's test runner, which no maintained mutation tool drives.
 *
 * Each entry of the catalogue (`tools/mutations.json` unless `--catalogue` names another) names a
 * file, a text that occurs in it exactly once, what to put in its place, and the test files that
 * guard it. An entry is "caught" when those tests fail with the change in place. With `--suite`, an
 * entry its own tests miss is tried against the whole suite too, so the report tells "no test
 * anywhere" from "a test in another file".
 *
 *     deno task mutate                 # every entry
 *     deno task mutate guard-header    # entries whose id contains "guard-header"
 *     deno task mutate --suite         # survivors against the whole suite as well
 *     deno task mutate --list          # ids and what each breaks
 *
 * The file is restored after every entry, on Ctrl-C too. Exit code 1 when any entry survives.
 *
 * @module
 */

/** One catalogued breakage. */
export interface Mutation {
  /** Short and unique: `area-what`. */
  id: string;
  /** Path from the repository root. */
  file: string;
  /** Text that occurs exactly once in `file`. */
  find: string;
  replace: string;
  /** Test files (from the repository root) expected to fail with the change in place. */
  tests: string[];
  /** The plausible slip this stands for. */
  why: string;
}

type Verdict = "caught" | "caught by the suite" | "missed" | "stale";

const ROOT = new URL("../", import.meta.url).pathname;

function usage(): string {
  return [
    "Usage: deno task mutate [--suite] [--list] [--catalogue FILE] [ID-PART ...]",
    "",
    "Breaks each catalogued line in turn, runs its tests, restores the line.",
    "  --suite           run the whole suite for an entry its own tests miss",
    "  --list            print the catalogue and exit",
    "  --catalogue FILE  another catalogue (default tools/mutations.json)",
    "",
    "Exit code: 0 every entry caught, 1 an entry survived or is stale, 2 bad usage.",
  ].join("\n");
}

/** The catalogue's default place. */
export const CATALOGUE = ROOT + "tools/mutations.json";

/** Reads a catalogue and checks its entries' shape; throws on a malformed or repeated entry. */
export async function loadCatalogue(
  path: string = CATALOGUE,
): Promise<Mutation[]> {
  const entries = JSON.parse(await Deno.readTextFile(path)) as Mutation[];
  const ids = new Set<string>();
  for (const entry of entries) {
    for (const key of ["id", "file", "find", "replace", "why"] as const) {
      if (typeof entry[key] !== "string") {
        throw new TypeError(
          `Catalogue entry ${JSON.stringify(entry.id)} lacks "${key}"`,
        );
      }
    }
    if (!Array.isArray(entry.tests) || entry.tests.length === 0) {
      throw new TypeError(`Catalogue entry "${entry.id}" names no tests`);
    }
    if (ids.has(entry.id)) {
      throw new TypeError(`Catalogue id "${entry.id}" appears twice`);
    }
    ids.add(entry.id);
  }
  return entries;
}

/** Runs `deno test` on `files` (or the whole suite) and says whether it failed. */
async function testsFail(files: string[] | "suite"): Promise<boolean> {
  const args = files === "suite"
    ? ["test", "-A", "--no-check", "--doc", "lib/", "tests/"]
    : ["test", "-A", "--no-check", ...files];
  const { code } = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    stdout: "null",
    stderr: "null",
    env: { NO_COLOR: "1" },
  }).output();
  return code !== 0;
}

/**
 * Where `entry.find` stands in `text`, or undefined when it is missing or stands more than once:
 * the code moved, and the entry no longer says which line it breaks.
 */
export function findOnce(entry: Mutation, text: string): number | undefined {
  const at = text.indexOf(entry.find);
  return at < 0 || text.indexOf(entry.find, at + 1) >= 0 ? undefined : at;
}

async function judge(entry: Mutation, suite: boolean): Promise<Verdict> {
  const path = ROOT + entry.file;
  const original = await Deno.readTextFile(path);
  const at = findOnce(entry, original);
  if (at === undefined) return "stale";
  const restore = () => Deno.writeTextFileSync(path, original);
  Deno.addSignalListener("SIGINT", restore);
  try {
    await Deno.writeTextFile(
      path,
      original.slice(0, at) + entry.replace +
        original.slice(at + entry.find.length),
    );
    if (await testsFail(entry.tests)) return "caught";
    if (suite && await testsFail("suite")) return "caught by the suite";
    return "missed";
  } finally {
    restore();
    Deno.removeSignalListener("SIGINT", restore);
  }
}

async function main(args: string[]): Promise<number> {
  let suite = false;
  let list = false;
  let catalogue = CATALOGUE;
  const filters: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--suite") suite = true;
    else if (arg === "--list") list = true;
    else if (arg === "--catalogue" && i + 1 < args.length) {
      catalogue = args[++i];
    } else if (arg === "--help" || arg === "-h") {
      console.log(usage());
      return 0;
    } else if (arg.startsWith("-")) {
      console.error(`Unknown option '${arg}'\n\n${usage()}`);
      return 2;
    } else filters.push(arg);
  }
  const entries = (await loadCatalogue(catalogue)).filter((entry) =>
    filters.length === 0 || filters.some((part) => entry.id.includes(part))
  );
  if (entries.length === 0) {
    console.error(
      `No catalogue entry matches ${filters.map((f) => `'${f}'`).join(", ")}`,
    );
    return 2;
  }
  if (list) {
    for (const entry of entries) {
      console.log(`${entry.id.padEnd(34)} ${entry.why}`);
    }
    return 0;
  }
  const tally = new Map<Verdict, number>();
  for (const entry of entries) {
    const verdict = await judge(entry, suite);
    tally.set(verdict, (tally.get(verdict) ?? 0) + 1);
    console.log(`${verdict.padEnd(20)} ${entry.id.padEnd(34)} ${entry.why}`);
  }
  console.log(
    [...tally].map(([verdict, count]) => `${count} ${verdict}`).join(", ") +
      ` of ${entries.length}`,
  );
  return (tally.get("missed") ?? 0) + (tally.get("stale") ?? 0) > 0 ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
