// The cluster: several servers as one broker over a real NATS (one node, or a 3-node NATS
// cluster), with real workers and requesters on real sockets.

import assert from "node:assert/strict";
import type { ActionContext } from "../lib/action.ts";
import { serverCommand } from "../lib/console.ts";
import {
  answerOf,
  connectClient,
  group,
  idOf,
  startTestServer,
  startWorker,
  type TestServer,
  type TestWorker,
  waitFor,
} from "./_helpers.ts";
import { converged, startClusterRig } from "./_cluster.ts";
import { NATS_MISSING, NatsCluster } from "./_nats.ts";
import { hasOpenssl, makePki } from "./_pki.ts";
import { runProgram, SERVER_LOOPBACK_ARGS } from "./_procs.ts";

const ignore = NATS_MISSING !== undefined;

const whoAmI = (name: string) => () => name;

/** Starts worker `name` (it answers `who`) on s1, kept in `workers`, and waits until s0 sees it. */
async function workerOnS1(
  servers: TestServer[],
  workers: TestWorker[],
  name: string,
): Promise<void> {
  workers.push(
    await startWorker(servers[1], { name, actions: { who: whoAmI(name) } }),
  );
  await waitFor(
    () => servers[0].broker.workers().length === 1,
    `s0 to see s1's worker ${name}`,
  );
}

/**
 * Of three servers, the first two join the cluster (s0 sees the worker "w" started on s1, kept
 * in `workers`) and NATS refuses the third, which says why and holds no worker.
 */
async function twoJoinThirdRefused(
  servers: TestServer[],
  workers: TestWorker[],
): Promise<void> {
  await Promise.all(servers.map((s) => s.cluster!));
  await workerOnS1(servers, workers, "w");
  await waitFor(
    () => servers[2].broker.stats().cluster?.nats_error !== undefined,
    "the refused server to say why it is out",
  );
  assert.notEqual(servers[2].broker.stats().cluster?.nats, "connected");
  assert.equal(servers[2].broker.workers().length, 0);
}

for (const nodes of [1, 3]) {
  const on = nodes === 1 ? "one NATS" : "a 3-node NATS cluster";

  Deno.test({
    name:
      `cluster on ${on}: a request at one server runs on a worker of another`,
    ignore,
    fn: async () => {
      await using rig = await startClusterRig(3, { nodes });
      const { servers, workers, clients } = rig;
      await rig.worker(1, {
        name: "only-on-s1",
        actions: { who: whoAmI("only-on-s1") },
      });
      await converged(servers, 1);
      for (const server of [servers[0], servers[2]]) {
        const client = await connectClient(server.requesterUrl);
        clients.push(client);
        const answer = await client.request("who", {});
        assert.equal(answer.success, true);
        assert.equal(answer.data, "only-on-s1");
        assert.equal(answer.processed_by, idOf(workers[0]));
      }
      // Every server lists every server and every worker with the server it is attached to,
      // once it has heard from them all (a server with no workers is heard by its heartbeat).
      await waitFor(
        () =>
          servers.every((s) => s.broker.stats().cluster?.servers.length === 3),
        "every server to hear from every server",
        5000,
      );
      for (const server of servers) {
        const listed = server.broker.workers();
        assert.deepEqual(listed.map((w) => [w.name, w.server]), [[
          "only-on-s1",
          "s1",
        ]]);
        const health = await (await fetch(
          server.requesterUrl.replace("ws:", "http:") + "/health",
        )).json();
        assert.deepEqual(
          health.cluster.servers.map((s: { name: string }) => s.name).sort(),
          ["s0", "s1", "s2"],
        );
        assert.equal(health.cluster.nats, "connected");
        assert.deepEqual(
          health.cluster.workers.map((
            w: { name: string; server: string },
          ) => [
            w.name,
            w.server,
          ]),
          [["only-on-s1", "s1"]],
        );
        assert.equal(health.workers, 1);
      }
    },
  });
}

