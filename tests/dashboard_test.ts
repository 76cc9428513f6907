// The dashboard in a real browser: Debian's headless Chromium, driven by puppeteer-core, against
// a real server with real workers. Screenshots go to tests/artifacts/dashboard/ (gitignored).
//
// Without Chromium the test is skipped and says so; `.ci/run` installs it. CHROMIUM_PATH names
// another binary.

import assert from "node:assert/strict";
import type { ActionContext } from "../lib/action.ts";
import { createMarketService } from "../lib/market/mod.ts";
import { RequesterClient } from "../lib/mod.ts";
import puppeteer, { type Page } from "npm:puppeteer-core@25.19.0";
import { fakeListings, startFakeEastmoney } from "./_fake_eastmoney.ts";
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

/**
 * Chromium with one 1280×1000 page, whose uncaught errors are collected and which saves
 * screenshots; closes when disposed.
 */
async function openBrowser() {
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root on a CI machine: no sandbox; nothing to render on a GPU.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic"],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 1000 });
    const errors: string[] = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    return {
      page,
      errors,
      /** Saves the whole page as `ARTIFACTS/<name>.png`. */
      shot: (name: string) =>
        page.screenshot({
          path: new URL(`${name}.png`, ARTIFACTS).pathname,
          fullPage: true,
        }),
      [Symbol.asyncDispose]: () => browser.close(),
    };
  } catch (error) {
    await browser.close();
    throw error;
  }
}

/** The value of a JavaScript expression in the page. */
async function value<T = unknown>(page: Page, expression: string): Promise<T> {
  return await page.evaluate(expression) as T;
}

/** Waits until `expression` is truthy in the page. */
async function waitFor(page: Page, expression: string): Promise<void> {
  await page.waitForFunction(expression, { polling: 25, timeout: 10_000 });
}

/** Navigates to `url` and waits for its load event; resolves with the final URL. */
async function goto(page: Page, url: string): Promise<string> {
  await page.goto(url, { waitUntil: "load", timeout: 15_000 });
  return page.url();
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
    await using browser = await openBrowser();
    const { page, errors, shot } = browser;
    const base = `http://127.0.0.1:${server.requesterPort}`;
    const rows = () =>
      value<string[]>(
        page,
        `[...document.querySelectorAll("#workers tbody tr")].map((tr) => tr.children[1].textContent)`,
      );

    // Without the token: the hint, not the dashboard.
    await goto(page, `${base}/`);
    assert.match(
      await value<string>(page, "document.body.innerText"),
      /needs the requester token/,
    );
    assert.equal(
      await value(page, "document.querySelector('#workers')"),
      null,
    );

    // With it once in the address: a cookie from then on, and the token leaves the address.
    assert.equal(await goto(page, `${base}/?token=${TOKEN}`), `${base}/`);
    await waitFor(page, workerRows(1));
    assert.deepEqual(await rows(), ["alpha"]);
    assert.equal(
      await value(
        page,
        `document.querySelector("#workers tbody tr .state").textContent`,
      ),
      "ready",
    );

    // A worker joins, then leaves: the page follows without a reload.
    let since = performance.now();
    await using beta = await startWorker(server, { name: "beta" });
    await waitFor(page, workerRows(2));
    const joinMs = performance.now() - since;
    assert.deepEqual((await rows()).sort(), ["alpha", "beta"]);
    await shot("workers");
    since = performance.now();
    await beta.stop();
    await waitFor(page, workerRows(1));
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
      waitFor(
        page,
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
    await waitFor(
      page,
      'document.querySelectorAll("#batches .batch").length === 0',
    );

    // The symbol view: a demo symbol's daily bars as candles, drawn on the canvas.
    await value(
      page,
      `(() => {
      const form = document.querySelector("#symbol-form");
      form.elements.code.value = "510300";
      form.elements.start_date.value = "2024-01-01";
      form.requestSubmit();
    })()`,
    );
    await waitFor(page, "globalThis.dashboard.symbolBars > 0");
    const counts = await value<{ bars: number; candles: number }>(
      page,
      "({ bars: dashboard.symbolBars, candles: dashboard.candleCount() })",
    );
    assert.ok(counts.bars > 100, `only ${counts.bars} bars`);
    assert.equal(counts.candles, counts.bars);
    assert.match(
      await value<string>(
        page,
        'document.querySelector("#symbol-status").textContent',
      ),
      /510300.*bars \(source: demo\)/,
    );
    // Candle colours on the chart's canvases: pixels really drawn, not only data held. The chart
    // paints on a later animation frame than the one that took the bars, and a loaded machine
    // can put many frames between them: wait for the paint rather than read the first frame.
    await value(
      page,
      `globalThis.candlePixels = () => {
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
    }`,
    );
    await waitFor(page, "globalThis.candlePixels() > 500").catch(() => {});
    const coloured = await value<number>(page, "globalThis.candlePixels()");
    assert.ok(coloured > 500, `only ${coloured} candle-coloured pixels`);
    await shot("symbol");

    assert.deepEqual(errors, []);
    console.log(
      `dashboard_test: join shown after ${Math.round(joinMs)} ms, leave after ${
        Math.round(leaveMs)
      } ms; ${counts.candles} candles, ${coloured} candle pixels; screenshots in ${ARTIFACTS.pathname}`,
    );
  },
});

