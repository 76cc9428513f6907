/**
 * A fake Eastmoney (and Tencent) K-line server for tests, end-to-end tests and the bench.
 *
 * It speaks plain HTTP/1.1 from a raw TCP listener on 127.0.0.1, so it can also misbehave the
 * way a banning host does: reset the connection, answer `klines: []`, HTTP 503/429, `data: null`
 * or an HTML page, for the next N calls or for some codes. Data comes from the real fixtures in
 * `../../shared/fixtures/market/` (510300 unadjusted and qfq, 159915) and, with
 * `synthetic: true`, from deterministic made-up bars for any other plausible code.
 *
 * @module
 */

/** Where the market fixtures live: `shared/` sits next to the repository. */
export const FIXTURES_DIR: URL = new URL(
  "../../shared/fixtures/market/",
  import.meta.url,
);

/** Whether the fixture folder is present (it is absent on users' clones). */
export function fixturesAvailable(): boolean {
  try {
    return Deno.statSync(new URL("etf_510300_daily_qfq.csv", FIXTURES_DIR))
      .isFile;
  } catch {
    return false;
  }
}

/** Ways the fake can misbehave. */
export type FakeFailMode =
  | "reset"
  | "empty"
  | "truncated"
  | "http503"
  | "http429"
  | "null"
  | "html";

/** A failure rule: which requests misbehave, how, and how many times. */
export interface FakeFailure {
  /** How to misbehave. */
  mode: FakeFailMode;
  /** How many matching requests fail before the rule is spent. @default Infinity */
  times?: number;
  /** Only requests for these codes. @default every code */
  codes?: string[];
  /** Only requests to this API. @default every API */
  api?: FakeApi;
  /** Only requests from this identity (see `identityHeader`). @default every identity */
  identity?: string;
  /** A `Retry-After` header value for `http429` and `http503`. */
  retryAfter?: string;
}

/** The APIs the fake serves: Eastmoney K-lines, Tencent K-lines, Eastmoney's symbol list. */
export type FakeApi = "eastmoney" | "tencent" | "list";

/** One request the fake received. */
export interface FakeRequest {
  /** Which API was called. */
  api: FakeApi;
  /** Who asked: the value of the identity header, `""` without one. */
  identity: string;
  /** The request headers. */
  headers: Headers;
  /** The six-digit code asked for (empty when unreadable). */
  code: string;
  /** The full request URL. */
  url: URL;
}

/** Options for {@linkcode startFakeEastmoney}. */
export interface FakeEastmoneyOptions {
  /** Serve made-up bars for any plausible code besides the fixtures. @default false */
  synthetic?: boolean;
  /** Last date of synthetic bars (they start 2015-01-05). @default "2026-03-20" */
  syntheticEnd?: string;
  /** Codes that answer `data: null` even when synthetic. @default [] */
  unknownCodes?: string[];
  /** Known codes without a single bar (`klines: []`, `dktotal: 0`; no Tencent rows). */
  emptyCodes?: string[];
  /**
   * Index codes served under one Eastmoney market only (`data: null` under the others), like
   * CSI-only 000859 under market 2. @default {"000859": 2, "000861": 2, "980017": 0}
   */
  indexMarkets?: Record<string, number>;
  /** Delay before every answer, in ms. @default 0 */
  latencyMs?: number;
  /** Misbehave on every request in this way. */
  failMode?: FakeFailMode;
  /** Failure rules, checked in order (see {@linkcode FakeEastmoney.fail}). */
  failures?: FakeFailure[];
  /** Decides per request; wins over rules. Return `undefined` to answer normally. */
  hook?: (request: FakeRequest) => FakeFailMode | undefined;
  /**
   * The header that tells workers apart, as if each had its own IP (workers send it with
   * `--header`). @default "x-fake-identity"
   */
  identityHeader?: string;
  /**
   * Bans each identity after it made this many requests: every later request of it fails in
   * `mode` (default `reset`, as Eastmoney does) until {@linkcode FakeEastmoney.unban}.
   */
  banAfter?: { requests: number; mode?: FakeFailMode };
  /** The symbol list per kind. @default fakeListings() */
  listings?: Record<"etf" | "stock" | "index", FakeListing[]>;
}

