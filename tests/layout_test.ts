// The layout of lib/ (docs/architecture.md): no module imports itself back through others, and
// the doc names only files and members that exist, as code moves under it.

import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);

/** The local modules reachable from `entries`, each with the local modules it imports. */
async function importGraph(
  entries: string[],
): Promise<Map<string, Set<string>>> {
  const graph = new Map<string, Set<string>>();
  for (const entry of entries) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", entry],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as {
      modules: {
        specifier: string;
        dependencies?: {
          code?: { specifier?: string };
          type?: { specifier?: string };
        }[];
      }[];
    };
    for (const module of info.modules) {
      if (!module.specifier.startsWith(ROOT.href)) continue;
      const edges = graph.get(module.specifier) ?? new Set<string>();
      for (const dependency of module.dependencies ?? []) {
        for (const target of [dependency.code, dependency.type]) {
          if (target?.specifier?.startsWith(ROOT.href)) {
            edges.add(target.specifier);
          }
        }
      }
      graph.set(module.specifier, edges);
    }
  }
  return graph;
}

/** The import circles of `graph` (its strongly connected components of two or more, or a self-import). */
function circles(graph: Map<string, Set<string>>): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) !== index.get(v)) return;
    const component: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      component.push(w.slice(ROOT.href.length));
    } while (w !== v);
    if (component.length > 1 || graph.get(v)?.has(v)) found.push(component);
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

Deno.test("layout - lib/ and the entry programs import no module circle", async () => {
  const graph = await importGraph([
    "lib/mod.ts",
    "server.ts",
    "worker.ts",
    "requester.ts",
  ]);
  assert.ok(graph.size > 50, `only ${graph.size} modules read`);
  assert.deepEqual(circles(graph), []);
});

Deno.test("layout - the worker's and the transport's modules import nothing of the server's (lib/broker/)", async () => {
  const graph = await importGraph(["worker.ts", "lib/mod.ts"]);
  const crossings: string[] = [];
  for (const [module, imports] of graph) {
    const from = module.slice(ROOT.href.length);
    if (!from.startsWith("lib/worker/") && !from.startsWith("lib/transport/")) {
      continue;
    }
    for (const target of imports) {
      const to = target.slice(ROOT.href.length);
      if (to.startsWith("lib/broker/")) crossings.push(`${from} -> ${to}`);
    }
  }
  assert.ok(
    [...graph.keys()].some((m) => m.includes("lib/worker/")),
    "no module of lib/worker/ read",
  );
  assert.deepEqual(crossings, []);
});

Deno.test("layout - docs/architecture.md names only files and members that exist", async () => {
  const doc = await Deno.readTextFile(new URL("docs/architecture.md", ROOT));
  const names = [...doc.matchAll(/`([^`\s]+)`/g)].map((m) => m[1]);
  const sources = new Map<string, string>();
  for await (const path of libFiles("lib/")) {
    sources.set(path, await Deno.readTextFile(new URL(path, ROOT)));
  }
  const missing: string[] = [];
  for (const name of names) {
    if (/^lib\/[\w/]+\.ts$/.test(name) && !sources.has(name)) {
      missing.push(name);
    }
    // `Class.method` and `Class.#method` must be written in the file that declares the class.
    const member = /^([A-Z]\w*)\.(#?\w+)$/.exec(name);
    if (!member) continue;
    const [, cls, field] = member;
    const file = [...sources.values()].find((text) =>
      new RegExp(`^(export )?class ${cls}\\b`, "m").test(text)
    );
    const written = new RegExp(
      `^\\s+(async |static |get |readonly |override )*${field}\\s*[(<=:?]`,
      "m",
    );
    if (file === undefined || !written.test(file)) missing.push(name);
  }
  assert.ok(names.length > 50, `only ${names.length} names read`);
  assert.deepEqual(missing, []);
});

async function* libFiles(dir: string): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(new URL(dir, ROOT))) {
    const path = dir + entry.name;
    if (entry.isDirectory) yield* libFiles(path + "/");
    else if (path.endsWith(".ts")) yield path;
  }
}