Deno.test({
  name:
    "dashboard - finds a symbol by prefixed code or by name, clears the chart on an error, opens a worker's details, says no budget, serves its icon",
  ignore: !available,
  async fn() {
    const listings = fakeListings();
    listings.stock.push({ code: "600519", name: "贵州茅台", market: 1 });
    await using upstream = await startFakeEastmoney({
      synthetic: true,
      unknownCodes: ["510999"],
      listings,
    });
    await using server = startTestServer({ requesterToken: TOKEN });
    await using market = releasing(
      createMarketService({
        eastmoneyUrl: upstream.url,
        rateLimit: 0,
        retries: 0,
      }),
      (m) => m.close(),
    );
    await using _worker = await startWorker(server, {
      name: "fetcher",
      actions: market.actions(),
      heartbeatData: () => ({
        blocked_sources: market.blockedSources(),
        upstream: market.upstreamStatus(),
      }),
    });
    await Deno.mkdir(ARTIFACTS, { recursive: true });
    await using browser = await openBrowser();
    const { page, errors, shot } = browser;
    const base = `http://127.0.0.1:${server.requesterPort}`;

    // Browsers ask for it before any token: an icon, not 426 or 401.
    const icon = await fetch(`${base}/favicon.ico`);
    assert.equal(icon.status, 200);
    assert.equal(icon.headers.get("content-type"), "image/svg+xml");
    assert.match(await icon.text(), /^<svg/);

    await goto(page, `${base}/?token=${TOKEN}`);
    await waitFor(page, workerRows(1));
    const text = (selector: string) =>
      value<string>(
        page,
        `document.querySelector(${
          JSON.stringify(selector)
        })?.textContent ?? null`,
      );
    const show = (kind: string, code: string) =>
      value(
        page,
        `(() => {
      const form = document.querySelector("#symbol-form");
      form.elements.symbol_type.value = ${JSON.stringify(kind)};
      form.elements.code.value = ${JSON.stringify(code)};
      form.elements.start_date.value = "2024-01-01";
      window.dashboard.symbol = undefined;
      form.requestSubmit();
    })()`,
      );
    const shown = async () => {
      await waitFor(page, `window.dashboard.symbol !== undefined`);
      return await value<
        { symbol: unknown; bars: number; candles: number }
      >(
        page,
        "({ symbol: dashboard.symbol, bars: dashboard.symbolBars, candles: dashboard.candleCount() })",
      );
    };

    await show("stock", "sh600519");
    let s = await shown();
    assert.deepEqual(s.symbol, { code: "600519", symbol_type: "stock" });
    assert.ok(s.bars > 100);
    assert.equal(s.candles, s.bars);

    await show("etf", "510999");
    s = await shown();
    assert.equal(s.symbol, null);
    assert.equal(
      s.candles,
      0,
      "the previous symbol's candles stay after an error",
    );
    assert.match((await text("#symbol-status"))!, /UNKNOWN_CODE/);

    await show("etf", "茅台");
    s = await shown();
    assert.deepEqual(s.symbol, { code: "600519", symbol_type: "stock" });
    assert.ok(s.candles > 100);
    assert.match((await text("#symbol-status"))!, /600519 .*\(stock\)/);

    // Part of a name: the best match of the chosen kind is drawn, the others are offered.
    await show("etf", "沪深3");
    s = await shown();
    assert.deepEqual(s.symbol, { code: "510300", symbol_type: "etf" });
    assert.match((await text("#symbol-matches"))!, /沪深300 000300 \(index\)/);
    await value(
      page,
      `window.dashboard.symbol = undefined;
      [...document.querySelectorAll("#symbol-matches button")]
        .find((b) => b.textContent.includes("000300")).click()`,
    );
    s = await shown();
    assert.deepEqual(s.symbol, { code: "000300", symbol_type: "index" });
    await shot("symbol_search");

    await show("etf", "没有这个名字");
    s = await shown();
    assert.equal(s.candles, 0);
    assert.match((await text("#symbol-status"))!, /No symbol named like/);

    await waitFor(
      page,
      `document.querySelector("#workers tbody tr td:last-child").textContent.includes("no budget")`,
    );
    assert.doesNotMatch(
      (await text("#workers tbody tr td:last-child"))!,
      /\d{6,}/,
    );
    assert.equal(
      await value(page, `document.querySelector("#worker-details").hidden`),
      true,
    );
    await value(page, `document.querySelector("#workers tbody tr td").click()`);
    await waitFor(page, `!document.querySelector("#worker-details").hidden`);
    assert.equal(await text('#worker-fields dd[data-field="name"]'), "fetcher");
    assert.match(
      (await text('#worker-fields dd[data-field^="upstream:"]'))!,
      /no budget · no rate limit/,
    );
    assert.match(
      (await text('#worker-fields dd[data-field="actions"]'))!,
      /list_symbols/,
    );
    await shot("worker_details");
    // A second click closes it.
    await value(page, `document.querySelector("#workers tbody tr td").click()`);
    await waitFor(page, `document.querySelector("#worker-details").hidden`);

    // A worker that lets a request pass its deadline is benched: its row says since when and
    // why, and so do its details.
    const hung = Promise.withResolvers<void>();
    await using _sleeper = await startWorker(server, {
      name: "sleeper",
      actions: { sleep: () => hung.promise },
    });
    await using client = releasing(
      new RequesterClient(server.requesterUrl, { token: TOKEN }),
      (c) => c.close(),
    );
    await client.connect();
    const late = await client.request("sleep", {}, { timeout: 0.2 });
    assert.equal(late.error_code, "TIMEOUT");
    const sleeperRow = `[...document.querySelectorAll("#workers tbody tr")]
      .find((tr) => tr.children[1].textContent === "sleeper")`;
    await waitFor(
      page,
      `${sleeperRow}?.children[2].textContent.startsWith("benched")`,
    );
    assert.match(
      await value<string>(page, `${sleeperRow}.children[2].textContent`),
      /^benched\s*since \d.*: sleep passed its deadline/,
    );
    assert.equal(await text("#stat-benched-count"), "1");
    await value(page, `${sleeperRow}.children[0].click()`);
    await waitFor(page, `!document.querySelector("#worker-details").hidden`);
    assert.match(
      (await text('#worker-fields dd[data-field="benched"]'))!,
      /^since .*: sleep passed its deadline/,
    );
    assert.equal(
      await text('#worker-fields dd[data-field="state"]'),
      "benched",
    );
    await shot("benched");
    hung.resolve();
    assert.deepEqual(errors, []);
  },
});

