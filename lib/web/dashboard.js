// The dashboard's script: reads the server's snapshots from /events (SSE) and draws them; the
// symbol view asks /v1/market. Plain DOM and lightweight-charts, no build step. Every text that
// comes from a worker goes through textContent, never innerHTML.
"use strict";

const LC = globalThis.LightweightCharts;
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fmt(n, digits = 0) {
  return n === null || n === undefined ? "–" : Number(n).toFixed(digits);
}

// ---- charts ---------------------------------------------------------------------------------

function timeChart(container) {
  return LC.createChart(container, {
    autoSize: true,
    layout: { attributionLogo: false },
    timeScale: { timeVisible: true, secondsVisible: true },
    rightPriceScale: { borderVisible: false },
    grid: { vertLines: { visible: false } },
  });
}

const throughputChart = timeChart($("throughput-chart"));
const requestSeries = throughputChart.addSeries(LC.AreaSeries, {
  lineWidth: 1,
  priceFormat: { type: "price", precision: 0, minMove: 1 },
});
const failureSeries = throughputChart.addSeries(LC.LineSeries, {
  color: "#c62828",
  lineWidth: 1,
  priceFormat: { type: "price", precision: 0, minMove: 1 },
});
const latencyChart = timeChart($("latency-chart"));
const meanSeries = latencyChart.addSeries(LC.LineSeries, { lineWidth: 2 });
const maxSeries = latencyChart.addSeries(LC.LineSeries, {
  color: "#b7791f",
  lineWidth: 1,
});

function drawTimeline(t) {
  const start = t.end - t.requests.length;
  const points = (values) =>
    values.map((v, i) =>
      v === null ? { time: start + i } : { time: start + i, value: v }
    );
  requestSeries.setData(points(t.requests));
  failureSeries.setData(points(t.failures));
  meanSeries.setData(points(t.mean_ms));
  maxSeries.setData(points(t.max_ms));
}

// ---- workers, batches, errors ---------------------------------------------------------------

function upstreamCell(w, now) {
  const cell = el("td");
  const hosts = Object.entries(w.upstream?.hosts ?? {});
  for (const [host, h] of hosts) {
    const cooling = h.cooldown_until > now;
    const parts = [host];
    if (cooling) {
      parts.push(`cool-down ${Math.ceil((h.cooldown_until - now) / 1000)} s`);
    }
    if (h.budget_hour !== null) parts.push(`${h.budget_hour}/h left`);
    if (h.budget_day !== null) parts.push(`${h.budget_day}/day left`);
    if (h.rate !== null) parts.push(`${fmt(h.rate, 1)} req/s`);
    cell.append(
      el(
        "div",
        { class: cooling ? "upstream cooling" : "upstream" },
        parts.join(" · "),
      ),
    );
  }
  const cache = w.upstream?.cache;
  if (cache && cache.hits + cache.misses > 0) {
    const ratio = cache.hits / (cache.hits + cache.misses);
    cell.append(
      el("div", { class: "dim" }, `cache hits ${fmt(ratio * 100)} %`),
    );
  }
  for (const source of w.blocked_sources ?? []) {
    cell.append(el("div", { class: "state blocked" }, `${source} blocked`));
  }
  if (!cell.childNodes.length) cell.append(el("span", { class: "dim" }, "–"));
  return cell;
}

function drawWorkers(workers, now) {
  const body = $("workers").tBodies[0];
  body.replaceChildren(
    ...workers.map((w) => {
      const load = w.max_concurrency ? w.in_flight / w.max_concurrency : 0;
      return el(
        "tr",
        { "data-id": w.client_id, "data-state": w.state },
        el("td", {}, w.client_id),
        el(
          "td",
          {},
          w.name,
          // In a cluster: the server the worker is attached to.
          ...(w.server ? [el("div", { class: "dim" }, `@ ${w.server}`)] : []),
        ),
        el("td", {}, el("span", { class: `state ${w.state}` }, w.state)),
        el("td", {}, fmt(w.weight, w.weight % 1 ? 1 : 0)),
        el(
          "td",
          {},
          el(
            "span",
            { class: "load" },
            el("i", { style: `width:${Math.min(100, load * 100)}%` }),
          ),
          `${w.in_flight}/${w.max_concurrency}`,
        ),
        el("td", {}, w.served),
        el("td", {}, w.failures),
        el(
          "td",
          {},
          w.latency_ms === null ? "–" : `${fmt(w.latency_ms, 1)} ms`,
        ),
        upstreamCell(w, now),
      );
    }),
  );
  $("no-workers").hidden = workers.length > 0;
}