/** A running fake server. */
export interface FakeEastmoney {
  /** Base URL, e.g. `http://127.0.0.1:41234`; use for both `eastmoneyUrl` and `tencentUrl`. */
  readonly url: string;
  /** Requests received so far, both APIs. */
  readonly calls: number;
  /** Every request received, in order. */
  readonly requests: readonly FakeRequest[];
  /** Requests received for `code`, optionally for one API only. */
  callsFor(code: string, api?: FakeApi): number;
  /** Adds a failure rule. */
  fail(failure: FakeFailure): void;
  /** Removes every failure rule and the `failMode`. */
  clearFailures(): void;
  /** Bans `identity` now: its requests fail in `mode` (default `reset`) until unbanned. */
  ban(identity: string, mode?: FakeFailMode): void;
  /** Lifts the ban of `identity` and restarts its `banAfter` count. */
  unban(identity: string): void;
  /** Requests received from `identity`. */
  callsFrom(identity: string): number;
  /** Closes open connections and the listener. */
  close(): Promise<void>;
  /** Same as `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Starts the fake on 127.0.0.1, on a free port. */
export function startFakeEastmoney(
  options: FakeEastmoneyOptions = {},
): Promise<FakeEastmoney> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const url = `http://127.0.0.1:${listener.addr.port}`;
  const shutdown = new AbortController();
  const conns = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  const requests: FakeRequest[] = [];
  let rules: { rule: FakeFailure; left: number }[] = [];
  let failMode = options.failMode;
  for (const rule of options.failures ?? []) addRule(rule);
  const identityHeader = options.identityHeader ?? "x-fake-identity";
  const bans = new Map<string, FakeFailMode>();
  const counts = new Map<string, number>();

  function addRule(rule: FakeFailure): void {
    rules.push({ rule, left: rule.times ?? Infinity });
  }

  function failureFor(
    request: FakeRequest,
  ): { mode: FakeFailMode; retryAfter?: string } | undefined {
    const hooked = options.hook?.(request);
    if (hooked !== undefined) return { mode: hooked };
    const banned = bans.get(request.identity);
    if (banned !== undefined) return { mode: banned };
    const count = (counts.get(request.identity) ?? 0) + 1;
    counts.set(request.identity, count);
    if (options.banAfter !== undefined && count > options.banAfter.requests) {
      const mode = options.banAfter.mode ?? "reset";
      bans.set(request.identity, mode);
      return { mode };
    }
    for (const entry of rules) {
      const { rule } = entry;
      if (entry.left <= 0) continue;
      if (rule.api !== undefined && rule.api !== request.api) continue;
      if (rule.identity !== undefined && rule.identity !== request.identity) {
        continue;
      }
      if (rule.codes !== undefined && !rule.codes.includes(request.code)) {
        continue;
      }
      entry.left--;
      return { mode: rule.mode, retryAfter: rule.retryAfter };
    }
    return failMode === undefined ? undefined : { mode: failMode };
  }