Deno.test({
  name:
    "cluster: a crossing request is one NATS request-reply, its metadata in headers, and each gets its own answer",
  ignore,
  fn: async () => {
    await using rig = await startClusterRig(2);
    const { nats, servers } = rig;
    await rig.worker(1, {
      name: "doubler",
      concurrency: 64,
      actions: { double: (p) => (p as { n: number }).n * 2 },
    });
    await converged(servers, 1);
    const origin = (await servers[0].cluster!).id;
    const target = (await servers[1].cluster!).id;
    // A client of our own on the relay subjects sees what crosses.
    const { connectNats } = await import("../lib/cluster/nats_connect.ts");
    const spy = await connectNats({ servers: nats.urls });
    const requests: { reply?: string; headers: (string | undefined)[] }[] = [];
    let answers = 0;
    spy.subscribe(`switchyard.t.srv.${target}.req`, {
      callback: (_error, msg) =>
        void requests.push({
          reply: msg.reply,
          headers: ["Sy-Origin", "Sy-Worker", "Sy-Left"].map((h) =>
            msg.headers?.get(h)
          ),
        }),
    });
    spy.subscribe(`switchyard.t.r.${origin}.>`, {
      callback: (_error, msg) => {
        if (msg.headers?.get("Sy-Kind") === "a") answers++;
      },
    });
    await spy.flush();
    try {
      await using client = await connectClient(servers[0].requesterUrl);
      const n = 60;
      const got = await Promise.all(
        Array.from(
          { length: n },
          (_, i) => client.request("double", { n: i }, { timeout: 20 }),
        ),
      );
      assert.deepEqual(
        got.map((a) => [a.success, a.data]),
        Array.from({ length: n }, (_, i) => [true, i * 2]),
      );
      await spy.flush();
      await waitFor(() => answers === n, `${n} answers on the reply subjects`);
      assert.equal(requests.length, n, "one NATS message per request");
      const worker = servers[1].broker.workers()[0].client_id;
      for (const r of requests) {
        assert.match(
          r.reply ?? "",
          new RegExp(`^switchyard\\.t\\.r\\.${origin}\\.msg_`),
        );
        assert.equal(r.headers[0], origin);
        assert.equal(r.headers[1], worker);
        // The caller's 20 s, less the moment it took to get here.
        const left = Number(r.headers[2]);
        assert.ok(left > 10_000 && left <= 20_000, `Sy-Left ${left}`);
      }
    } finally {
      await spy.close();
    }
  },
});

Deno.test({
  name: "cluster: one balancer over the workers of every server",
  ignore,
  fn: async () => {
    await using rig = await startClusterRig(3);
    const { servers } = rig;
    for (const i of servers.keys()) {
      await rig.worker(i, {
        name: `w${i}`,
        concurrency: 2,
        actions: {
          // Slow enough that requests overlap, so load decides the placement.
          slow: async () => {
            await new Promise((r) => setTimeout(r, 20));
            return `w${i}`;
          },
        },
      });
    }
    await converged(servers, 3);
    const client = await rig.client(0);
    const answers = await Promise.all(
      Array.from({ length: 30 }, () => client.request("slow", {})),
    );
    const served = new Map<string, number>();
    for (const a of answers) {
      assert.equal(a.success, true, JSON.stringify(a));
      served.set(String(a.data), (served.get(String(a.data)) ?? 0) + 1);
    }
    // 30 requests, 6 slots over three servers: every worker must have taken some.
    assert.deepEqual([...served.keys()].sort(), ["w0", "w1", "w2"]);
  },
});

interface Item {
  symbol_type: string;
  code: string;
}

/** A stub `get_markets` that streams each item and names the worker that served it. */
function markets(name: string) {
  return (params: unknown, ctx: ActionContext) => {
    const list = params as Item[];
    return list.map((p, i) => {
      const result = { success: true, code: p.code, data: [], by: name };
      ctx.progress?.(i + 1, list.length, { index: i, result });
      return result;
    });
  };
}

Deno.test({
  name:
    "cluster: a batch places codes by rendezvous over every server's workers, the same through any server, streamed too",
  ignore,
  fn: async () => {
    await using rig = await startClusterRig(3);
    const { servers, clients } = rig;
    for (const i of servers.keys()) {
      await rig.worker(i, {
        name: `m${i}`,
        actions: { get_markets: markets(`m${i}`) },
      });
    }
    await converged(servers, 3);
    const items = Array.from({ length: 60 }, (_, i) => ({
      symbol_type: "etf",
      code: String(510000 + i * 7),
    }));
    const placements: Map<string, string>[] = [];
    for (const server of servers) {
      const client = await connectClient(server.requesterUrl);
      clients.push(client);
      const answer = await client.request("get_markets", items);
      assert.equal(answer.success, true, JSON.stringify(answer.error));
      const results = (answer.data as {
        results: { code: string; by: string }[];
      }).results;
      assert.deepEqual(results.map((r) => r.code), items.map((x) => x.code));
      placements.push(new Map(results.map((r) => [r.code, r.by])));
    }
    // Every worker is home to some codes, and each code has the same home whichever server
    // took the batch.
    assert.deepEqual(
      new Set(placements[0].values()),
      new Set(["m0", "m1", "m2"]),
    );
    assert.deepEqual(placements[1], placements[0]);
    assert.deepEqual(placements[2], placements[0]);

    // Streamed through the last server: every item once, from the same homes.
    const batch = clients[2].stream("get_markets", items);
    const seen = new Map<number, string>();
    for await (const { index, result } of batch) {
      assert.ok(!seen.has(index), `item ${index} came twice`);
      seen.set(index, (result as { by: string }).by);
    }
    assert.equal((await batch.answer).success, true);
    assert.equal(seen.size, items.length);
    for (const [index, by] of seen) {
      assert.equal(by, placements[0].get(items[index].code));
    }
  },
});

