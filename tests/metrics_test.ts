// GET /metrics scraped from a real server with real workers and requesters, parsed as Prometheus
// text.

import assert from "node:assert/strict";
import { Metrics } from "../lib/broker/metrics.ts";
import {
  connectClient,
  openRawWorker,
  RawPeer,
  startTestServer,
  startWorker,
  waitFor,
} from "./_helpers.ts";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses Prometheus text format 0.0.4, checking every sample belongs to a declared family. */
function parseProm(
  text: string,
): { samples: Sample[]; types: Map<string, string> } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const type = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/
      .exec(line);
    if (type) {
      types.set(type[1], type[2]);
      continue;
    }
    if (line.startsWith("# HELP ")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[2]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/g;
      let consumed = 0;
      for (const l of m[2].matchAll(re)) {
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => c === "n" ? "\n" : c);
        consumed += l[0].length;
      }
      assert.equal(consumed, m[2].length, `bad labels in: ${line}`);
    }
    const value = Number(m[3]);
    assert.ok(!Number.isNaN(value), `not a number: ${line}`);
    const family = m[1].replace(/_(bucket|sum|count)$/, "");
    assert.ok(
      types.has(m[1]) || types.get(family) === "histogram",
      `sample without a TYPE line: ${line}`,
    );
    samples.push({ name: m[1], labels, value });
  }
  return { samples, types };
}

function pick(
  samples: Sample[],
  name: string,
  labels: Record<string, string> = {},
): Sample[] {
  return samples.filter((s) =>
    s.name === name &&
    Object.entries(labels).every(([k, v]) => s.labels[k] === v)
  );
}

function value(
  samples: Sample[],
  name: string,
  labels: Record<string, string> = {},
): number {
  const found = pick(samples, name, labels);
  assert.equal(
    found.length,
    1,
    `expected one ${name} ${JSON.stringify(labels)}, got ${found.length}`,
  );
  return found[0].value;
}

async function scrape(port: number): Promise<Sample[]> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), Metrics.CONTENT_TYPE);
  return parseProm(await response.text()).samples;
}

Deno.test("metrics - requests, latency, workers and connections on both ports", async () => {
  await using server = startTestServer({ requesterToken: "r-token" });
  await using _worker = await startWorker(server, {
    name: "alpha",
    actions: {
      echo: (params) => params,
      fail: () => {
        throw new Error("boom");
      },
    },
  });
  await using client = await connectClient(server.requesterUrl, {
    token: "r-token",
  });
  for (let i = 0; i < 5; i++) {
    assert.equal((await client.request("echo", { i })).success, true);
  }
  assert.equal((await client.request("fail", {})).success, false);
  // Unknown commands, each a new name: they must not each make a series.
  for (let i = 0; i < 30; i++) {
    const answer = await client.request(`no_such_${i}`, {});
    assert.equal(answer.error, "No available workers");
  }
  // A refused connection: wrong token.
  await assert.rejects(
    RawPeer.open(server.requesterUrl, {
      authorization: "Bearer wrong",
    }),
  );

  for (const port of [server.port, server.requesterPort]) {
    const samples = await scrape(port);
    assert.equal(
      value(samples, "switchyard_requests_total", {
        command: "echo",
        outcome: "success",
      }),
      5,
    );
    assert.equal(
      value(samples, "switchyard_requests_total", {
        command: "fail",
        outcome: "worker_error",
      }),
      1,
    );
    assert.equal(
      value(samples, "switchyard_requests_total", {
        command: "other",
        outcome: "unknown_command",
      }),
      30,
    );
    const commands = new Set(
      pick(samples, "switchyard_requests_total").map((s) => s.labels.command),
    );
    assert.deepEqual([...commands].sort(), ["echo", "fail", "other"]);
    // The histogram: cumulative buckets ending at +Inf = count.
    const buckets = pick(
      samples,
      "switchyard_request_duration_seconds_bucket",
      { command: "echo" },
    );
    assert.ok(buckets.length > 5);
    for (let i = 1; i < buckets.length; i++) {
      assert.ok(buckets[i].value >= buckets[i - 1].value);
    }
    assert.equal(buckets.at(-1)!.labels.le, "+Inf");
    assert.equal(buckets.at(-1)!.value, 5);
    assert.equal(
      value(samples, "switchyard_request_duration_seconds_count", {
        command: "echo",
      }),
      5,
    );
    assert.ok(
      value(samples, "switchyard_request_duration_seconds_sum", {
        command: "echo",
      }) >= 0,
    );

    assert.equal(value(samples, "switchyard_workers", { state: "ready" }), 1);
    const id = server.broker.workers()[0].client_id;
    assert.equal(
      value(samples, "switchyard_worker_served_total", {
        worker: id,
        name: "alpha",
      }),
      6,
    );
    assert.equal(
      value(samples, "switchyard_worker_failed_total", { worker: id }),
      1,
    );
    assert.equal(
      value(samples, "switchyard_worker_in_flight", { worker: id }),
      0,
    );
    assert.equal(value(samples, "switchyard_queue_depth"), 0);
    assert.equal(value(samples, "switchyard_requests_in_flight"), 0);
    assert.equal(
      value(samples, "switchyard_connections", { port: "requester" }),
      1,
    );
    assert.equal(
      value(samples, "switchyard_connections", { port: "worker" }),
      1,
    );
    assert.equal(
      value(samples, "switchyard_connections_total", { port: "worker" }),
      1,
    );
    assert.equal(
      value(samples, "switchyard_connection_refusals_total", {
        port: "requester",
        reason: "unauthorized",
      }),
      1,
    );
    assert.equal(
      value(samples, "switchyard_build_info", { version: "0.1.0" }),
      1,
    );
  }
});

