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

/** Each program with the permissions it runs with; nothing more is baked in. */
export const PROGRAMS = [
  {
    name: "switchyard-server",
    entry: "server.ts",
    permissions: ["--allow-net", "--allow-read", "--allow-env", "--allow-sys"],
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
    permissions: ["--allow-net", "--allow-read", "--allow-env"],
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