  async function handle(conn: Deno.Conn): Promise<void> {
    try {
      const head = await readHead(conn);
      if (head === undefined) return;
      const [startLine, ...headerLines] = head.split("\r\n");
      const target = /^GET (\S+) HTTP\/1\.[01]$/.exec(startLine);
      const headers = new Headers();
      for (const line of headerLines) {
        const at = line.indexOf(":");
        if (at > 0) {
          headers.append(line.slice(0, at).trim(), line.slice(at + 1).trim());
        }
      }
      if (options.latencyMs) await delay(options.latencyMs, shutdown.signal);
      if (target === null) {
        return await writeResponse(conn, 405, "text/plain", "Only GET");
      }
      const requestUrl = new URL(target[1], url);
      const api: FakeApi | undefined =
        requestUrl.pathname === "/api/qt/stock/kline/get"
          ? "eastmoney"
          : /^(\/ifzqgtimg)?\/appstock\/app\/(new)?fqkline\/get$/.test(
              requestUrl.pathname,
            )
          ? "tencent"
          : requestUrl.pathname === "/api/qt/clist/get"
          ? "list"
          : undefined;
      if (api === undefined) {
        return await writeResponse(conn, 404, "text/plain", "Not found");
      }
      const code = api === "eastmoney"
        ? (requestUrl.searchParams.get("secid") ?? "").split(".")[1] ?? ""
        : api === "tencent"
        ? (requestUrl.searchParams.get("param") ?? "").slice(2, 8)
        : "";
      const request: FakeRequest = {
        api,
        code,
        url: requestUrl,
        headers,
        identity: headers.get(identityHeader) ?? "",
      };
      requests.push(request);
      const failure = failureFor(request);
      const mode = failure?.mode;
      if (mode === "reset") return; // closing without a byte is what a banning host does
      if (mode === "http503" || mode === "http429") {
        return await writeResponse(
          conn,
          mode === "http503" ? 503 : 429,
          "text/plain",
          "busy",
          failure?.retryAfter === undefined
            ? {}
            : { "Retry-After": failure.retryAfter },
        );
      }
      if (mode === "html") {
        return await writeResponse(
          conn,
          200,
          "text/html",
          "<html><body>验证</body></html>",
        );
      }
      const body = api === "eastmoney"
        ? eastmoneyAnswer(requestUrl, mode, options)
        : api === "tencent"
        ? tencentAnswer(requestUrl, mode, options)
        : listAnswer(requestUrl, mode, options);
      await writeResponse(
        conn,
        200,
        "application/json; charset=utf-8",
        JSON.stringify(body),
      );
    } catch {
      // The client went away or the server is closing: nothing to answer.
    } finally {
      try {
        conn.close();
      } catch {
        // already closed
      }
    }
  }

  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        conns.add(conn);
        const task: Promise<void> = handle(conn).finally(() => {
          conns.delete(conn);
          tasks.delete(task);
        });
        tasks.add(task);
      }
    } catch {
      // listener closed
    }
  })();

  let closing: Promise<void> | undefined;
  function close(): Promise<void> {
    closing ??= (async () => {
      shutdown.abort();
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch {
          // already closed
        }
      }
      await accepting;
      await Promise.all(tasks);
    })();
    return closing;
  }

  return Promise.resolve({
    url,
    get calls() {
      return requests.length;
    },
    requests,
    callsFor: (code: string, api?: FakeApi) =>
      requests.filter((r) =>
        r.code === code && (api === undefined || r.api === api)
      ).length,
    fail: addRule,
    clearFailures: () => {
      rules = [];
      failMode = undefined;
    },
    ban: (identity: string, mode: FakeFailMode = "reset") => {
      bans.set(identity, mode);
    },
    unban: (identity: string) => {
      bans.delete(identity);
      counts.delete(identity);
    },
    callsFrom: (identity: string) =>
      requests.filter((r) => r.identity === identity).length,
    close,
    [Symbol.asyncDispose]: close,
  });
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing

async function readHead(conn: Deno.Conn): Promise<string | undefined> {
  const buffer = new Uint8Array(16_384);
  let text = "";
  while (!text.includes("\r\n\r\n")) {
    const n = await conn.read(buffer);
    if (n === null) return undefined;
    text += new TextDecoder().decode(buffer.subarray(0, n));
    if (text.length > 65_536) return undefined;
  }
  return text.slice(0, text.indexOf("\r\n\r\n"));
}

async function writeResponse(
  conn: Deno.Conn,
  status: number,
  contentType: string,
  body: string,
  extraHeaders: Record<string, string> = {},
): Promise<void> {
  const payload = new TextEncoder().encode(body);
  const reason = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    503: "Service Unavailable",
  }[status] ?? "Status";
  const head = new TextEncoder().encode(
    `HTTP/1.1 ${status} ${reason}\r\nContent-Type: ${contentType}\r\n` +
      Object.entries(extraHeaders).map(([k, v]) => `${k}: ${v}\r\n`).join("") +
      `Content-Length: ${payload.length}\r\nConnection: close\r\n\r\n`,
  );
  const all = new Uint8Array(head.length + payload.length);
  all.set(head);
  all.set(payload, head.length);
  let written = 0;
  while (written < all.length) {
    written += await conn.write(all.subarray(written));
  }
}

