import assert from "node:assert/strict";
import { connectClient, startTestServer, startWorker } from "./_helpers.ts";

Deno.test("isolation - two requesters using the same request_ids each get only their own answers", async () => {
  await using server = startTestServer();
  await using _worker = await startWorker(server, {
    actions: {
      echo: async (params) => {
        await new Promise((r) => setTimeout(r, Math.random() * 5));
        return params;
      },
    },
  });
  await using alice = await connectClient(server.requesterUrl);
  await using bob = await connectClient(server.requesterUrl);
  const ids = Array.from({ length: 50 }, (_, i) => `shared-${i}`);
  const [a, b] = await Promise.all([
    Promise.all(
      ids.map((id) =>
        alice.request("echo", { who: "alice", id }, { requestId: id })
      ),
    ),
    Promise.all(
      ids.map((id) =>
        bob.request("echo", { who: "bob", id }, { requestId: id })
      ),
    ),
  ]);
  a.forEach((answer, i) =>
    assert.deepEqual(answer.data, { who: "alice", id: ids[i] })
  );
  b.forEach((answer, i) =>
    assert.deepEqual(answer.data, { who: "bob", id: ids[i] })
  );
});
