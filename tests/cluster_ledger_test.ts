// What the origin does when a message between servers is lost, and how long the worker's server
// holds a request. Messages are lost on purpose through NATS permissions: nats-server drops a
// publish the user may not make, as it drops one on a connection that breaks.

import assert from "node:assert/strict";
import type { ActionContext } from "../lib/action.ts";
import type { ClusterOptions } from "../lib/cluster/link.ts";
import {
  answerOf,
  connectClient,
  group,
  startTestServer,
  startWorker,
  type TestServer,
  type TestWorker,
  waitFor,
} from "./_helpers.ts";
import { everySees, startClusterServers } from "./_cluster.ts";
import { NATS_MISSING, NatsCluster } from "./_nats.ts";

const ignore = NATS_MISSING !== undefined;

/** Users `free`, and `nore`, `noans`, `nocancel` that may not publish requests, answers, cancels. */
const USERS = `authorization {
  users: [
    { user: free, password: free }
    { user: noreq, password: noreq, permissions: { publish: { deny: ["switchyard.t.srv.*.req"] } } }
    { user: noans, password: noans, permissions: { publish: { deny: ["switchyard.t.r.>"] } } }
    { user: nocancel, password: nocancel, permissions: { publish: { deny: ["switchyard.t.srv.*.cancel"] } } }
  ]
}`;

const FAST: Partial<ClusterOptions> = {
  heartbeatMs: 100,
  deadAfterMs: 60_000,
  probeMs: 200,
};

/** Servers s0 (as user `users[0]`) and s1 (as `users[1]`) in cluster `t`. */
function pair(
  nats: NatsCluster,
  users: [string, string],
): Promise<TestServer[] & AsyncDisposable> {
  return startClusterServers(
    "t",
    users.map((user) => ({
      servers: nats.urls,
      user,
      password: user,
      ...FAST,
    })),
  );
}

Deno.test({
  name:
    "cluster ledger: a request the worker's server never got is moved at the next loss check, not after a long timeout",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(1, USERS).start();
    await using servers = await pair(nats, ["noreq", "free"]);
    await using workers = group<TestWorker>();
    let remoteRuns = 0;
    workers.push(
      await startWorker(servers[1], {
        name: "remote",
        actions: { who: () => ++remoteRuns && "remote" },
      }),
    );
    await everySees(servers, "remote");
    await using client = await connectClient(servers[0].requesterUrl);
    // Only the remote worker offers it: the request goes there, and nats-server drops it.
    const answer = answerOf(
      client.request("who", {}, { timeout: 60 }),
      "the moved request",
      8000,
    );
    await waitFor(
      () => servers[0].broker.stats().in_flight === 1,
      "the request to be sent",
    );
    workers.push(
      await startWorker(servers[0], {
        name: "local",
        actions: { who: () => "local" },
      }),
    );
    const a = await answer;
    assert.equal(a.success, true, JSON.stringify(a));
    assert.equal(a.data, "local");
    assert.equal(remoteRuns, 0);
  },
});

Deno.test({
  name:
    "cluster ledger: an answer lost on the way back is taken from the loss check's reply; the request runs once",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(1, USERS).start();
    await using servers = await pair(nats, ["free", "noans"]);
    await using workers = group<TestWorker>();
    let runs = 0;
    workers.push(
      await startWorker(servers[1], {
        name: "remote",
        actions: { who: () => `remote ${++runs}` },
      }),
    );
    await everySees(servers, "remote");
    await using client = await connectClient(servers[0].requesterUrl);
    const a = await answerOf(
      client.request("who", {}, { timeout: 60 }),
      "the answer",
      8000,
    );
    assert.equal(a.success, true, JSON.stringify(a));
    assert.equal(a.data, "remote 1");
    assert.equal(runs, 1);
  },
});

Deno.test({
  name:
    "cluster ledger: the worker's server holds a request only as long as its caller had left",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(1, USERS).start();
    // s0's cancel never arrives: only the deadline that travelled with the request ends it.
    await using servers = await pair(nats, ["nocancel", "free"]);
    await using workers = group<TestWorker>();
    let stopped = false;
    workers.push(
      await startWorker(servers[1], {
        name: "remote",
        actions: {
          hang: (_p, ctx: ActionContext) =>
            new Promise<never>(() => {
              ctx.signal?.addEventListener("abort", () => stopped = true);
            }),
        },
      }),
    );
    await everySees(servers, "remote");
    await using client = await connectClient(servers[0].requesterUrl);
    const a = await client.request("hang", {}, { timeout: 0.5 });
    assert.equal(a.error_code, "TIMEOUT", JSON.stringify(a));
    // Held for the caller's half second, not the default 30 s.
    await waitFor(() => stopped, "the worker's server to give up", 5000);
    assert.equal(servers[1].broker.stats().in_flight, 0);
  },
});

Deno.test({
  name:
    "cluster identity: a server name already in use in the cluster is refused at join; another cluster on the same NATS may use it",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(1).start();
    const options = (cluster: string) => ({
      cluster: { servers: nats.urls, name: cluster, serverName: "same" },
    });
    await using first = startTestServer(options("t"));
    await (await first.cluster!).start();
    await using second = startTestServer(options("t"));
    await assert.rejects(
      (await second.cluster!).start(),
      /Server name 'same' is already in use in cluster 't'.*--server-name/,
    );
    assert.equal(second.broker.stats().cluster?.nats, "closed");
    assert.match(
      second.broker.stats().cluster?.nats_error ?? "",
      /already in use/,
    );
    await using other = startTestServer(options("u"));
    await (await other.cluster!).start();
    assert.deepEqual(
      first.broker.stats().cluster?.servers.map((s) => s.name),
      ["same"],
      "the other cluster's server is not listed",
    );
  },
});