function delay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

// ---------------------------------------------------------------------------------------------
// Data

/** A daily row as the fake holds it; optional fields are unknown. */
interface Row {
  date: string;
  open: number;
  close: number;
  high: number;
  low: number;
  volume: number;
  amount: number;
  amplitude?: number;
  pct?: number;
  change?: number;
  turnover?: number;
}

/** A series: rows plus the close before the first row (Eastmoney's `preKPrice`). */
interface FakeSeries {
  name: string;
  decimal: number;
  preK: number;
  rows: Row[];
}

const FIXTURE_NAMES: Record<string, string> = {
  "1.510300": "沪深300ETF华泰柏瑞",
  "0.159915": "创业板ETF易方达",
};
const seriesCache = new Map<string, FakeSeries | null>();
const DEFAULT_INDEX_MARKETS: Record<string, number> = {
  "000859": 2,
  "000861": 2,
  "980017": 0,
};

/** The fake's daily series for a secid and `fqt`, or `undefined` for an unknown secid. */
function seriesFor(
  secid: string,
  fqt: number,
  options: FakeEastmoneyOptions,
): FakeSeries | undefined {
  const [market, code] = secid.split(".");
  if (!/^([012]|47)$/.test(market ?? "") || !/^\d{6}$/.test(code ?? "")) {
    return undefined;
  }
  if (options.unknownCodes?.includes(code)) return undefined;
  if (options.emptyCodes?.includes(code)) {
    return { name: `空证券${code}`, decimal: 3, preK: 1, rows: [] };
  }
  const only = (options.indexMarkets ?? DEFAULT_INDEX_MARKETS)[code];
  if (only !== undefined && String(only) !== market) return undefined;
  const cacheKey = `${secid}|${fqt}|${
    options.synthetic ? options.syntheticEnd ?? "" : "-"
  }|${JSON.stringify(options.indexMarkets ?? null)}`;
  if (!seriesCache.has(cacheKey)) {
    seriesCache.set(cacheKey, buildSeries(secid, fqt, options) ?? null);
  }
  return seriesCache.get(cacheKey) ?? undefined;
}

function buildSeries(
  secid: string,
  fqt: number,
  options: FakeEastmoneyOptions,
): FakeSeries | undefined {
  if (secid in FIXTURE_NAMES && fixturesAvailable()) {
    return fixtureSeries(secid, fqt);
  }
  if (!options.synthetic) return undefined;
  const only =
    (options.indexMarkets ?? DEFAULT_INDEX_MARKETS)[secid.split(".")[1]];
  if (only === undefined && !plausible(secid)) return undefined;
  return syntheticSeries(secid, options.syntheticEnd ?? "2026-03-20");
}

/** Whether an exchange uses `code` under that market number (so `0.510300` is not). */
function plausible(secid: string): boolean {
  const [market, code] = secid.split(".");
  if (market === "1") return /^[569]|^000/.test(code);
  if (market === "0") return /^[0-48]|^92|^399/.test(code);
  return /^9[35]/.test(code);
}

