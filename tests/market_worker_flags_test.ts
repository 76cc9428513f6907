// The worker program's upstream flags and its heartbeat's `upstream` field, seen from a
// scripted server: a real worker process, a real WebSocket, a real fake upstream.
import assert from "node:assert/strict";
import { decodeEnvelope, encodeEnvelope } from "../lib/protocol.ts";
import { startFakeEastmoney } from "./_fake_eastmoney.ts";
import { Program, runProgram } from "./_procs.ts";
import { tempDir } from "./_helpers.ts";

interface Frame {
  type: string;
  msg_id: string;
  data: Record<string, unknown>;
}

Deno.test("worker - --header, --cookie-file and budgets reach the upstream; heartbeats carry upstream status", async () => {
  await using fake = await startFakeEastmoney({ synthetic: true });
  await using tmp = await tempDir("switchyard_worker_");
  const dir = tmp.path;
  const cookieFile = `${dir}/cookies.txt`;
  await Deno.writeTextFile(
    cookieFile,
    "127.0.0.1\tFALSE\t/\tFALSE\t0\tct\tfrom-browser\n",
  );
  const frames: Frame[] = [];
  const arrived = new Set<() => void>();
  let socket: WebSocket | undefined;
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (request) => {
      const upgrade = Deno.upgradeWebSocket(request);
      socket = upgrade.socket;
      socket.onopen = () =>
        socket!.send(
          encodeEnvelope("connect", {
            client_id: "w-test",
            // Short enough to see budgets move in heartbeats, long enough that a busy
            // machine starving this scripted server never looks like silence to the worker.
            heartbeat_interval: 2,
          }),
        );
      socket.onmessage = (event) => {
        const frame = decodeEnvelope(event.data) as Frame;
        frames.push(frame);
        // Any word back tells the worker that the server is alive.
        if (frame.type === "heartbeat") {
          socket!.send(encodeEnvelope("heartbeat", { status: "ok" }));
        }
        for (const wake of arrived) wake();
      };
      return upgrade.response;
    },
  );
  const until = async (find: () => Frame | undefined) => {
    const deadline = AbortSignal.timeout(20_000);
    while (find() === undefined) {
      if (deadline.aborted) {
        throw new Error(
          `No such frame within 20 s: ${JSON.stringify(frames.slice(-3))} ${
            worker.lines.slice(-5).join("\n")
          }`,
        );
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        arrived.add(resolve);
        timer = setTimeout(resolve, 200);
      });
      clearTimeout(timer);
      arrived.clear();
    }
    return find()!;
  };
  const worker = new Program("worker.ts", [
    "--url",
    `ws://127.0.0.1:${server.addr.port}`,
    "--no-console",
    "--eastmoney-url",
    fake.url,
    "--header",
    "X-Fake-Identity: worker-7",
    "--header",
    "User-Agent:switchyard-flags",
    "--cookie-file",
    cookieFile,
    "--budget-hour",
    "7",
    "--budget-day",
    "0",
  ]);
  try {
    const host = new URL(fake.url).host;
    const first = await until(() =>
      frames.find((f) => f.type === "heartbeat" && "upstream" in f.data)
    );
    const upstream = first.data.upstream as {
      hosts: Record<string, Record<string, number>>;
      cache: Record<string, number>;
    };
    assert.deepEqual(upstream.hosts[host], {
      cooldown_until: 0,
      budget_hour: 7,
      budget_day: null,
      rate: 1,
    });
    assert.deepEqual(upstream.cache, { hits: 0, misses: 0 });
    assert.ok(Array.isArray(first.data.blocked_sources));

    socket!.send(
      encodeEnvelope(
        "request",
        {
          action: "get_market",
          params: { symbol_type: "etf", code: "510300" },
        },
        "req-1",
      ),
    );
    const answer = await until(() =>
      frames.find((f) => f.type === "response" && f.data.request_id === "req-1")
    );
    assert.ok(JSON.stringify(answer.data).includes('"success":true'));
    const [seen] = fake.requests;
    assert.equal(seen.identity, "worker-7");
    assert.equal(seen.headers.get("user-agent"), "switchyard-flags");
    assert.equal(seen.headers.get("cookie"), "ct=from-browser");
    const later = await until(() =>
      frames.findLast((f) =>
        f.type === "heartbeat" &&
        (f.data.upstream as typeof upstream)?.hosts[host]?.budget_hour === 6
      )
    );
    assert.equal((later.data.upstream as typeof upstream).cache.misses, 1);

    // list_symbols is served too, from the same base URL as the K-lines.
    socket!.send(
      encodeEnvelope(
        "request",
        { action: "list_symbols", params: { symbol_type: "index" } },
        "req-2",
      ),
    );
    const list = await until(() =>
      frames.find((f) => f.type === "response" && f.data.request_id === "req-2")
    );
    const listed = list.data.result as { success: boolean; count: number };
    assert.equal(listed.success, true, JSON.stringify(list.data));
    assert.equal(listed.count, 6);
  } finally {
    await worker.stop();
    socket?.close();
    await server.shutdown();
  }
});

Deno.test("worker - bad --header, --cookie-file and --proxy values exit 2 with a clear message", async () => {
  await using tmp = await tempDir("switchyard_worker_");
  const dir = tmp.path;
  await Deno.writeTextFile(`${dir}/bad.txt`, "no cookie here\n");
  for (
    const [args, message] of [
      [
        ["--header", "NoColon"],
        /Invalid --header "NoColon": expected NAME:VALUE/,
      ],
      [["--cookie-file", `${dir}/bad.txt`], /Cannot read cookie file line 1/],
      [["--cookie-file", `${dir}/absent.txt`], /Cannot read --cookie-file/],
      [["--proxy", "socks5://127.0.0.1:1080"], /Invalid --proxy "socks5:/],
      [["--budget-hour=-1"], /Invalid --budget-hour '-1'/],
    ] as const
  ) {
    const out = await runProgram("worker.ts", [...args, "--no-console"]);
    assert.equal(out.code, 2, `${args.join(" ")}: ${out.stderr}`);
    assert.match(out.stderr, message);
  }
});