function drawBatches(batches, now) {
  $("batches").replaceChildren(
    ...batches.map((b) =>
      el(
        "div",
        { class: "batch", "data-id": b.id },
        el(
          "div",
          {},
          `${b.id}: ${b.done}/${b.total} items, ${
            fmt((now - b.started) / 1000, 1)
          } s`,
        ),
        el("progress", { max: String(b.total), value: String(b.done) }),
      )
    ),
  );
  $("no-batches").hidden = batches.length > 0;
}

function drawErrors(errors) {
  $("errors").replaceChildren(
    ...errors.slice(-15).reverse().map((e) =>
      el(
        "li",
        {},
        `${new Date(e.at).toLocaleTimeString()} ${
          e.command || "(frame)"
        } ${e.error_code}: ${e.error}`,
      )
    ),
  );
  $("no-errors").hidden = errors.length > 0;
}

function draw(s) {
  $("stat-workers").textContent =
    `${s.stats.healthy_workers}/${s.stats.workers}`;
  $("stat-in-flight").textContent = s.stats.in_flight;
  $("stat-queued").textContent = s.stats.queued;
  $("stat-answered").textContent = s.stats.answered;
  $("stat-failed").textContent = s.stats.failed;
  $("stat-version").textContent = `v${s.version}, up ${s.stats.uptime_s} s`;
  drawWorkers(s.workers, s.now);
  drawBatches(s.batches, s.now);
  drawErrors(s.errors);
  drawTimeline(s.timeline);
  dashboard.snapshots++;
}

// ---- live updates ---------------------------------------------------------------------------

function connect() {
  const events = new EventSource("/events");
  events.addEventListener("snapshot", (event) => {
    $("live").textContent = "live";
    $("live").className = "stat";
    draw(JSON.parse(event.data));
  });
  events.onerror = () => {
    // EventSource reconnects by itself; say so meanwhile.
    $("live").textContent = "reconnecting…";
    $("live").className = "stat off";
  };
}

// ---- symbol view ----------------------------------------------------------------------------

const symbolChart = LC.createChart($("symbol-chart"), {
  autoSize: true,
  layout: { attributionLogo: false },
  rightPriceScale: { borderVisible: false },
});
const candles = symbolChart.addSeries(LC.CandlestickSeries, {
  upColor: "#c62828",
  downColor: "#1a7f37",
  borderVisible: false,
  wickUpColor: "#c62828",
  wickDownColor: "#1a7f37",
});
const volume = symbolChart.addSeries(LC.HistogramSeries, {
  priceFormat: { type: "volume" },
  priceScaleId: "",
});
volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });

async function showSymbol(form) {
  const params = new URLSearchParams(new FormData(form));
  params.set("format", "json");
  const status = $("symbol-status");
  status.className = "dim";
  status.textContent = "loading…";
  const response = await fetch(`/v1/market?${params}`);
  const body = await response.json();
  if (!response.ok || body.success === false) {
    status.className = "error";
    status.textContent = `${body.error_code ?? response.status}: ${
      body.error ?? "failed"
    }`;
    return;
  }
  const bars = body.data ?? [];
  candles.setData(bars.map((b) => ({
    time: b.date,
    open: b.open,
    high: b.high,
    low: b.low,
    close: b.close,
  })));
  volume.setData(bars.map((b) => ({
    time: b.date,
    value: b.volume,
    color: b.close >= b.open ? "rgba(198,40,40,0.4)" : "rgba(26,127,55,0.4)",
  })));
  symbolChart.timeScale().fitContent();
  status.textContent = `${body.code} ${body.name ?? ""}: ${bars.length} bars` +
    (body.source ? ` (source: ${body.source})` : "");
  dashboard.symbolBars = bars.length;
}

$("symbol-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showSymbol(event.target).catch((error) => {
    $("symbol-status").className = "error";
    $("symbol-status").textContent = String(error);
  });
});

// What the browser test (and a curious operator in the console) can read.
const dashboard = {
  snapshots: 0,
  symbolBars: 0,
  candleCount: () => candles.data().length,
};
globalThis.dashboard = dashboard;

connect();