function fixtureSeries(secid: string, fqt: number): FakeSeries {
  const name = FIXTURE_NAMES[secid];
  if (secid === "0.159915") {
    // 159915 has paid no dividends: every adjustment equals the raw prices.
    const rows = readFixture("etf_159915_daily_qfq.csv");
    return withDerived({ name, decimal: 3, preK: rows[0].open, rows });
  }
  const none = readFixture("etf_510300_daily_none_11cols.csv");
  const nonePreK = round(none[0].close - none[0].change!, 3);
  if (fqt === 0) return { name, decimal: 3, preK: nonePreK, rows: none };
  const qfq = readFixture("etf_510300_daily_qfq.csv");
  const turnover = new Map(none.map((r) => [r.date, r.turnover]));
  // qfq subtracts the later dividends; hfq adds the earlier ones, i.e. qfq + all dividends.
  const offset = fqt === 2 ? round(none[0].close - qfq[0].close, 3) : 0;
  const rows = qfq.map((r) => ({
    ...r,
    open: round(r.open + offset, 3),
    close: round(r.close + offset, 3),
    high: round(r.high + offset, 3),
    low: round(r.low + offset, 3),
    turnover: turnover.get(r.date),
  }));
  const preK = round(nonePreK - (none[0].close - qfq[0].close) + offset, 3);
  return withDerived({ name, decimal: 3, preK, rows });
}

/** Fills amplitude, pct and change from the previous close, as Eastmoney computes them. */
function withDerived(series: FakeSeries): FakeSeries {
  let previous = series.preK;
  for (const row of series.rows) {
    row.amplitude = round((row.high - row.low) / previous * 100, 2);
    row.pct = round((row.close - previous) / previous * 100, 2);
    row.change = round(row.close - previous, series.decimal);
    previous = row.close;
  }
  return series;
}

function readFixture(file: string): Row[] {
  const lines = Deno.readTextFileSync(new URL(file, FIXTURES_DIR)).trim().split(
    /\r?\n/,
  );
  const eleven = lines[0].startsWith("日期");
  return lines.slice(1).map((line) => {
    const c = line.split(",");
    const row: Row = {
      date: c[0],
      open: +c[1],
      close: +c[2],
      high: +c[3],
      low: +c[4],
      volume: +c[5],
      amount: +c[6],
    };
    if (eleven) {
      row.amplitude = +c[7];
      row.pct = +c[8];
      row.change = +c[9];
      row.turnover = +c[10];
    }
    return row;
  });
}

function syntheticSeries(secid: string, end: string): FakeSeries {
  const code = secid.slice(2);
  const decimal = /^[15]/.test(code) && secid !== "1.000001" ? 3 : 2;
  let seed = 2166136261;
  for (const ch of secid) {
    seed = Math.imul(seed ^ ch.charCodeAt(0), 16777619) >>> 0;
  }
  const random = () => {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    return seed / 4294967296;
  };
  let previous = round(
    decimal === 3 ? 1 + random() * 3 : 5 + random() * 50,
    decimal,
  );
  const preK = previous;
  const rows: Row[] = [];
  for (let t = Date.UTC(2015, 0, 5); t <= Date.parse(end); t += 86_400_000) {
    const weekday = new Date(t).getUTCDay();
    if (weekday === 0 || weekday === 6) continue;
    const open = round(previous * (1 + (random() - 0.5) * 0.01), decimal);
    const close = round(previous * (1 + (random() - 0.5) * 0.04), decimal);
    const high = round(Math.max(open, close) * (1 + random() * 0.01), decimal);
    const low = round(Math.min(open, close) * (1 - random() * 0.01), decimal);
    const volume = Math.round(50_000 + random() * 2_000_000);
    rows.push({
      date: new Date(t).toISOString().slice(0, 10),
      open,
      close,
      high,
      low,
      volume,
      amount: round(volume * 100 * (open + close) / 2, 0),
      turnover: round(random() * 3, 2),
    });
    previous = close;
  }
  return withDerived({ name: `合成证券${code}`, decimal, preK, rows });
}

/** Eastmoney's minute `klt` values. */
const MINUTES = new Set(["1", "5", "15", "30", "60"]);

/**
 * Trading days of minute bars the fake keeps, as Eastmoney keeps only a recent window: 5 days of
 * 1-minute bars (as akshare documents), and (the fake's own choice) 20 days of the others.
 */
export const FAKE_MINUTE_DAYS: Readonly<Record<number, number>> = {
  1: 5,
  5: 20,
  15: 20,
  30: 20,
  60: 20,
};

