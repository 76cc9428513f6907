import assert from "node:assert/strict";
import {
  connectClient,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";

Deno.test("steering - market requests avoid a worker that reports a blocked upstream until it clears", async () => {
  await using server = startTestServer({ heartbeatIntervalMs: 30 });
  let blocked = ["eastmoney"];
  const market = (name: string) => ({
    get_market: (params: unknown) => ({
      success: true,
      code: (params as { code: string }).code,
      name,
    }),
  });
  await using a = await startWorker(server, {
    name: "a",
    actions: market("a"),
    heartbeatData: () => ({ blocked_sources: blocked }),
  });
  await using b = await startWorker(server, {
    name: "b",
    actions: market("b"),
  });
  await using client = await connectClient(server.requesterUrl);
  const aId = a.status().client_id!;
  await waitFor(
    () =>
      server.broker.workers().find((w) => w.client_id === aId)
        ?.blocked_sources.length === 1,
    "worker a's heartbeat",
  );
  const steered = await Promise.all(
    Array.from(
      { length: 20 },
      (_, i) => client.request("get_market", { code: `51030${i % 10}` }),
    ),
  );
  assert.ok(
    steered.every((r) => r.processed_by === b.status().client_id),
    "market work reached a",
  );

  // Work that does not touch the upstream still goes to both.
  const times = await Promise.all(
    Array.from({ length: 20 }, () => client.request("get_time")),
  );
  assert.ok(times.some((r) => r.processed_by === aId));

  blocked = [];
  await waitFor(
    () =>
      server.broker.workers().find((w) => w.client_id === aId)
        ?.blocked_sources.length === 0,
    "worker a's clear heartbeat",
  );
  const back = await Promise.all(
    Array.from(
      { length: 20 },
      () => client.request("get_market", { code: "510300" }),
    ),
  );
  assert.ok(
    back.some((r) => r.processed_by === aId),
    "worker a never got market work back",
  );
});
