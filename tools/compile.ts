/**
 * `deno task compile` — the three programs as standalone executables in `dist/`.
 *
 * Without `--target` it builds for this machine: `dist/switchyard-server`, `-worker`,
 * `-requester`. With `--target T` (repeatable, or `--target all`) it builds
 * `dist/<T>/switchyard-…` for each, as the release workflow does. `deno compile` fetches the
 * runtime for each target from Deno's servers once (then it is cached); for an offline build,
 * point `DENORT_BIN` at a `denort` binary of the same Deno version and target
 * (docs/operations.md).
 *
 * @module
 */

import { parseArgs } from "node:util";

/** Targets `deno compile --target` takes that the release ships. */
export const TARGETS = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
  "x86_64-pc-windows-msvc",
] as const;

/**
 * Each program with the permissions it runs with; nothing more is baked in. They are the
 * `deno task` permissions of the same program less `--allow-ffi`: the store's DuckDB binding is a
 * native library that a compiled binary does not carry (docs/store.md).
 */
export const PROGRAMS = [
  {
    name: "switchyard-server",
    entry: "server.ts",
    permissions: [
      "--allow-net",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-sys",
    ],
  },
  {
    name: "switchyard-worker",
    entry: "worker.ts",
    permissions: [
      "--allow-net",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-sys",
    ],
  },
  {
    name: "switchyard-requester",
    entry: "requester.ts",
    permissions: [
      "--allow-net",
      "--allow-read",
      "--allow-write",
      "--allow-env",
    ],
  },
] as const;

/** The `deno compile` argument lists for `targets` (undefined: this machine) into `outDir`. */
export function compileCommands(
  targets: (string | undefined)[],
  outDir = "dist",
): string[][] {
  return targets.flatMap((target) =>
    PROGRAMS.map((program) => [
      "compile",
      "--frozen",
      ...program.permissions,
      ...(target ? ["--target", target] : []),
      "--output",
      target
        ? `${outDir}/${target}/${program.name}`
        : `${outDir}/${program.name}`,
      program.entry,
    ])
  );
}

/**
 * Why `denort` (the value of `DENORT_BIN`) cannot be used, or undefined when it may. The `deno`
 * binary is the usual slip: `deno compile` then embeds a runtime that recurses into itself (a
 * stack overflow) and leaves a 0-byte temporary file.
 */
export function denortProblem(
  denort: string | undefined,
  deno: string = Deno.execPath(),
): string | undefined {
  if (denort === undefined || denort === "") return undefined;
  let real: string;
  try {
    real = Deno.realPathSync(denort);
  } catch (error) {
    return `DENORT_BIN '${denort}' cannot be read: ${(error as Error).message}`;
  }
  let self = deno;
  try {
    self = Deno.realPathSync(deno);
  } catch {
    // Compared as given.
  }
  const name = real.split(/[\\/]/).pop()!.toLowerCase();
  if (real === self || name === "deno" || name === "deno.exe") {
    return `DENORT_BIN '${denort}' is the deno binary, not denort: unzip denort-<target>.zip of Deno ${Deno.version.deno} and point DENORT_BIN at the denort inside (docs/operations.md)`;
  }
  return undefined;
}

/** Removes the temporary files a failed `deno compile` leaves beside its output. */
async function removeTemporaries(dir: string): Promise<void> {
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.isFile && /\.tmp-/.test(entry.name)) {
        await Deno.remove(`${dir}/${entry.name}`).catch(() => {});
      }
    }
  } catch {
    // No such folder: nothing left behind.
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      target: { type: "string", multiple: true },
      out: { type: "string" },
    },
  });
  const asked = values.target ?? [];
  const targets = asked.includes("all") ? [...TARGETS] : asked;
  for (const target of targets) {
    if (!(TARGETS as readonly string[]).includes(target)) {
      console.error(
        `compile: unknown --target '${target}': expected all or one of ${
          TARGETS.join(", ")
        }`,
      );
      return 2;
    }
  }
  const denort = Deno.env.get("DENORT_BIN");
  const problem = denortProblem(denort);
  if (problem) {
    console.error(`compile: ${problem}`);
    return 2;
  }
  const root = new URL("../", import.meta.url).pathname;
  for (
    const args of compileCommands(
      targets.length > 0 ? targets : [undefined],
      values.out ?? "dist",
    )
  ) {
    const { code } = await new Deno.Command(Deno.execPath(), {
      args,
      cwd: root,
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (code !== 0) {
      const output = args[args.indexOf("--output") + 1];
      const dir = output.slice(0, Math.max(0, output.lastIndexOf("/"))) || ".";
      await removeTemporaries(dir.startsWith("/") ? dir : `${root}${dir}`);
      console.error(
        `compile: 'deno ${args.join(" ")}' failed` +
          (Deno.env.get("DENORT_BIN") ? "" : (
            " (offline? set DENORT_BIN to a denort binary: docs/operations.md)"
          )),
      );
      return code;
    }
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main());
