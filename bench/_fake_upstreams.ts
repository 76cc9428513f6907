/**
 * Bench helper: several fake Eastmoney upstreams in one process, one per worker, so that each
 * worker has its own "IP address" that can be banned alone. A small control server answers
 * `POST /ban?i=N` (upstream N resets every connection from then on, as a banning host does),
 * `POST /unban` and `GET /calls` (requests received, per upstream). Prints
 * `{"ready":true,"urls":[…],"control":"http://…"}` on stdout, exits on SIGTERM.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  type FakeEastmoney,
  startFakeEastmoney,
} from "../tests/_fake_eastmoney.ts";

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      count: { type: "string", default: "6" },
      "latency-ms": { type: "string", default: "50" },
      // Builds the series of stock codes 600000… up front: the fake makes up a full history in
      // ~100 ms, which would otherwise weigh on the machine during the measured jobs.
      warm: { type: "string", default: "0" },
    },
  });
  const fakes: FakeEastmoney[] = [];
  const banned = new Set<number>();
  for (let i = 0; i < Number(values.count); i++) {
    fakes.push(
      await startFakeEastmoney({
        synthetic: true,
        latencyMs: Number(values["latency-ms"]),
        hook: () => banned.has(i) ? "reset" : undefined,
      }),
    );
  }
  const warmUp = Number(values.warm);
  for (let i = 0; i < warmUp; i++) {
    const res = await fetch(
      `${fakes[0].url}/api/qt/stock/kline/get?secid=1.${
        600000 + i
      }&klt=101&fqt=1&beg=0&end=20500101`,
    );
    await res.body?.cancel();
  }
  const warmCalls = fakes.map((f) => f.calls);
  const control = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => {
      const url = new URL(req.url);
      if (req.method === "POST" && url.pathname === "/ban") {
        banned.add(Number(url.searchParams.get("i")));
        return new Response("ok");
      }
      if (req.method === "POST" && url.pathname === "/unban") {
        banned.clear();
        return new Response("ok");
      }
      if (url.pathname === "/calls") {
        return Response.json(fakes.map((f, i) => f.calls - warmCalls[i]));
      }
      return new Response("not found", { status: 404 });
    },
  );
  Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
  console.log(JSON.stringify({
    ready: true,
    urls: fakes.map((f) => f.url),
    control: `http://127.0.0.1:${control.addr.port}`,
  }));
}
