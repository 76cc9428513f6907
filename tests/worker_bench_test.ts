// A worker benched for a timeout comes back as soon as it answers in time: the server probes it
// (it may get no work otherwise while other workers are healthy), logs benching and coming back
// once each with the reason, and /health and get_client_info show it meanwhile.
import assert from "node:assert/strict";
import { PROBE_AFTER_MS } from "../lib/broker/registry.ts";
import { setupLogging } from "../lib/mod.ts";
import {
  connectClient,
  idOf,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";

const lines: string[] = [];
setupLogging({ level: "info", write: (line) => lines.push(line) });

Deno.test("bench - a timed-out worker is benched once, probed within 10 s, and back as soon as it answers in time", async () => {
  let offset = 0;
  const clock = { now: () => Date.now() + offset };
  await using server = startTestServer({ clock });
  const release = Promise.withResolvers<void>();
  await using slow = await startWorker(server, {
    name: "slow",
    actions: { hang: () => release.promise.then(() => "late") },
  });
  await using _healthy = await startWorker(server, {
    name: "healthy",
    actions: { hang: () => "quick" },
  });
  await using client = await connectClient(server.requesterUrl);
  const id = idOf(slow);
  const record = server.broker.dispatcher.registry.get(id)!;
  const health = async () =>
    await (await fetch(`${server.requesterUrl.replace("ws", "http")}/health`))
      .json();
  try {
    // Sent to the slow worker only (the console's `send` does the same), twice.
    for (let i = 0; i < 2; i++) {
      const answer = await server.broker.dispatcher.submit("hang", {}, {
        deadline: clock.now() + 100,
        only: id,
      });
      assert.equal(answer.ok, false);
    }
    assert.equal(record.healthy, false);
    const info = server.broker.workers().find((w) => w.client_id === id)!;
    assert.match(info.benched?.reason ?? "", /hang passed its deadline/);
    const during = await health();
    assert.equal(during.benched_workers, 1);
    assert.equal(during.healthy_workers, 1);
    assert.equal(
      lines.filter((l) => l.includes(`Worker ${id} benched`)).length,
      1,
      "benching logged once:\n" + lines.join(""),
    );
    // Other work goes to the healthy worker meanwhile.
    const other = await client.request("hang", {});
    assert.equal(other.data, "quick");

    // Before the probe delay, nothing; after it, the sweep asks the benched worker.
    server.broker.sweep();
    assert.equal(record.probing, false);
    offset += PROBE_AFTER_MS;
    server.broker.sweep();
    await waitFor(() => record.healthy, "the benched worker to come back");
    assert.ok(PROBE_AFTER_MS + 1000 <= 10_000, "probed within 10 s");
    const after = await health();
    assert.equal(after.benched_workers, 0);
    assert.equal(after.healthy_workers, 2);
    assert.equal(
      server.broker.workers().find((w) => w.client_id === id)!.benched,
      null,
    );
    const back = lines.filter((l) => l.includes(`Worker ${id} is back`));
    assert.equal(back.length, 1, lines.join(""));
    assert.match(back[0], /get_time in time \(benched because hang passed/);
  } finally {
    release.resolve();
  }
});