Deno.test("metrics - upstream cool-downs, budgets and cache hits from worker heartbeats", async () => {
  await using server = startTestServer();
  const { peer, id } = await openRawWorker(server, {
    name: "market-1",
    actions: ["get_market"],
  });
  try {
    // Before any lookup the hit ratio has no value: no sample, never NaN.
    const before = await (await fetch(
      `http://127.0.0.1:${server.port}/metrics`,
    )).text();
    assert.match(before, /# TYPE switchyard_upstream_cache_hit_ratio gauge/);
    assert.doesNotMatch(before, /^switchyard_upstream_cache_hit_ratio /m);
    assert.doesNotMatch(before, /nan/i);
    const now = Date.now();
    peer.sendEnvelope("heartbeat", {
      blocked_sources: ["eastmoney"],
      upstream: {
        hosts: {
          "push2his.eastmoney.com": {
            cooldown_until: now + 60_000,
            budget_hour: 120,
            budget_day: 900,
            rate: 0.5,
          },
          "web.ifzq.gtimg.cn": {
            cooldown_until: 0,
            budget_hour: "lots", // wrong type: dropped
            rate: 1,
          },
        },
        cache: { hits: 30, misses: 10 },
      },
    });
    await peer.envelope("heartbeat");
    // A second worker that reports its cache only, and one that sends garbage.
    const other = await openRawWorker(server, { name: "market-2" });
    other.peer.sendEnvelope("heartbeat", {
      upstream: { cache: { hits: 10, misses: 30 } },
    });
    await other.peer.envelope("heartbeat");
    const junk = await openRawWorker(server, { name: "junk" });
    junk.peer.sendEnvelope("heartbeat", { upstream: ["not", "an", "object"] });
    await junk.peer.envelope("heartbeat");

    const samples = await scrape(server.port);
    const cooldown = value(samples, "switchyard_upstream_cooldown_seconds", {
      worker: id,
      host: "push2his.eastmoney.com",
    });
    assert.ok(cooldown > 50 && cooldown <= 60, String(cooldown));
    assert.equal(
      value(samples, "switchyard_upstream_cooldown_seconds", {
        worker: id,
        host: "web.ifzq.gtimg.cn",
      }),
      0,
    );
    assert.equal(
      value(samples, "switchyard_upstream_budget_remaining", {
        host: "push2his.eastmoney.com",
        window: "hour",
      }),
      120,
    );
    assert.equal(
      value(samples, "switchyard_upstream_budget_remaining", {
        host: "push2his.eastmoney.com",
        window: "day",
      }),
      900,
    );
    assert.equal(
      pick(samples, "switchyard_upstream_budget_remaining", {
        host: "web.ifzq.gtimg.cn",
      }).length,
      0,
    );
    assert.equal(
      value(samples, "switchyard_upstream_rate", { host: "web.ifzq.gtimg.cn" }),
      1,
    );
    assert.equal(
      value(samples, "switchyard_upstream_blocked", {
        worker: id,
        source: "eastmoney",
      }),
      1,
    );
    assert.equal(
      value(samples, "switchyard_upstream_cache_hits_total", { worker: id }),
      30,
    );
    assert.equal(value(samples, "switchyard_upstream_cache_hit_ratio"), 0.5);
    assert.equal(value(samples, "switchyard_workers", { state: "blocked" }), 1);
    assert.equal(value(samples, "switchyard_workers", { state: "ready" }), 2);
    await Promise.all([other.peer.close(), junk.peer.close()]);
    await waitFor(() => server.broker.workers().length === 1, "workers to go");
    // Their series go with them.
    const after = await scrape(server.port);
    assert.equal(
      pick(after, "switchyard_upstream_cache_hits_total").length,
      1,
    );
  } finally {
    await peer.close();
  }
});

Deno.test("metrics - commands offered by no one share one series, up to the cap", () => {
  const metrics = new Metrics({
    maxCommands: 3,
    isKnownCommand: (c) => c.startsWith("known"),
  });
  const now = Date.now();
  for (let i = 0; i < 10; i++) {
    metrics.request(`unknown_${i}`, "UNKNOWN_COMMAND", 1, now);
    metrics.request(`known_${i}`, "TIMEOUT", 1, now);
  }
  metrics.request("made_up_code", "SOMETHING_ELSE", 1, now);
  return metrics.text().then((text) => {
    const { samples } = parseProm(text);
    const rows = pick(samples, "switchyard_requests_total");
    const commands = new Set(rows.map((s) => s.labels.command));
    assert.deepEqual([...commands].sort(), [
      "known_0",
      "known_1",
      "known_2",
      "other",
    ]);
    assert.equal(
      value(samples, "switchyard_requests_total", {
        command: "other",
        outcome: "unknown_command",
      }),
      10,
    );
    assert.equal(
      value(samples, "switchyard_requests_total", {
        command: "other",
        outcome: "timeout",
      }),
      7,
    );
    // An error code outside the wire's list is counted, under one label.
    assert.equal(
      value(samples, "switchyard_requests_total", {
        command: "other",
        outcome: "error",
      }),
      1,
    );
  });
});

Deno.test("metrics - connections the guard refused are counted by port and reason", async () => {
  await using server = startTestServer({ maxPerAddress: 2 });
  const conns: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      conns.push(
        await Deno.connect({ hostname: "127.0.0.1", port: server.port }),
      );
    }
    // The third connection from this address is one too many on the worker port.
    const refused = async () =>
      value(
        await scrape(server.requesterPort),
        "switchyard_connection_refusals_total",
        {
          port: "worker",
          reason: "per_address_limit",
        },
      );
    // The guard refuses as it accepts: poll, bounded, until the count shows it.
    for (let i = 0; i < 200 && await refused() === 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.equal(await refused(), 1);
    const samples = await scrape(server.requesterPort);
    assert.equal(
      value(samples, "switchyard_tcp_connections", {
        port: "worker",
        state: "pending",
      }),
      2,
    );
    assert.equal(
      value(samples, "switchyard_connection_refusals_total", {
        port: "requester",
        reason: "per_address_limit",
      }),
      0,
    );
  } finally {
    for (const conn of conns) conn.close();
  }
});

