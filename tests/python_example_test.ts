// docs/python.md's example, run as it is printed, with the Python `websockets` a user has,
// against a real server and a worker serving demo market data.
import assert from "node:assert/strict";
import { createMarketService, Worker } from "../lib/mod.ts";
import { releasing, startTestServer, within } from "./_helpers.ts";

const DOC = new URL("../docs/python.md", import.meta.url);

/** A `python3` that can import `websockets`, and that library's major version. */
function findPython(): { python: string; major: number } | undefined {
  for (const python of ["python3", "/usr/bin/python3"]) {
    try {
      const out = new Deno.Command(python, {
        args: ["-c", "import websockets; print(websockets.__version__)"],
        stdout: "piped",
        stderr: "null",
      }).outputSync();
      if (out.success) {
        const version = new TextDecoder().decode(out.stdout).trim();
        return { python, major: Number(version.split(".")[0]) };
      }
    } catch {
      // Not installed.
    }
  }
  return undefined;
}

const found = findPython();
if (!found) {
  console.log(
    "(skipped: no python3 with websockets here; `apt-get install python3-websockets` or `pip install websockets`)",
  );
}

Deno.test({
  name: "docs/python.md - the example prints the time, a series and a batch",
  ignore: !found,
  fn: async () => {
    const markdown = await Deno.readTextFile(DOC);
    let code = markdown.match(/```python\n([^]*?)```/)![1];
    // The doc's note: before 14.0 the header argument is called extra_headers.
    if (found!.major < 14) {
      code = code.replace("additional_headers=", "extra_headers=");
    }
    await using server = startTestServer({ requesterToken: "py-token" });
    await using market = releasing(
      createMarketService({ providers: ["demo"] }),
      (m) => m.close(),
    );
    // stop() also waits for the loop that start() runs.
    await using worker = releasing(
      new Worker({ url: server.workerUrl, name: "py-demo" }),
      (w) => w.stop(),
    );
    for (const [name, handler] of Object.entries(market.actions())) {
      worker.registerAction(name, handler);
    }
    void worker.start();
    await within(worker.ready(), "the worker to connect");
    const out = await new Deno.Command(found!.python, {
      args: ["-c", code],
      env: {
        SWITCHYARD_URL: server.requesterUrl,
        SWITCHYARD_REQUESTER_TOKEN: "py-token",
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const lines = stdout.trim().split("\n");
    assert.match(lines[0], /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
    assert.match(lines[1], /^510300 \d+ bars, last \d{4}-\d\d-\d\d$/);
    assert.match(lines[2], /^510300 True \d+$/);
    assert.match(lines[3], /^000300 True \d+$/);
  },
});
