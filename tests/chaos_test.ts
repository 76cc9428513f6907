// Chaos: worker processes killed and restarted at random (fixed seed), the server restarted once,
// a 300-item batch and a stream of single requests throughout. Every request must end with
// exactly one correct answer (bar for bar what the upstream holds for its code, checked after the
// run), however many times it was re-sent, and nothing may hang.

import assert from "node:assert/strict";
import { WebSocket } from "../lib/transport/_ws.ts";
import { startFakeEastmoney } from "./_fake_eastmoney.ts";
import { mulberry32, waitFor } from "./_helpers.ts";
import { Program, startServerProgram, waitForHealth } from "./_procs.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A raw requester that counts every answer per request_id, so duplicates would show. */
class CountingRequester {
  answers = new Map<string, Record<string, unknown>[]>();
  #socket: WebSocket | undefined;
  #waiting = new Map<
    string,
    (answer: Record<string, unknown> | undefined) => void
  >();

  constructor(readonly url: string) {}

  async connect(): Promise<void> {
    const socket = new WebSocket(this.url);
    socket.on("message", (data: unknown) => {
      const answer = JSON.parse(String(data));
      if ("progress" in answer && !("success" in answer)) return;
      const id = answer.request_id as string;
      const list = this.answers.get(id) ?? [];
      list.push(answer);
      this.answers.set(id, list);
      this.#waiting.get(id)?.(answer);
      this.#waiting.delete(id);
    });
    socket.on("close", () => {
      for (const done of this.#waiting.values()) done(undefined);
      this.#waiting.clear();
    });
    socket.on("error", () => {});
    await new Promise<void>((resolve, reject) => {
      socket.once("open", () => resolve());
      socket.once("error", reject);
    });
    this.#socket = socket;
  }

  get open(): boolean {
    return this.#socket?.readyState === 1;
  }

  /** Sends and resolves with the answer, or undefined when the connection dropped first. */
  send(
    id: string,
    command: string,
    data: unknown,
    timeout = 30,
  ): Promise<Record<string, unknown> | undefined> {
    if (!this.open) return Promise.resolve(undefined);
    const { promise, resolve } = Promise.withResolvers<
      Record<string, unknown> | undefined
    >();
    this.#waiting.set(id, resolve);
    this.#socket!.send(
      JSON.stringify({ request_id: id, command, data, timeout }),
    );
    return promise;
  }

  async close(): Promise<void> {
    const socket = this.#socket;
    if (!socket || socket.readyState === 3) return;
    const closed = new Promise((r) => socket.once("close", r));
    socket.close();
    await closed;
  }
}

const TRANSIENT = new Set(["SHUTTING_DOWN", "NO_WORKERS"]);

function isFinal(answer: Record<string, unknown>): boolean {
  return !(answer.success === false &&
    TRANSIENT.has(String(answer.error_code)));
}

type Bars = { date: string; open: number; close: number; high: number }[];

/** The fields a mix-up would change. */
function barsOf(bars: Bars): string {
  return JSON.stringify(
    bars.map((b) => [b.date, b.open, b.close, b.high]),
  );
}

