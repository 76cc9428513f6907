import assert from "node:assert/strict";
import { RequesterClient, startServer } from "../lib/mod.ts";
import { customWorker } from "../examples/custom_handler.ts";

Deno.test("examples/custom_handler - serves its own action and handles its own message type", async () => {
  const server = startServer({ host: "127.0.0.1", port: 0, requesterPort: 0 });
  const announced = Promise.withResolvers<string>();
  const worker = customWorker(server.workerUrl, {
    onAnnounce: (message) => announced.resolve(message),
  });
  const running = worker.start();
  const clientId = await worker.ready();
  const client = new RequesterClient(server.requesterUrl);
  await client.connect();
  try {
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
    assert.equal(await announced.promise, "hello");
  } finally {
    await client.close();
    await worker.stop();
    await running;
    await server.close();
  }
});