/** Session end times (Shanghai) of `minutes`-long bars: 09:30–11:30 and 13:00–15:00. */
function sessionTimes(minutes: number): string[] {
  const times: string[] = [];
  for (const [from, to] of [[570, 690], [780, 900]]) {
    for (let t = from + minutes; t <= to; t += minutes) {
      times.push(
        `${String(Math.floor(t / 60)).padStart(2, "0")}:${
          String(t % 60).padStart(2, "0")
        }`,
      );
    }
  }
  return times;
}

/** Minute rows made up from the last days' daily rows: a straight walk from open to close. */
function minuteSeries(daily: FakeSeries, minutes: number): FakeSeries {
  const times = sessionTimes(minutes);
  const days = daily.rows.slice(-FAKE_MINUTE_DAYS[minutes]);
  const rows: Row[] = [];
  const d = daily.decimal;
  for (const day of days) {
    const n = times.length;
    const volume = Math.max(1, Math.floor(day.volume / n));
    times.forEach((time, i) => {
      const open = round(day.open + (day.close - day.open) * i / n, d);
      const close = round(day.open + (day.close - day.open) * (i + 1) / n, d);
      rows.push({
        date: `${day.date} ${time}`,
        open,
        close,
        high: i === 0 ? day.high : Math.max(open, close),
        low: i === n - 1 ? day.low : Math.min(open, close),
        volume,
        amount: round(volume * 100 * (open + close) / 2, 0),
      });
    });
  }
  return withDerived({ ...daily, preK: days[0]?.open ?? daily.preK, rows });
}

/** Weekly (ISO weeks) or monthly rows from daily ones, dated by the last trading day. */
function aggregate(series: FakeSeries, unit: "week" | "month"): FakeSeries {
  const keyOf = (date: string) => {
    if (unit === "month") return date.slice(0, 7);
    const day = Date.parse(date) / 86_400_000;
    const monday = day - (new Date(date).getUTCDay() + 6) % 7;
    return String(monday);
  };
  const groups = new Map<string, Row[]>();
  for (const row of series.rows) {
    const key = keyOf(row.date);
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)!.push(row);
  }
  const rows = [...groups.values()].map((g): Row => ({
    date: g[g.length - 1].date,
    open: g[0].open,
    close: g[g.length - 1].close,
    high: Math.max(...g.map((r) => r.high)),
    low: Math.min(...g.map((r) => r.low)),
    volume: g.reduce((s, r) => s + r.volume, 0),
    amount: g.reduce((s, r) => s + r.amount, 0),
    turnover: g.every((r) => r.turnover !== undefined)
      ? g.reduce((s, r) => s + r.turnover!, 0)
      : undefined,
  }));
  return withDerived({ ...series, rows });
}

function eastmoneyAnswer(
  requestUrl: URL,
  mode: FakeFailMode | undefined,
  options: FakeEastmoneyOptions,
): unknown {
  const q = requestUrl.searchParams;
  const secid = q.get("secid") ?? "";
  const envelope = { rc: 0, rt: 17, svr: 181669, lt: 1, full: 0, dlmkts: "" };
  const daily = mode === "null"
    ? undefined
    : seriesFor(secid, Number(q.get("fqt") ?? 0), options);
  if (daily === undefined) return { ...envelope, data: null };
  const klt = q.get("klt") ?? "101";
  const series = klt === "102"
    ? aggregate(daily, "week")
    : klt === "103"
    ? aggregate(daily, "month")
    : MINUTES.has(klt)
    ? minuteSeries(daily, Number(klt))
    : daily;
  const beg = dateParam(q.get("beg"), "0000-00-00");
  // An end date covers the whole day, minute bars included.
  const end = `${dateParam(q.get("end"), "9999-99-99")} 99:99`;
  const first = series.rows.findIndex((r) => r.date >= beg);
  const rows = first < 0
    ? []
    : series.rows.slice(first).filter((r) => r.date <= end);
  const preK = first > 0 ? series.rows[first - 1].close : series.preK;
  const d = series.decimal;
  const served = mode === "truncated"
    ? rows.slice(Math.floor(rows.length / 2))
    : rows;
  const klines = mode === "empty" ? [] : served.map((r) =>
    [
      r.date,
      r.open.toFixed(d),
      r.close.toFixed(d),
      r.high.toFixed(d),
      r.low.toFixed(d),
      String(Math.round(r.volume)),
      r.amount.toFixed(d),
      r.amplitude?.toFixed(2) ?? "-",
      r.pct?.toFixed(2) ?? "-",
      r.change?.toFixed(d) ?? "-",
      r.turnover?.toFixed(2) ?? "-",
    ].join(",")
  );
  const [market, code] = secid.split(".");
  return {
    ...envelope,
    data: {
      code,
      market: Number(market),
      name: series.name,
      decimal: d,
      dktotal: series.rows.length,
      preKPrice: Number(preK.toFixed(d)),
      klines,
    },
  };
}