Deno.test("metrics - a batch counts as its items in the timeline and the answers, each as it finishes", async () => {
  await using server = startTestServer();
  const gates = Array.from({ length: 5 }, () => Promise.withResolvers<void>());
  await using _worker = await startWorker(server, {
    name: "markets",
    actions: {
      get_markets: async (params, ctx) => {
        const items = params as { code: string }[];
        const results = [];
        for (const [i, item] of items.entries()) {
          await gates[i].promise;
          const result = item.code === "999999"
            ? { success: false, code: item.code, error_code: "UNKNOWN_CODE" }
            : { success: true, code: item.code, data: [] };
          results.push(result);
          ctx.progress?.(i + 1, items.length, { index: i, result });
        }
        return results;
      },
    },
  });
  await using client = await connectClient(server.requesterUrl);
  const metrics = server.broker.metrics;
  const timelineTotal = () =>
    metrics.timeline().requests.reduce((a, b) => a + b, 0);
  const codes = ["510300", "510500", "999999", "159915", "588000"];
  const answer = client.request(
    "get_markets",
    codes.map((code) => ({ symbol_type: "etf", code })),
  );
  // Items count while the batch runs, not only when it ends.
  gates[0].resolve();
  gates[1].resolve();
  await waitFor(() => metrics.answers().answered === 2, "two items counted");
  assert.equal(timelineTotal(), 2);
  gates[2].resolve();
  await waitFor(() => metrics.answers().failed === 1, "the failed item");
  gates[3].resolve();
  gates[4].resolve();
  assert.equal((await answer).success, true);
  // The batch's own answer is not counted besides its items.
  await waitFor(() => server.broker.stats().answered === 1, "the answer");
  assert.deepEqual(metrics.answers(), { answered: 4, failed: 1 });
  assert.equal(timelineTotal(), 5);
  assert.equal(metrics.timeline().failures.reduce((a, b) => a + b, 0), 1);
  // A single request counts as one, as before.
  await client.request("get_markets", { not: "a list" }).catch(() => {});
  assert.deepEqual(metrics.answers(), { answered: 4, failed: 2 });
  assert.equal(timelineTotal(), 6);
  const samples = await scrape(server.port);
  assert.equal(
    value(samples, "switchyard_batch_items_total", { outcome: "success" }),
    4,
  );
});
