// The dashboard in a real browser: Debian's headless Chromium, driven over the DevTools protocol
// (tests/_chromium.ts), against a real server with real workers. Screenshots go to
// tests/artifacts/dashboard/ (gitignored).
//
// Without Chromium the test is skipped and says so; `.ci/run` installs it. CHROMIUM_PATH names
// another binary.

import assert from "node:assert/strict";
import type { ActionContext } from "../lib/action.ts";
import { createMarketService } from "../lib/market/mod.ts";
import { RequesterClient } from "../lib/mod.ts";
import { Chromium } from "./_chromium.ts";
import {
  answerOf,
  releasing,
  startTestServer,
  startWorker,
} from "./_helpers.ts";

const CHROMIUM = Deno.env.get("CHROMIUM_PATH") ?? "/usr/bin/chromium";
const ARTIFACTS = new URL("./artifacts/dashboard/", import.meta.url);
const TOKEN = "dash-token";
// Long enough that only the server's push on a change, never its timer, can update the page.
const INTERVAL_MS = 60_000;

function hasChromium(): boolean {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
}

const available = hasChromium();
if (!available) {
  console.log(
    `dashboard_test: skipped, no Chromium at ${CHROMIUM} ` +
      "(apt-get install chromium, or set CHROMIUM_PATH)",
  );
}

/** A page predicate: the workers table has `n` rows. */
function workerRows(n: number): string {
  return `document.querySelectorAll("#workers tbody tr").length === ${n}`;
}

/** A `get_markets` whose items finish one by one when the test says so. */
function gatedBatch() {
  const gates: PromiseWithResolvers<void>[] = [];
  const gate = (i: number) => gates[i] ??= Promise.withResolvers<void>();
  const handler = async (params: unknown, ctx: ActionContext) => {
    const items = params as { code: string }[];
    const results: unknown[] = [];
    for (let i = 0; i < items.length; i++) {
      await gate(i).promise;
      const result = { success: true, code: items[i].code, data: [] };
      results.push(result);
      ctx.progress?.(i + 1, items.length, { index: i, result });
    }
    return results;
  };
  return { handler, release: (i: number) => gate(i).resolve() };
}

Deno.test({
  name:
    "dashboard - a real browser shows workers come and go, a batch's progress and a symbol's candles",
  ignore: !available,
  async fn() {
    await Deno.mkdir(ARTIFACTS, { recursive: true });
    await using server = startTestServer({
      requesterToken: TOKEN,
      dashboardIntervalMs: INTERVAL_MS,
    });
    await using market = releasing(
      createMarketService({ providers: ["demo"] }),
      (m) => m.close(),
    );
    const batch = gatedBatch();
    await using _alpha = await startWorker(server, {
      name: "alpha",
      actions: { ...market.actions(), get_markets: batch.handler },
    });
    await using client = releasing(
      new RequesterClient(server.requesterUrl, { token: TOKEN }),
      (c) => c.close(),
    );
    await using browser = await Chromium.launch(CHROMIUM);
    const page = await browser.newPage(1280, 1000);
    const base = `http://127.0.0.1:${server.requesterPort}`;
    const shot = (name: string) =>
      page.screenshot(new URL(`${name}.png`, ARTIFACTS).pathname);
    const rows = () =>
      page.evaluate<string[]>(
        `[...document.querySelectorAll("#workers tbody tr")].map((tr) => tr.children[1].textContent)`,
      );

    // Without the token: the hint, not the dashboard.
    await page.goto(`${base}/`);
    assert.match(
      await page.evaluate<string>("document.body.innerText"),
      /needs the requester token/,
    );
    assert.equal(
      await page.evaluate("document.querySelector('#workers')"),
      null,
    );

    // With it once in the address: a cookie from then on, and the token leaves the address.
    assert.equal(await page.goto(`${base}/?token=${TOKEN}`), `${base}/`);
    await page.waitFor(workerRows(1));
    assert.deepEqual(await rows(), ["alpha"]);
    assert.equal(
      await page.evaluate(
        `document.querySelector("#workers tbody tr .state").textContent`,
      ),
      "ready",
    );

    // A worker joins, then leaves: the page follows without a reload.
    let since = performance.now();
    await using beta = await startWorker(server, { name: "beta" });
    await page.waitFor(workerRows(2));
    const joinMs = performance.now() - since;
    assert.deepEqual((await rows()).sort(), ["alpha", "beta"]);
    await shot("workers");
    since = performance.now();
    await beta.stop();
    await page.waitFor(workerRows(1));
    const leaveMs = performance.now() - since;
    assert.deepEqual(await rows(), ["alpha"]);

    // A batch of four: its progress bar moves item by item.
    await client.connect();
    const answer = answerOf(
      client.request(
        "get_markets",
        ["510300", "510500", "159915", "588000"].map((code) => ({
          symbol_type: "etf",
          code,
        })),
        { timeout: 60 },
      ),
      "the batch",
      65_000,
    );
    const progress = (value: number) =>
      page.waitFor(
        `(() => {
          const bar = document.querySelector("#batches .batch progress");
          return bar !== null && bar.max === 4 && bar.value === ${value};
        })()`,
      );
    await progress(0);
    batch.release(0);
    await progress(1);
    batch.release(1);
    await progress(2);
    await shot("batch");
    batch.release(2);
    batch.release(3);
    assert.equal((await answer).success, true);
    await page.waitFor(
      'document.querySelectorAll("#batches .batch").length === 0',
    );

    // The symbol view: a demo symbol's daily bars as candles, drawn on the canvas.
    await page.evaluate(`(() => {
      const form = document.querySelector("#symbol-form");
      form.elements.code.value = "510300";
      form.elements.start_date.value = "2024-01-01";
      form.requestSubmit();
    })()`);
    await page.waitFor("globalThis.dashboard.symbolBars > 0");
    const counts = await page.evaluate<{ bars: number; candles: number }>(
      "({ bars: dashboard.symbolBars, candles: dashboard.candleCount() })",
    );
    assert.ok(counts.bars > 100, `only ${counts.bars} bars`);
    assert.equal(counts.candles, counts.bars);
    assert.match(
      await page.evaluate<string>(
        'document.querySelector("#symbol-status").textContent',
      ),
      /510300.*bars \(source: demo\)/,
    );
    // Candle colours on the chart's canvases: pixels really drawn, not only data held.
    const coloured = await page.evaluate<number>(`(() => {
      let n = 0;
      for (const c of document.querySelectorAll("#symbol-chart canvas")) {
        const ctx = c.getContext("2d");
        if (!ctx || c.width === 0 || c.height === 0) continue;
        const { data } = ctx.getImageData(0, 0, c.width, c.height);
        for (let i = 0; i < data.length; i += 4) {
          const r = data[i], g = data[i + 1], b = data[i + 2];
          // The page's up (red) and down (green) candle colours.
          if ((r > 150 && g < 80 && b < 80) || (g > 100 && r < 60 && b < 90)) n++;
        }
      }
      return n;
    })()`);
    assert.ok(coloured > 500, `only ${coloured} candle-coloured pixels`);
    await shot("symbol");

    assert.deepEqual(page.errors, []);
    console.log(
      `dashboard_test: join shown after ${Math.round(joinMs)} ms, leave after ${
        Math.round(leaveMs)
      } ms; ${counts.candles} candles, ${coloured} candle pixels; screenshots in ${ARTIFACTS.pathname}`,
    );
  },
});