function tencentAnswer(
  requestUrl: URL,
  mode: FakeFailMode | undefined,
  options: FakeEastmoneyOptions,
): unknown {
  const [
    symbol = "",
    unit = "day",
    start = "",
    end = "",
    count = "640",
    fq = "",
  ] = (requestUrl.searchParams.get("param") ?? "").split(",");
  const market = symbol.startsWith("sh")
    ? "1"
    : /^(sz|bj)/.test(symbol)
    ? "0"
    : "";
  const fqt = fq === "qfq" ? 1 : fq === "hfq" ? 2 : 0;
  // Tencent counts STAR Market stocks and indexes in shares, the rest in lots.
  const inShares = /^sh(688|000)|^sz(399|98)|^bj899/.test(symbol);
  const daily = mode === "null"
    ? undefined
    : seriesFor(`${market}.${symbol.slice(2)}`, fqt, options);
  if (daily === undefined) return { code: 0, msg: "", data: {} };
  const series = unit === "week"
    ? aggregate(daily, "week")
    : unit === "month"
    ? aggregate(daily, "month")
    : daily;
  const d = series.decimal;
  const rows = mode === "empty" || mode === "truncated"
    ? []
    : series.rows.filter((r) =>
      (!start || r.date >= start) && (!end || r.date <= end)
    )
      .slice(-Number(count))
      .map((r) => [
        r.date,
        r.open.toFixed(d),
        r.close.toFixed(d),
        r.high.toFixed(d),
        r.low.toFixed(d),
        (r.volume * (inShares ? 100 : 1)).toFixed(3),
        {},
        r.turnover?.toFixed(2) ?? "",
        (r.amount / 10_000).toFixed(4),
      ]);
  const last = series.rows[series.rows.length - 1];
  return {
    code: 0,
    msg: "",
    data: {
      [symbol]: {
        [`${fq}${unit}`]: rows,
        qt: {
          [symbol]: [
            "1",
            series.name,
            symbol.slice(2),
            last?.close.toFixed(d) ?? "0.000",
          ],
        },
        version: "17",
      },
    },
  };
}

/** One listed symbol of the fake's universe. */
export interface FakeListing {
  /** Six-digit code. */
  code: string;
  /** Name. */
  name: string;
  /** Eastmoney market number (`f13`). */
  market: number;
}

/** The fake's universe per kind: the fixtures, some indexes, and made-up symbols to page. */
export function fakeListings(): Record<
  "etf" | "stock" | "index",
  FakeListing[]
