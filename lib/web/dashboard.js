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

// Requests and milliseconds are never negative: the axis starts at 0, and an idle chart reads
// 0 to 1 rather than -5 to 5.
function fromZero(original) {
  const auto = original();
  return {
    priceRange: {
      minValue: 0,
      maxValue: Math.max(1, auto?.priceRange?.maxValue ?? 0),
    },
    margins: { above: 8, below: 0 },
  };
}

// The two time charts show exactly the same seconds (the timeline's), side by side: no scrolling
// or zooming of their own, which would let one drift from the other.
function timeChart(container, priceFormat) {
  const chart = LC.createChart(container, {
    autoSize: true,
    layout: { attributionLogo: false },
    // The range is set with every snapshot; the chart's own shift for a new bar would move it
    // again, by as many bars as snapshots came between two frames.
    timeScale: {
      timeVisible: true,
      secondsVisible: true,
      shiftVisibleRangeOnNewBar: false,
    },
    rightPriceScale: {
      borderVisible: false,
      scaleMargins: { top: 0.1, bottom: 0 },
    },
    grid: { vertLines: { visible: false } },
    handleScroll: false,
    handleScale: false,
  });
  // A point every second, whatever the other series hold: a second without requests has no
  // latency, and a chart whose series skip it would keep a time axis of its own.
  // (Drawn without a line rather than hidden: a hidden series has no say in the price axis,
  // which would then fall back to -0.5 to 0.5 while no second has a latency.)
  const clock = chart.addSeries(LC.LineSeries, {
    lineVisible: false,
    lastValueVisible: false,
    priceLineVisible: false,
    crosshairMarkerVisible: false,
    autoscaleInfoProvider: fromZero,
    priceFormat,
  });
  return { chart, clock };
}

function addTimeSeries(chart, type, options) {
  return chart.addSeries(type, {
    ...options,
    autoscaleInfoProvider: fromZero,
  });
}

const COUNT_FORMAT = { type: "price", precision: 0, minMove: 1 };
const MS_FORMAT = { type: "price", precision: 1, minMove: 0.1 };
const throughput = timeChart($("throughput-chart"), COUNT_FORMAT);
const requestSeries = addTimeSeries(throughput.chart, LC.AreaSeries, {
  lineWidth: 1,
  priceFormat: COUNT_FORMAT,
});
const failureSeries = addTimeSeries(throughput.chart, LC.LineSeries, {
  color: "#c62828",
  lineWidth: 1,
  priceFormat: COUNT_FORMAT,
});
const latency = timeChart($("latency-chart"), MS_FORMAT);
// Points as well as lines: a second with requests between idle ones is a point, not a line.
const meanSeries = addTimeSeries(latency.chart, LC.LineSeries, {
  lineWidth: 2,
  pointMarkersVisible: true,
  pointMarkersRadius: 2,
  priceFormat: MS_FORMAT,
});
const maxSeries = addTimeSeries(latency.chart, LC.LineSeries, {
  color: "#b7791f",
  lineWidth: 1,
  pointMarkersVisible: true,
  pointMarkersRadius: 2,
  priceFormat: MS_FORMAT,
});

// Bars in the timeline last drawn.
let timelineBars = 0;

// Every second whole on the chart, the last one too: a bar cut at the edge is left out of the
// value axis's range, and its line would run off the chart.
function showAllBars(chart) {
  if (timelineBars === 0) return;
  chart.timeScale().setVisibleLogicalRange({
    from: -0.5,
    to: timelineBars - 0.5,
  });
}

// When the plot narrows or widens (the value axis's labels grew, the window was resized) a chart
// keeps its bar spacing, not its range: set the range again.
for (const { chart } of [throughput, latency]) {
  chart.timeScale().subscribeSizeChange(() => showAllBars(chart));
}

function drawTimeline(t) {
  const start = t.end - t.requests.length;
  const points = (values) =>
    values.map((v, i) =>
      v === null ? { time: start + i } : { time: start + i, value: v }
    );
  const ticks = t.requests.map((_, i) => ({ time: start + i, value: 0 }));
  throughput.clock.setData(ticks);
  latency.clock.setData(ticks);
  requestSeries.setData(points(t.requests));
  failureSeries.setData(points(t.failures));
  meanSeries.setData(points(t.mean_ms));
  maxSeries.setData(points(t.max_ms));
  if (ticks.length === 0) return;
  timelineBars = ticks.length;
  for (const { chart } of [throughput, latency]) showAllBars(chart);
  dashboard.drawn = { from: start, to: t.end - 1 };
}