Deno.test({
  name:
    "dashboard - batch items count in throughput, answered and served; both time charts show the same seconds, from zero up",
  ignore: !available,
  async fn() {
    await using server = startTestServer({
      requesterToken: TOKEN,
      dashboardIntervalMs: 60_000,
    });
    await using market = releasing(
      createMarketService({ providers: ["demo"] }),
      (m) => m.close(),
    );
    await using _a = await startWorker(server, {
      name: "a",
      actions: market.actions(),
    });
    await using _b = await startWorker(server, {
      name: "b",
      actions: market.actions(),
    });
    await using client = releasing(
      new RequesterClient(server.requesterUrl, { token: TOKEN }),
      (c) => c.close(),
    );
    await using browser = await openBrowser();
    const { page, errors } = browser;
    const base = `http://127.0.0.1:${server.requesterPort}`;
    await goto(page, `${base}/?token=${TOKEN}`);
    await waitFor(page, workerRows(2));
    type Range = { from: number; to: number };
    type Axes = {
      drawn: Range | null;
      edges:
        ({ first: number | null; last: number | null; width: number } | null)[];
      prices: [
        { from: number; to: number } | null,
        { from: number; to: number } | null,
      ];
      maxLatency: number;
    };
    // Where each chart draws the first and the last second of the last snapshot's timeline
    // (null: not on the chart), its plot width, and its value axis. The charts apply what they
    // are given at their next frame, and a snapshot may come at any time: read frame by frame
    // until one shows the whole timeline, or give the last reading after 10 s (the assertions
    // below then say what is wrong).
    const axes = () =>
      value<Axes>(
        page,
        `new Promise((resolve) => {
        const { charts, series } = window.dashboard;
        const until = performance.now() + 10_000;
        const read = () => {
          const drawn = window.dashboard.drawn;
          return {
            drawn,
            edges: [charts.throughput, charts.latency].map((c) => {
              const t = c.timeScale();
              return drawn && {
                first: t.timeToCoordinate(drawn.from),
                last: t.timeToCoordinate(drawn.to),
                width: t.width(),
              };
            }),
            prices: [charts.throughput, charts.latency].map((c) => c.priceScale("right").getVisibleRange()),
            maxLatency: Math.max(0, ...series.max.data().map((p) => p.value ?? 0)),
          };
        };
        // Within a bar of the edges: the charts place bars by whole pixels.
        const inside = (x, e) => x !== null && x >= -e.width / 300 && x <= e.width * 301 / 300;
        const frame = () => {
          const seen = read();
          const settled = seen.edges.every((e) => e && inside(e.first, e) && inside(e.last, e)) &&
            seen.prices.every((r) => r !== null) && seen.maxLatency <= seen.prices[1].to;
          if (settled || performance.now() > until) resolve(seen);
          else requestAnimationFrame(frame);
        };
        requestAnimationFrame(frame);
      })`,
      );
    const check = (seen: Axes) => {
      assert.ok(seen.drawn, "no timeline drawn");
      assert.equal(seen.drawn.to - seen.drawn.from, 299, "not five minutes");
      for (const [i, chart] of ["throughput", "latency"].entries()) {
        const e = seen.edges[i]!;
        for (const x of [e.first, e.last]) {
          assert.ok(
            x !== null && x >= -e.width / 300 && x <= e.width * 301 / 300,
            `${chart}: the timeline's ends are not both on the chart: ${
              JSON.stringify(e)
            }`,
          );
        }
      }
      for (const range of seen.prices) {
        assert.ok(range && range.from >= 0, JSON.stringify(range));
      }
      assert.ok(
        seen.maxLatency <= seen.prices[1]!.to,
        "the latency line leaves the chart",
      );
    };
    // Idle: nothing below zero on either axis.
    check(await axes());

    await client.connect();
    const codes = Array.from({ length: 12 }, (_, i) => String(510300 + i * 5));
    const answer = await client.request(
      "get_markets",
      codes.map((code) => ({
        symbol_type: "etf",
        code,
        start_date: "2025-01-01",
      })),
    );
    assert.equal(answer.success, true);
    await waitFor(
      page,
      `document.querySelector("#stat-answered").textContent === "12"`,
    );
    // Served: the items each worker fetched, 12 in all, not the chunks they came in.
    await waitFor(
      page,
      `[...document.querySelectorAll("#workers tbody tr")]
        .reduce((n, tr) => n + Number(tr.children[5].textContent), 0) === 12`,
    );
    await waitFor(
      page,
      `window.dashboard.series.requests.data().reduce((a, p) => a + (p.value ?? 0), 0) === 12`,
    );
    check(await axes());
    await Deno.mkdir(ARTIFACTS, { recursive: true });
    await browser.shot("charts");
    assert.deepEqual(errors, []);
  },
});
