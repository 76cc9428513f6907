import assert from "node:assert/strict";
import { serverCommand, splitCommand, workerCommand } from "../lib/console.ts";
import { startTestServer, startWorker, within } from "./_helpers.ts";
import { reaped, spawnRequesterConsole } from "./_procs.ts";

Deno.test("splitCommand() - reads words, then the rest as JSON, and reports bad JSON", () => {
  assert.deepEqual(splitCommand("send abc get_time", 3), {
    words: ["send", "abc", "get_time"],
    json: {},
  });
  assert.deepEqual(splitCommand('send abc calculate {"a": 1, "b": 2}', 3), {
    words: ["send", "abc", "calculate"],
    json: { a: 1, b: 2 },
  });
  const bad = splitCommand("send abc calculate {a:1}", 3);
  assert.match(bad.error!, /^Cannot parse params as JSON: /);
});

Deno.test("server console - list, send, broadcast, stats and usage lines for bad input", async () => {
  await using server = startTestServer();
  const notified = Promise.withResolvers<void>();
  await using worker = await startWorker(server, { name: "console-worker" });
  worker.onMessage("notification", () => notified.resolve());
  const id = worker.status().client_id!;
  const out: string[] = [];
  const run = async (line: string) => {
    out.length = 0;
    const result = await serverCommand(
      server.broker,
      line,
      (text) => out.push(text),
    );
    return { result, text: out.join("\n") };
  };
  assert.match(
    (await run("help")).text,
    /send <client_id> <action> \[json\]/,
  );
  assert.match(
    (await run("list")).text,
    new RegExp(`${id}\\s+console-worker`),
  );
  assert.match(
    (await run(`send ${id} get_time`)).text,
    /^"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"$/,
  );
  assert.match(
    (await run(`send ${id} get_system_info {}`)).text,
    /"hostname"/,
  );
  assert.equal(
    (await run("send")).text,
    "Usage: send <client_id> <action> [json params]",
  );
  assert.equal(
    (await run(`send ${id}`)).text,
    "Usage: send <client_id> <action> [json params]",
  );
  assert.match(
    (await run(`send ${id} get_time {oops`)).text,
    /^Cannot parse params as JSON/,
  );
  assert.match(
    (await run("send nosuch get_time")).text,
    /^Error \(NO_WORKERS\): No worker with client_id 'nosuch' is connected$/,
  );
  assert.match(
    (await run(`send ${id} no_action`)).text,
    /^Error \(UNKNOWN_ACTION\): Worker '\w+' does not offer 'no_action': it offers get_time/,
  );
  assert.equal((await run("broadcast")).text, "Usage: broadcast <message>");
  assert.equal((await run("broadcast hello all")).text, "Sent to 1 workers");
  await within(notified.promise, "the broadcast to reach the worker");
  assert.equal(JSON.parse((await run("stats")).text).workers, 1);
  assert.equal(
    (await run("frobnicate")).text,
    "Unknown command 'frobnicate': type 'help' for the list",
  );
  assert.equal((await run("   ")).result, "continue");
  assert.equal((await run("quit")).result, "quit");
});

Deno.test("worker console - request asks the server, status shows the connection, bad input gets usage", async () => {
  await using server = startTestServer();
  await using worker = await startWorker(server);
  const out: string[] = [];
  const run = async (line: string) => {
    out.length = 0;
    const result = await workerCommand(worker, line, (text) => out.push(text));
    return { result, text: out.join("\n") };
  };
  assert.equal(
    (await run('request calculate {"a": 10, "b": 20, "op": "+"}')).text,
    "30",
  );
  assert.match((await run("request get_time")).text, /^"\d{4}-/);
  assert.equal(
    JSON.parse((await run("request get_client_info")).text).length,
    1,
  );
  assert.equal(
    (await run('request calculate {"a": 1, "b": 0, "op": "/"}')).text,
    "Error: Division by zero",
  );
  assert.match(
    (await run("request nope")).text,
    /^Error: Unknown action 'nope'/,
  );
  assert.equal(
    (await run("request")).text,
    "Usage: request <action> [json params]",
  );
  assert.match(
    (await run("request calculate {bad")).text,
    /^Cannot parse params as JSON/,
  );
  assert.equal(JSON.parse((await run("status")).text).connected, true);
  assert.match((await run("help")).text, /request <action> \[json\]/);
  assert.equal((await run("quit")).result, "quit");
});

Deno.test("requester console - reads commands from stdin, answers bad input with usage, quits", async () => {
  await using server = startTestServer();
  await using _worker = await startWorker(server);
  const child = spawnRequesterConsole(server.requesterUrl);
  await using _child = reaped(child);
  // Piped in whole: stdin ends closed (or aborted, if the child is gone), never held open.
  await ReadableStream.from([
    new TextEncoder().encode(
      'get_time\nhelp\nget_time {bad\nno_such_cmd {"x": 1}\nquit\n',
    ),
  ]).pipeTo(child.stdin);
  const { code, stdout } = await within(
    child.output(),
    "the requester console to quit",
    20_000,
  );
  const text = new TextDecoder().decode(stdout);
  // no_such_cmd failed: a script of commands says so in its exit code.
  assert.equal(code, 1);
  const answers = text.split("\n").filter((l) => l.startsWith("{")).map((l) =>
    JSON.parse(l)
  );
  assert.equal(answers.length, 2);
  assert.equal(answers[0].success, true);
  assert.equal(answers[1].success, false);
  assert.match(text, /Type a command and optional JSON data/);
  assert.match(
    text,
    /Cannot parse params as JSON: .*: usage is <command> \[json\]/,
  );
});