Deno.test({
  name:
    "cluster: the console lists every worker with its server and reaches a worker of another server",
  ignore,
  fn: async () => {
    await using rig = await startClusterRig(2);
    const { servers, workers } = rig;
    await rig.worker(1, {
      name: "far",
      actions: { who: whoAmI("far") },
    });
    await converged(servers, 1);
    const lines: string[] = [];
    await serverCommand(servers[0].broker, "list", (t) => lines.push(t));
    const table = lines.join("\n").split("\n");
    assert.match(table[0], /^CLIENT_ID +NAME +SERVER +ADDRESS/);
    assert.match(table[1], new RegExp(`^${idOf(workers[0])} +far +s1 `));
    lines.length = 0;
    await serverCommand(
      servers[0].broker,
      `send ${idOf(workers[0])} who`,
      (t) => lines.push(t),
    );
    assert.match(lines.join("\n"), /far/);
    const info = await servers[0].broker.runAction("get_client_info", {});
    assert.deepEqual(
      (info as { name: string; server: string }[]).map((
        w,
      ) => [w.name, w.server]),
      [["far", "s1"]],
    );
  },
});

Deno.test({
  name:
    "cluster: console broadcast and custom messages reach workers of every server, once each",
  ignore,
  fn: async () => {
    await using rig = await startClusterRig(3);
    const { servers, workers } = rig;
    const got = new Map<string, string[]>();
    for (const [i, name] of ["here", "far1", "far2"].entries()) {
      const worker = await startWorker(servers[i], { name });
      got.set(name, []);
      const seen = (envelope: { type: string; data: unknown }) => {
        got.get(name)!.push(
          `${envelope.type} ${JSON.stringify(envelope.data)}`,
        );
      };
      worker.onMessage("notification", seen).onMessage("ops_note", seen);
      workers.push(worker);
    }
    await converged(servers, 3);
    const lines: string[] = [];
    await serverCommand(
      servers[0].broker,
      "broadcast maintenance at noon",
      (t) => lines.push(t),
    );
    assert.equal(lines.join("\n"), "Sent to 3 workers");
    // A custom type to one worker of another server, and to nobody for an unknown id.
    assert.equal(
      servers[0].broker.sendMessage("ops_note", { n: 1 }, idOf(workers[2])),
      1,
    );
    assert.equal(servers[0].broker.sendMessage("ops_note", {}, "nobody"), 0);
    // NATS keeps one publisher's order: once the last message is in, any duplicate of the
    // broadcast would be in too.
    for (const w of workers) {
      servers[0].broker.sendMessage("ops_note", { end: true }, idOf(w));
    }
    const end = 'ops_note {"end":true}';
    await waitFor(
      () => [...got.values()].every((m) => m.includes(end)),
      "every worker to get the last message",
      5000,
    );
    const note = 'notification {"message":"maintenance at noon"}';
    assert.deepEqual(got.get("here"), [note, end]);
    assert.deepEqual(got.get("far1"), [note, end]);
    assert.deepEqual(got.get("far2"), [note, 'ops_note {"n":1}', end]);
  },
});

Deno.test({
  name: "demo:cluster - runs, shows affinity across servers, exits 0",
  ignore,
  fn: async () => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["task", "demo:cluster"],
      cwd: new URL("../", import.meta.url).pathname,
      stdin: "null",
      env: { NO_COLOR: "1" },
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.match(text, /10\/10 symbols on the same worker through s1 and s2/);
    assert.match(text, /on s1/);
    assert.match(text, /on s2/);
  },
});

Deno.test({
  name:
    "cluster: servers authenticate to NATS with a token; a wrong one stays out and says so",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(
      1,
      'authorization { token: "s3cret" }',
    ).start();
    await using servers = group(
      ["s0", "s1", "bad"].map((name) =>
        startTestServer({
          cluster: {
            servers: nats.urls,
            name: "auth",
            serverName: name,
            token: name === "bad" ? "wrong" : "s3cret",
          },
        })
      ),
    );
    await using workers = group<TestWorker>();
    await twoJoinThirdRefused(servers, workers);
    await using client = await connectClient(servers[0].requesterUrl);
    assert.equal((await client.request("who")).data, "w");
    await client.close();
    const bad = servers[2].broker.stats().cluster!;
    assert.match(bad.nats_error!, /author/i);
    assert.deepEqual(bad.servers.map((s) => s.name), ["bad"]);
  },
});

