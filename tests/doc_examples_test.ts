// Doc examples run under `deno task test` (`--doc lib/`): each must be able to fail. A check
// with `console.assert` only prints, so an example that asserts that way passes when wrong.

import assert from "node:assert/strict";

/** Every runnable ```ts block in the doc comments of lib/, with where it starts. */
async function docExamples(): Promise<{ where: string; code: string }[]> {
  const examples: { where: string; code: string }[] = [];
  const walk = async (dir: URL) => {
    for await (const entry of Deno.readDir(dir)) {
      const url = new URL(entry.name + (entry.isDirectory ? "/" : ""), dir);
      if (entry.isDirectory) await walk(url);
      else if (entry.name.endsWith(".ts")) {
        const text = await Deno.readTextFile(url);
        const block =
          /^ \* ```(ts|typescript)([^\n]*)\n((?: \*[^\n]*\n)*?) \* ```$/gm;
        for (const m of text.matchAll(block)) {
          if (/\bignore\b/.test(m[2])) continue;
          const line = text.slice(0, m.index).split("\n").length;
          examples.push({
            where: `${url.pathname.replace(/.*\/lib\//, "lib/")}:${line}`,
            code: m[3].replace(/^ \* ?/gm, ""),
          });
        }
      }
    }
  };
  await walk(new URL("../lib/", import.meta.url));
  return examples;
}

Deno.test("doc examples - every runnable example in lib/ checks with node:assert or throw, never console.assert", async () => {
  const examples = await docExamples();
  assert.ok(examples.length >= 7, `only ${examples.length} examples found`);
  const bad = examples.filter(({ code }) =>
    /console\.assert\(/.test(code) ||
    !(/from "node:assert(\/strict)?"/.test(code) || /\bthrow\b/.test(code))
  ).map(({ where }) => where);
  assert.deepEqual(bad, []);
});

Deno.test("doc lint - every export of lib/mod.ts, its constructors and fields included, has its doc comment", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--lint", "lib/mod.ts"],
    cwd: new URL("..", import.meta.url),
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stderr) +
    new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, text.slice(0, 4000));
});