Deno.test({
  name: "chaos - workers killed at random and a server restart lose no request",
  async fn() {
    const random = mulberry32(20261127);
    await using upstream = await startFakeEastmoney({
      synthetic: true,
      // A short history keeps the fake upstream's CPU out of the picture.
      syntheticEnd: "2015-12-31",
      latencyMs: 25,
    });
    const first = await startServerProgram([
      "--max-attempts",
      "10",
      "--grace",
      "20",
    ]);
    const { workerPort, requesterPort } = first;
    let server = first.program;
    const workerArgs = (i: number) => [
      "--url",
      `ws://127.0.0.1:${workerPort}`,
      "--name",
      `chaos-${i}`,
      "--eastmoney-url",
      upstream.url,
      "--rate-limit",
      "0",
      "--max-backoff",
      "0.5",
      "--no-console",
    ];
    const workers: Program[] = [];
    const retired: Program[] = [];
    const requesterUrl = `ws://127.0.0.1:${requesterPort}`;
    const clients: CountingRequester[] = [];
    let client = new CountingRequester(requesterUrl);
    clients.push(client);
    let running = true;
    // Set once the test ends, failed or not: the background loops below stop retrying.
    let stopped = false;
    // The stream of singles and the chaos, then each single: settled before the cleanup goes on.
    const background: Promise<unknown>[] = [];
    const singles: Promise<void>[] = [];
    const reconnect = async () => {
      for (let i = 0; i < 200 && !stopped && !client.open; i++) {
        try {
          const next = new CountingRequester(requesterUrl);
          await next.connect();
          client = next;
          clients.push(next);
        } catch {
          await sleep(25);
        }
      }
    };
    let kills = 0;
    let retries = 0;
    try {
      for (const i of [0, 1, 2, 3]) {
        workers.push(new Program("worker.ts", workerArgs(i)));
      }
      await waitForHealth(workerPort, (h) => h.workers === 4);
      await client.connect();

      /** Sends one logical request until it gets a final answer; returns that answer. */
      const call = async (id: string, command: string, data: unknown) => {
        // Bounded by time, not by count: while the pool refills on a loaded machine, answers
        // say NO_WORKERS for seconds, far more than a fixed number of quick retries covers.
        const until = Date.now() + 120_000;
        for (let attempt = 0; !stopped && Date.now() < until; attempt++) {
          const answer = await client.send(
            `${id}#${attempt}`,
            command,
            data,
            60,
          );
          if (answer && isFinal(answer)) return answer;
          retries++;
          await reconnect();
          await sleep(50);
        }
        throw new Error(`${id} never got a final answer`);
      };

      const code = (i: number) => `51${String(i % 10000).padStart(4, "0")}`;
      const batchItems = (n: number, offset: number) =>
        Array.from({ length: n }, (_, i) => ({
          symbol_type: "etf",
          code: code(offset + i),
          start_date: "2015-01-01",
          end_date: "2015-06-30",
        }));

      // Every market answer received, checked against the upstream after the run.
      const received: { id: string; code: string; bars: Bars }[] = [];
      const logical: string[] = [];
      let marketSingles = 0;
      const stream = (async () => {
        // Singles keep coming until the chaos has struck three times: the kills go by the clock
        // and the pool's refills, so a fast run could otherwise end before they land.
        for (let n = 0; running && (n < 400 || kills < 3); n++) {
          const i = Math.floor(random() * 500);
          const id = `single-${n}`;
          logical.push(id);
          const single = (async () => {
            const market = random() < 0.7;
            if (market) marketSingles++;
            const answer = market
              ? await call(id, "get_market", batchItems(1, i)[0])
              : await call(id, "get_time", {});
            assert.equal(
              answer.success,
              true,
              `${id}: ${JSON.stringify(answer)}`,
            );
            if (market) {
              const data = answer.data as { code: string; data: Bars };
              assert.equal(data.code, code(i));
              assert.ok(data.data.length > 0);
              received.push({ id, code: code(i), bars: data.data });
            } else {assert.match(
                String(answer.data),
                /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/,
              );}
          })();
          // Awaited with the others below; handled now, so that an early failure is reported
          // there, not as an uncaught error that cancels the rest of the file.
          single.catch(() => {});
          singles.push(single);
          await sleep(15);
        }
      })();
      background.push(stream);

      /** Until the server (whichever is up) has all four workers, or 30 s have passed. */
      const fullPool = async () => {
        const until = Date.now() + 30_000;
        while (running && Date.now() < until) {
          try {
            const res = await fetch(`http://127.0.0.1:${workerPort}/health`);
            if ((await res.json()).workers >= workers.length) return;
          } catch {
            // the server is restarting
          }
          await sleep(50);
        }
      };

      const chaos = (async () => {
        while (running) {
          // A kill every ~1.2 s with four workers: each worker lives a few seconds, far harsher
          // than any real pool, yet long enough for a 25-item chunk to finish somewhere.
          await sleep(800 + random() * 800);
          if (!running) break;
          const i = Math.floor(random() * workers.length);
          workers[i].kill("SIGKILL");
          retired.push(workers[i]);
          kills++;
          await sleep(100 + random() * 200);
          workers[i] = new Program("worker.ts", workerArgs(i));
          // One worker lost at a time is the premise: wait for the new one before the next
          // kill, or on a loaded machine (slow restarts) the pool empties and nothing can answer.
          await fullPool();
        }
      })();
      background.push(chaos);

      const checkBatch = (
        id: string,
        answer: Record<string, unknown>,
        items: { code: string }[],
      ) => {
        assert.equal(
          answer.success,
          true,
          JSON.stringify(answer).slice(0, 500),
        );
        const data = answer.data as {
          results: {
            success: boolean;
            code: string;
            error?: string;
            data: Bars;
          }[];
          summary: { total: number; success: number };
        };
        assert.equal(data.results.length, items.length);
        data.results.forEach((r, k) => {
          assert.equal(r.code, items[k].code, `item ${k} out of order`);
          assert.equal(r.success, true, `item ${k}: ${r.error}`);
          received.push({ id: `${id}[${k}]`, code: r.code, bars: r.data });
        });
        assert.equal(data.summary.success, items.length);
      };

      const t0 = Date.now();
      const before = batchItems(300, 1000);
      logical.push("batch-1");
      checkBatch(
        "batch-1",
        await call("batch-1", "get_markets", before),
        before,
      );
      const t1 = Date.now();

      // Restart the server once: it drains, exits 0, and a new one takes the same ports.
      server.kill("SIGTERM");
      assert.equal((await server.done()).code, 0);
      server = new Program("server.ts", [
        "--host",
        "127.0.0.1",
        "--port",
        String(workerPort),
        "--requester-port",
        String(requesterPort),
        "--max-attempts",
        "10",
        "--no-console",
      ]);
      await server.waitFor(/Requester port listening/);
      await reconnect();
      const t2 = Date.now();

      const after = batchItems(300, 2000);
      logical.push("batch-2");
      checkBatch("batch-2", await call("batch-2", "get_markets", after), after);

      const t3 = Date.now();
      console.log(
        `batch 1 ${t1 - t0} ms, restart ${t2 - t1} ms, batch 2 ${t3 - t2} ms`,
      );
      await waitFor(() => kills >= 3, "three worker kills", 120_000, 50);
      running = false;
      await Promise.all([stream, chaos]);
      await Promise.all(singles);

      // Exactly once: no request_id was ever answered twice on any connection, and each logical
      // request got one final answer over all its attempts and connections.
      const finals = new Map<string, number>();
      for (const c of clients) {
        for (const [id, list] of c.answers) {
          assert.equal(list.length, 1, `${id} answered ${list.length} times`);
          const name = id.slice(0, id.lastIndexOf("#"));
          if (isFinal(list[0])) finals.set(name, (finals.get(name) ?? 0) + 1);
        }
      }
      for (const id of logical) {
        assert.equal(finals.get(id), 1, `final answers to ${id}`);
      }
      assert.equal(finals.size, logical.length);

      // Correct: each answer holds its own code's bars, as the upstream serves them.
      await using reference = await startFakeEastmoney({
        synthetic: true,
        syntheticEnd: "2015-12-31",
      });
      // The reference reads the upstream's own answer (Eastmoney's wire format: one
      // "date,open,close,high,..." text per bar), not through the market library.
      const expected = new Map<string, string>();
      const codes = [...new Set(received.map((r) => r.code))];
      for (let k = 0; k < codes.length; k += 16) {
        await Promise.all(
          codes.slice(k, k + 16).map(async (c) => {
            const url = `${reference.url}/api/qt/stock/kline/get?secid=1.${c}` +
              "&klt=101&fqt=1&beg=20150101&end=20150630";
            const body = await (await fetch(url)).json();
            const klines = body.data.klines as string[];
            expected.set(
              c,
              barsOf(klines.map((line) => {
                const [date, open, close, high] = line.split(",");
                return { date, open: +open, close: +close, high: +high };
              })),
            );
          }),
        );
      }
      for (const r of received) {
        assert.equal(barsOf(r.bars), expected.get(r.code), `bars of ${r.id}`);
      }
      assert.equal(received.length, 600 + marketSingles);
      console.log(
        `chaos: ${singles.length} singles + 600 batch items, ${kills} kills, 1 server restart, ${retries} resends after connection loss`,
      );
    } finally {
      running = false;
      stopped = true;
      if (Deno.env.get("CHAOS_LOG")) {
        Deno.writeTextFileSync(
          Deno.env.get("CHAOS_LOG")!,
          server.lines.join("\n"),
        );
      }
      // Closing answers what the background still waits for; a reconnect under way may add a
      // client, so they are closed again once the background has settled.
      for (const c of clients) await c.close();
      await Promise.allSettled(background);
      await Promise.allSettled(singles);
      for (const c of clients) await c.close();
      await Promise.all([...workers, ...retired].map((w) => w.stop()));
      await server.stop();
    }
  },
});
