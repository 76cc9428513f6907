// lib/mod.ts as another project sees it: imported by path from a directory with no deno.json,
// so none of our configuration (lock file, lint rules, tasks) applies.
import assert from "node:assert/strict";

const MOD = new URL("../lib/mod.ts", import.meta.url).href;

const MAIN = `
import { RequesterClient, setupLogging, startServer, Worker } from "${MOD}";

setupLogging({ level: "warning" });
const server = startServer({ host: "127.0.0.1", port: 0, requesterPort: 0, sweepIntervalMs: 0 });
const worker = new Worker({ url: server.workerUrl, name: "elsewhere" });
worker.registerAction("double", (params) => (params as { n: number }).n * 2);
const running = worker.start();
const id = await worker.ready();
const client = new RequesterClient(server.requesterUrl);
await client.connect();
const answer = await client.request("double", { n: 21 });
console.log(JSON.stringify({ data: answer.data, by: answer.processed_by === id }));
await client.close();
await worker.stop();
await running;
await server.close();
`;

async function deno(args: string[], cwd: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    stdin: "null",
    env: { NO_COLOR: "1" },
  }).output();
  const decoder = new TextDecoder();
  return {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
  };
}

Deno.test("library - a project without our deno.json imports lib/mod.ts, type-checks and runs it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "switchyard-lib-" });
  try {
    await Deno.writeTextFile(`${dir}/main.ts`, MAIN);
    const run = await deno(
      [
        "run",
        "--check",
        "--allow-net",
        "--allow-env",
        "--allow-sys",
        "main.ts",
      ],
      dir,
    );
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout), { data: 42, by: true });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("library - deno doc lib/mod.ts prints no warnings", async () => {
  const dir = new URL("../", import.meta.url).pathname;
  const doc = await deno(["doc", "lib/mod.ts"], dir);
  assert.equal(doc.code, 0, doc.stderr);
  assert.doesNotMatch(doc.stderr, /warning/i);
  assert.match(doc.stdout, /class RequesterClient/);
});

Deno.test("library - the README's TypeScript snippets pass deno lint and deno check", async () => {
  const root = new URL("../", import.meta.url);
  const readme = await Deno.readTextFile(new URL("README.md", root));
  const blocks = [...readme.matchAll(/```ts\n([^]*?)```/g)].map((m) => m[1]);
  assert.ok(blocks.length > 0, "the README has a ts snippet");
  const dir = await Deno.makeTempDir({ prefix: "switchyard-readme-" });
  try {
    const files: string[] = [];
    for (const [i, block] of blocks.entries()) {
      files.push(`${dir}/snippet_${i}.ts`);
      await Deno.writeTextFile(
        files[i],
        block.replaceAll('"./lib/mod.ts"', `"${MOD}"`),
      );
    }
    for (const command of ["lint", "check"]) {
      const out = await deno([command, ...files], dir);
      assert.equal(out.code, 0, `deno ${command}:\n${out.stderr}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