Deno.test({
  name:
    "cluster: an action a remote worker marked non-retriable is not run again when that worker is lost",
  ignore,
  fn: async () => {
    await using rig = await startClusterRig(2);
    const { servers, workers } = rig;
    const calls = { far: 0, near: 0 };
    const far = await startWorker(servers[1], { name: "far" });
    workers.push(far);
    far.registerAction(
      "charge",
      (_p, ctx) => {
        calls.far++;
        // Holds the request until the worker goes away.
        return new Promise((_, reject) =>
          ctx.signal.addEventListener(
            "abort",
            () => reject(ctx.signal.reason),
          )
        );
      },
      { retriable: false },
    );
    await waitFor(
      () =>
        servers[0].broker.workers().some((w) => w.actions?.includes("charge")),
      "s0 to see far's charge action",
    );
    const client = await rig.client(0);
    const answer = answerOf(
      client.request("charge", {}, { timeout: 10 }),
      "the charge",
      15_000,
    );
    await waitFor(() => calls.far === 1, "far to start charging");
    // A second worker that would take the request again, if it were retriable.
    await rig.worker(0, {
      name: "near",
      actions: {
        charge: () => {
          calls.near++;
          return "charged twice";
        },
      },
    });
    await far.stop(0);
    const result = await answer;
    assert.equal(result.success, false);
    assert.equal(result.error_code, "WORKER_LOST");
    assert.deepEqual(calls, { far: 1, near: 0 });
  },
});

Deno.test({
  name:
    "cluster: a server that shuts down says so, and the others move its work at once",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(1).start();
    // Silence alone would take a minute to count: only the leaving message can be quick.
    await using servers = group(["s0", "s1"].map((name) =>
      startTestServer({
        cluster: {
          servers: nats.urls,
          name: "leave",
          serverName: name,
          deadAfterMs: 60_000,
        },
      })
    ));
    await using workers = group<TestWorker>();
    await Promise.all(servers.map(async (s) => (await s.cluster!).start()));
    await workerOnS1(servers, workers, "w1");
    await servers[1].close();
    await waitFor(
      () =>
        servers[0].broker.workers().length === 0 &&
        servers[0].broker.stats().cluster!.servers.length === 1,
      "s0 to drop s1 and its worker",
    );
  },
});

Deno.test({
  name: "cluster: servers authenticate to NATS with a user and password",
  ignore,
  fn: async () => {
    await using nats = await new NatsCluster(
      1,
      'authorization { user: "yard", password: "pa55" }',
    ).start();
    await using servers = group(["s0", "s1"].map((name) =>
      startTestServer({
        cluster: {
          servers: nats.urls,
          name: "userpass",
          serverName: name,
          user: "yard",
          password: "pa55",
        },
      })
    ));
    await using workers = group<TestWorker>();
    await Promise.all(servers.map(async (s) => (await s.cluster!).start()));
    await workerOnS1(servers, workers, "w");
    assert.equal(servers[0].broker.stats().cluster?.nats, "connected");
  },
});

Deno.test("cluster flags - mistakes get one clear line and exit 2", async () => {
  for (
    const [args, message] of [
      [
        ["--cluster", "http://h:4222"],
        /Invalid --cluster URL 'http:\/\/h:4222'/,
      ],
      [
        ["--cluster", "nats://h:4222", "--cluster-name", "a.b"],
        /Invalid --cluster-name 'a\.b'/,
      ],
      [["--cluster-name", "x"], /--cluster-name needs --cluster/],
    ] as const
  ) {
    const out = await runProgram("server.ts", [
      ...SERVER_LOOPBACK_ARGS,
      "--no-console",
      ...args,
    ]);
    assert.equal(out.code, 2, out.stderr);
    assert.match(out.stderr, message);
  }
});

Deno.test({
  name:
    "cluster: servers reach NATS over TLS trusting its CA; one that does not trust it stays out",
  ignore: ignore || !hasOpenssl(),
  fn: async () => {
    await using pki = await makePki();
    await using nats = await new NatsCluster(
      1,
      `tls { cert_file: "${pki.dir}/server.pem", key_file: "${pki.dir}/server.key" }`,
    ).start();
    const urls = nats.urls.map((u) => u.replace("nats://", "tls://"));
    await using servers = group(
      ["s0", "s1", "untrusting"].map((name) =>
        startTestServer({
          cluster: {
            servers: urls,
            name: "tls",
            serverName: name,
            tlsCa: name === "untrusting" ? undefined : pki.ca,
          },
        })
      ),
    );
    await using workers = group<TestWorker>();
    await twoJoinThirdRefused(servers, workers);
  },
});