> {
  const etf: FakeListing[] = [
    { code: "510300", name: FIXTURE_NAMES["1.510300"], market: 1 },
    { code: "159915", name: FIXTURE_NAMES["0.159915"], market: 0 },
  ];
  for (let i = 1; i <= 118; i++) {
    const code = String(510300 + i * 5);
    etf.push({ code, name: `合成ETF${code}`, market: 1 });
    const sz = String(159000 + i * 7);
    etf.push({ code: sz, name: `合成ETF${sz}`, market: 0 });
  }
  const stock: FakeListing[] = [];
  for (let i = 0; i < 130; i++) {
    const sh = String(600000 + i * 3);
    const sz = String(1 + i * 3).padStart(6, "0");
    stock.push({ code: sh, name: `合成股份${sh}`, market: 1 });
    stock.push({ code: sz, name: `合成股份${sz}`, market: 0 });
  }
  const index: FakeListing[] = [
    { code: "000300", name: "沪深300", market: 1 },
    { code: "000001", name: "上证指数", market: 1 },
    { code: "399006", name: "创业板指", market: 0 },
    { code: "000859", name: "国企一带一路", market: 2 },
    { code: "930050", name: "中证A50", market: 2 },
    { code: "980017", name: "国证芯片", market: 0 },
  ];
  return { etf, stock, index };
}

/** akshare's `fs` filter of the Eastmoney list API per kind, as the client sends it. */
export const LIST_FILTERS: Readonly<Record<"etf" | "stock" | "index", string>> =
  {
    etf: "b:MK0021,b:MK0022,b:MK0023,b:MK0024,b:MK0827",
    stock: "m:0 t:6,m:0 t:80,m:1 t:2,m:1 t:23,m:0 t:81 s:2048",
    index: "b:MK0010,m:1+t:1,m:0 t:5,m:1+s:3,m:0+t:5,m:2",
  };

function listAnswer(
  requestUrl: URL,
  mode: FakeFailMode | undefined,
  options: FakeEastmoneyOptions,
): unknown {
  const q = requestUrl.searchParams;
  const kind = (Object.keys(LIST_FILTERS) as ("etf" | "stock" | "index")[])
    .find((k) => LIST_FILTERS[k] === q.get("fs"));
  if (kind === undefined) return { rc: 0, rt: 6, data: null };
  const all = (options.listings ?? fakeListings())[kind];
  // Eastmoney caps a page at 100 rows whatever pz asks for.
  const size = Math.min(100, Math.max(1, Number(q.get("pz") ?? 20)));
  const page = Math.max(1, Number(q.get("pn") ?? 1));
  const rows = mode === "empty"
    ? []
    : all.slice((page - 1) * size, page * size);
  return listPageAnswer(
    all.length,
    rows.map((r) => ({ f12: r.code, f13: r.market, f14: r.name })),
  );
}

/** Eastmoney's list API answer: one page of rows (`diff`) and the whole list's length. */
export function listPageAnswer(total: number, diff: unknown[]): unknown {
  return {
    rc: 0,
    rt: 6,
    svr: 181669,
    lt: 1,
    full: 1,
    dlmkts: "",
    data: { total, diff },
  };
}

/** `YYYYMMDD` (or `0`) to `YYYY-MM-DD`. */
function dateParam(text: string | null, fallback: string): string {
  if (text === null || !/^\d{8}$/.test(text)) return fallback;
  return `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6, 8)}`;
}

function round(value: number, digits: number): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}

// ---------------------------------------------------------------------------------------------
// A clock for tests

/** A manual clock: `sleep()` moves time forward at once and records the delay. */
export interface ManualClock {
  /** Current time, epoch ms; tests may set it. */
  time: number;
  /** Every delay asked of `sleep()`, in order. */
  readonly sleeps: number[];
  /** Epoch ms. */
  now(): number;
  /** Advances time by `ms` and resolves on the next microtask; honours `signal`. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  /** Moves time forward by `ms`. */
  advance(ms: number): void;
}

/** Creates a {@linkcode ManualClock} starting at `start` (ISO text or epoch ms). */
export function manualClock(
  start: string | number = "2026-03-23T08:00:00Z",
): ManualClock {
  const clock: ManualClock = {
    time: typeof start === "number" ? start : Date.parse(start),
    sleeps: [],
    now: () => clock.time,
    sleep: async (ms, signal) => {
      if (signal?.aborted) throw signal.reason;
      clock.sleeps.push(ms);
      clock.time += Math.max(0, ms);
      await Promise.resolve();
    },
    advance: (ms) => {
      clock.time += ms;
    },
  };
  return clock;
}
