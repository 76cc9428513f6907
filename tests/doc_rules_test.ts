// Rules a module states in its doc examples, checked again here: `deno test --doc` is one way to
// run the suite, and a rule must not go unchecked when the doc examples are left out.
import assert from "node:assert/strict";
import { formatJsonLine } from "../lib/log.ts";
import { formatTable } from "../lib/console.ts";
import { peekRequestId } from "../lib/broker/requester_frames.ts";
import { pacingAllowanceMs, slotWaitMs } from "../lib/broker/pacing.ts";
import { checkHead, checkUpgrade } from "../lib/transport/_guard_head.ts";
import { connectHint } from "../lib/transport/_connect.ts";
import { answerFailed } from "../lib/requester/exit_codes.ts";
import { plainProgress } from "../lib/requester/progress.ts";
import { secidCandidates } from "../lib/market/secid.ts";
import { parseHeaderFlags } from "../lib/market/upstream_options.ts";

Deno.test("formatJsonLine() writes one JSON object with the message filled in", () => {
  const line = formatJsonLine({
    category: ["switchyard", "worker"],
    level: "info",
    message: ["Connected to ", "ws://h:8765", " as ", 7, ""],
    rawMessage: "Connected to {url} as {id}",
    timestamp: 0,
    properties: { url: "ws://h:8765", id: 7 },
  });
  assert.ok(!line.trimEnd().includes("\n"), "one line");
  assert.deepEqual(JSON.parse(line), {
    "@timestamp": "1970-01-01T00:00:00.000Z",
    level: "INFO",
    message: "Connected to ws://h:8765 as 7",
    logger: "switchyard.worker",
    properties: { url: "ws://h:8765", id: 7 },
  });
});

Deno.test("formatTable() pads text columns left and number columns right", () => {
  assert.equal(
    formatTable(["NAME", "SERVED"], [["a", "7"], ["bb", "12"]]),
    "NAME  SERVED\na          7\nbb        12",
  );
});

Deno.test("peekRequestId() finds the id at the head of a cut-off frame", () => {
  assert.equal(peekRequestId('{"request_id": "r1", "data": [1, 2'), "r1");
});

Deno.test("pacing - a slot's wait and a market command's allowance follow the workers' announced rate", () => {
  const upstream = {
    hosts: {
      "k.example": {
        cooldown_until: 0,
        budget_hour: 60,
        budget_day: 500,
        rate: 1 / 30,
      },
    },
  };
  // One slot of 30 s and the limiter's jitter.
  assert.equal(slotWaitMs(upstream, 0), 39_000);
  assert.equal(slotWaitMs(undefined, 0), undefined);
  const idle = { upstream, draining: false, jobs: new Map() };
  assert.equal(pacingAllowanceMs([idle], "get_market", {}, 0), 39_000);
  // Three items over two workers: two slots on one of them.
  assert.equal(
    pacingAllowanceMs([idle, idle], "get_markets", [{}, {}, {}], 0),
    78_000,
  );
  assert.equal(pacingAllowanceMs([idle], "get_time", {}, 0), 0);
});

Deno.test("guard - a head with whitespace before a colon is refused; a version 8 upgrade gets 426", () => {
  assert.equal(checkHead("GET / HTTP/1.1\r\nHost: x"), undefined);
  assert.match(checkHead("GET / HTTP/1.1\r\nHost : x")!.text, /Whitespace/);
  const headers = new Headers({
    upgrade: "websocket",
    connection: "Upgrade",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    "sec-websocket-version": "8",
  });
  const req = new Request("http://x/", { headers });
  assert.equal(checkUpgrade(req, "HTTP/1.1")?.status, "426 Upgrade Required");
  headers.set("sec-websocket-version", "13");
  assert.equal(
    checkUpgrade(new Request("http://x/", { headers }), "HTTP/1.1"),
    undefined,
  );
});

Deno.test("connectHint() tells ws:// against a TLS port to use wss://", () => {
  assert.equal(
    connectHint("ws://h:8765", "Parse Error: Expected HTTP/, RTSP/ or ICE/"),
    "the server speaks TLS: use wss://h:8765",
  );
});

Deno.test("answerFailed() sees a nested failure and a batch with failed items", () => {
  assert.equal(answerFailed({ success: true, data: { success: false } }), true);
  assert.equal(
    answerFailed({ success: true, data: { summary: { failed: 1 } } }),
    true,
  );
  assert.equal(answerFailed({ success: false, data: null }), true);
  assert.equal(answerFailed({ success: true, data: [1, 2] }), false);
});

Deno.test("plainProgress() prints at most one line an interval, and the last one at the end", () => {
  const lines: string[] = [];
  let now = 0;
  const view = plainProgress({
    write: (l) => lines.push(l),
    now: () => now,
    intervalMs: 1000,
  });
  now = 500;
  view.update({ done: 1, failed: 0, total: 4 });
  now = 1000;
  view.update({ done: 2, failed: 0, total: 4 });
  now = 2000;
  view.stop({ done: 4, failed: 1, total: 4 });
  assert.equal(lines.length, 2);
  assert.equal(lines[1], "markets: 4/4 done, 1 failed, 2.0/s, ETA 0s");
});

Deno.test("secidCandidates() tries an index code's markets in order", () => {
  assert.equal(
    secidCandidates("index", "000859").join(),
    "1.000859,2.000859,47.000859",
  );
  assert.equal(secidCandidates("index", "980017")[0], "0.980017");
});

Deno.test("parseHeaderFlags() takes 'Name: value' with or without the space", () => {
  const headers = parseHeaderFlags([
    "User-Agent: my-browser/1.0",
    "X-Forwarded-For:10.0.0.1",
  ]);
  assert.equal(headers["User-Agent"], "my-browser/1.0");
  assert.equal(headers["X-Forwarded-For"], "10.0.0.1");
});