// ---- workers, batches, errors ---------------------------------------------------------------

// A host without a budget says null (a worker before that said a billion less what it used).
function budgetTexts(h) {
  const texts = [];
  const left = (n) => n !== null && n !== undefined && n < 1e8;
  if (left(h.budget_hour)) texts.push(`${h.budget_hour}/h left`);
  if (left(h.budget_day)) texts.push(`${h.budget_day}/day left`);
  return texts.length ? texts : ["no budget"];
}

function rateText(rate) {
  if (rate === 0) return "no rate limit";
  // Eastmoney's K-line pace is one request per 30 s: 0.0 req/s would say nothing.
  return rate >= 1 ? `${fmt(rate, 1)} req/s` : `1 req per ${fmt(1 / rate)} s`;
}

function upstreamCell(w, now) {
  const cell = el("td");
  const hosts = Object.entries(w.upstream?.hosts ?? {});
  for (const [host, h] of hosts) {
    const cooling = h.cooldown_until > now;
    const parts = [host];
    if (cooling) {
      parts.push(`cool-down ${Math.ceil((h.cooldown_until - now) / 1000)} s`);
    }
    parts.push(...budgetTexts(h));
    if (h.rate !== null) parts.push(rateText(h.rate));
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

function benchedText(b) {
  return `since ${new Date(b.since).toLocaleTimeString()}: ${b.reason}`;
}

// A benched worker (one of its requests passed its deadline) says so, since when and why, until
// it answers in time again.
function stateCell(w) {
  const benched = w.benched ?? null;
  const state = benched ? "benched" : w.state;
  return el(
    "td",
    {},
    el("span", { class: `state ${benched ? "unhealthy" : w.state}` }, state),
    ...(benched
      ? [el("div", { class: "dim benched" }, benchedText(benched))]
      : []),
  );
}

// ---- one worker's details ------------------------------------------------------------------

// The worker whose details are open (its client_id), and the last snapshot's workers.
let selected = null;
let lastWorkers = [];
let lastNow = 0;

const DETAIL_FIELDS = [
  ["client_id", "id"],
  ["name", "name"],
  ["state", "state"],
  ["address", "address"],
  ["host", "host"],
  ["server", "server"],
  ["version", "version"],
  ["weight", "weight"],
  ["max_concurrency", "max concurrency"],
  ["in_flight", "in flight"],
  ["served", "served"],
  ["failures", "failures"],
  ["latency_ms", "latency (ms, smoothed)"],
  ["healthy", "healthy"],
  ["draining", "draining"],
  ["registered", "registered"],
  ["connected_since", "connected since"],
  ["last_seen", "last seen"],
  ["actions", "actions"],
  ["blocked_sources", "blocked sources"],
  ["benched", "benched"],
];
const SHOWN_ELSEWHERE = new Set([...DETAIL_FIELDS.map(([k]) => k), "upstream"]);

function detailText(value) {
  if (value === null || value === undefined) return "–";
  if (Array.isArray(value)) return value.length ? value.join(", ") : "none";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function drawDetails() {
  const box = $("worker-details");
  box.hidden = selected === null;
  if (selected === null) return;
  const w = lastWorkers.find((w) => w.client_id === selected);
  $("worker-details-title").textContent = w
    ? `Worker ${w.name} (${w.client_id})`
    : `Worker ${selected}`;
  if (!w) {
    $("worker-fields").replaceChildren(
      el("p", { class: "dim" }, "No longer connected."),
    );
    return;
  }
  const rows = [];
  const add = (key, label, value) =>
    rows.push(
      el("dt", {}, label),
      el("dd", { "data-field": key }, detailText(value)),
    );
  for (const [key, label] of DETAIL_FIELDS) {
    if (!(key in w)) continue;
    if (key === "benched") {
      add(key, label, w.benched ? benchedText(w.benched) : "no");
    } else if (key === "state") {
      // As its row says it.
      add(key, label, w.benched ? "benched" : w.state);
    } else add(key, label, w[key]);
  }
  for (const [host, h] of Object.entries(w.upstream?.hosts ?? {})) {
    const cooling = h.cooldown_until > lastNow
      ? `cooling down until ${new Date(h.cooldown_until).toLocaleTimeString()}`
      : "not cooling down";
    const rate = h.rate === null ? [] : [rateText(h.rate)];
    add(
      `upstream:${host}`,
      `upstream ${host}`,
      [cooling, ...budgetTexts(h), ...rate].join(" · "),
    );
  }
  const cache = w.upstream?.cache;
  if (cache) {
    const lookups = cache.hits + cache.misses;
    add(
      "cache",
      "cache",
      `${cache.hits} hits, ${cache.misses} misses` +
        (lookups ? ` (${fmt(cache.hits / lookups * 100)} % hits)` : ""),
    );
  }
  // Whatever else the server says of a worker, as it says it.
  for (const [key, value] of Object.entries(w)) {
    if (!SHOWN_ELSEWHERE.has(key)) add(key, key.replaceAll("_", " "), value);
  }
  $("worker-fields").replaceChildren(...rows);
}

function selectWorker(id) {
  selected = selected === id ? null : id;
  for (const tr of $("workers").tBodies[0].rows) {
    tr.classList.toggle("selected", tr.dataset.id === selected);
  }
  drawDetails();
  if (selected !== null) {
    $("worker-details").scrollIntoView({ block: "nearest" });
  }
}

$("workers").tBodies[0].addEventListener("click", (event) => {
  const row = event.target.closest("tr[data-id]");
  if (row) selectWorker(row.dataset.id);
});
$("worker-details-close").addEventListener("click", () => selectWorker(null));

function drawWorkers(workers, now) {
  lastWorkers = workers;
  lastNow = now;
  const body = $("workers").tBodies[0];
  body.replaceChildren(
    ...workers.map((w) => {
      const load = w.max_concurrency ? w.in_flight / w.max_concurrency : 0;
      return el(
        "tr",
        {
          "data-id": w.client_id,
          "data-state": w.state,
          class: w.client_id === selected ? "selected" : "",
          title: "Show this worker's details",
        },
        el("td", {}, w.client_id),
        el(
          "td",
          {},
          w.name,
          // In a cluster: the server the worker is attached to.
          ...(w.server ? [el("div", { class: "dim" }, `@ ${w.server}`)] : []),
        ),
        stateCell(w),
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
  drawDetails();
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
  const benched = s.stats.benched_workers ?? 0;
  $("stat-benched").hidden = benched === 0;
  $("stat-benched-count").textContent = benched;
  $("stat-workers").textContent =
    `${s.stats.healthy_workers}/${s.stats.workers}`;
  $("stat-in-flight").textContent = s.stats.in_flight;
  $("stat-queued").textContent = s.stats.queued;
  // Each batch item counts as one answer, in place of its batch.
  $("stat-answered").textContent = s.answers?.answered ?? s.stats.answered;
  $("stat-failed").textContent = s.answers?.failed ?? s.stats.failed;
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

// What the user typed: a code, with or without an exchange prefix or suffix as the CLI takes it
// (sh600519, 600519.SH), or else a name (or part of one) to look up in `list_symbols`.
const CODE_INPUT = /^(?:sh|sz|bj)?(\d{6})(?:\.(?:sh|sz|bj|ss))?$/i;
const KINDS = ["etf", "stock", "index"];

// Symbol lists by kind, asked of the workers once per page (a list costs an upstream call).
const symbolLists = new Map();

async function request(frame) {
  const response = await fetch("/v1/request", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(frame),
  });
  return {
    ok: response.ok,
    status: response.status,
    body: await response.json(),
  };
}

function listOf(kind) {
  let list = symbolLists.get(kind);
  if (!list) {
    list = request({ command: "list_symbols", data: { symbol_type: kind } })
      .then(({ ok, status, body }) => {
        const data = body.data ?? {};
        if (!ok || body.success === false || data.success === false) {
          const code = body.error_code ?? status;
          throw new Error(`${code}: ${body.error ?? "failed"}`);
        }
        return data.symbols ?? [];
      });
    // A failed lookup is asked again next time, not remembered.
    list.catch(() => symbolLists.delete(kind));
    symbolLists.set(kind, list);
  }
  return list;
}

/**
 * Symbols whose name holds `text`, best first: the exact name, then names that start with it,
 * then the rest; the selected kind before the others.
 */
async function findByName(text, preferred) {
  const kinds = [preferred, ...KINDS.filter((k) => k !== preferred)];
  const lists = await Promise.allSettled(kinds.map(listOf));
  const found = [];
  const errors = [];
  lists.forEach((r, i) => {
    if (r.status === "rejected") {
      errors.push(`${kinds[i]}: ${r.reason.message}`);
      return;
    }
    for (const s of r.value) {
      const name = String(s.name ?? "");
      const at = name.indexOf(text);
      if (at < 0) continue;
      const rank = name === text ? 0 : at === 0 ? 1 : 2;
      found.push({ ...s, symbol_type: kinds[i], rank, order: i });
    }
  });
  found.sort((a, b) =>
    a.rank - b.rank || a.order - b.order || a.name.length - b.name.length
  );
  return { found, errors };
}

function clearSymbol() {
  candles.setData([]);
  volume.setData([]);
  dashboard.symbolBars = 0;
  dashboard.symbol = null;
}

function symbolFailed(text) {
  clearSymbol();
  const status = $("symbol-status");
  status.className = "error";
  status.textContent = text;
  $("symbol-matches").replaceChildren();
}

function showMatches(matches, form) {
  $("symbol-matches").replaceChildren(
    ...matches.slice(0, 12).map((m) => {
      const button = el(
        "button",
        { type: "button", class: "match" },
        `${m.name} ${m.code} (${m.symbol_type})`,
      );
      button.addEventListener("click", () => {
        form.elements.symbol_type.value = m.symbol_type;
        form.elements.code.value = m.code;
        form.requestSubmit();
      });
      return button;
    }),
  );
}

async function showSymbol(form) {
  const status = $("symbol-status");
  status.className = "dim";
  status.textContent = "loading…";
  const text = form.elements.code.value.trim();
  let kind = form.elements.symbol_type.value;
  let code;
  const plain = CODE_INPUT.exec(text);
  if (plain) {
    code = plain[1];
    $("symbol-matches").replaceChildren();
  } else {
    status.textContent = `looking up “${text}”…`;
    const { found, errors } = await findByName(text, kind);
    if (found.length === 0) {
      symbolFailed(
        errors.length === KINDS.length
          ? `Cannot look up names: ${errors.join("; ")}`
          : `No symbol named like “${text}”${
            errors.length ? ` (not searched: ${errors.join("; ")})` : ""
          }`,
      );
      return;
    }
    showMatches(found.length > 1 ? found : [], form);
    ({ code, symbol_type: kind } = found[0]);
  }
  const params = new URLSearchParams(new FormData(form));
  params.set("code", code);
  params.set("symbol_type", kind);
  params.set("format", "json");
  const response = await fetch(`/v1/market?${params}`);
  const body = await response.json();
  if (!response.ok || body.success === false) {
    // The chart never shows one symbol under another's failure.
    symbolFailed(
      `${body.error_code ?? response.status}: ${body.error ?? "failed"}`,
    );
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
  status.className = "dim";
  status.textContent =
    `${body.code} ${body.name ?? ""} (${kind}): ${bars.length} bars` +
    (body.source ? ` (source: ${body.source})` : "");
  dashboard.symbolBars = bars.length;
  dashboard.symbol = { code: body.code, symbol_type: kind };
}

$("symbol-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showSymbol(event.target).catch((error) => symbolFailed(String(error)));
});

// What the browser test (and a curious operator in the console) can read.
const dashboard = {
  snapshots: 0,
  symbolBars: 0,
  symbol: null,
  // The seconds the last snapshot's timeline covers.
  drawn: null,
  candleCount: () => candles.data().length,
  charts: { throughput: throughput.chart, latency: latency.chart },
  series: {
    requests: requestSeries,
    failures: failureSeries,
    mean: meanSeries,
    max: maxSeries,
  },
};
globalThis.dashboard = dashboard;

connect();
