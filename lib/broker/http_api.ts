/**
 * The HTTP API on the requester port, for tools that do not speak WebSocket (curl, pandas,
 * spreadsheets):
 *
 * - `GET /v1/market?symbol_type=etf&code=510300&start_date=…&adjust=qfq&format=csv|json` runs one
 *   `get_market`; `format=csv` gives a table `pandas.read_csv(url)` reads as it is.
 * - `POST /v1/request` takes the requester JSON and gives the same answer as the WebSocket API;
 *   with `"stream": true` (or `?format=ndjson`) a `get_markets` batch comes back as JSON lines,
 *   one per finished item, then the final answer.
 * - `POST /v1/markets?format=ndjson|csv` takes a batch's list of market params and streams the
 *   items as JSON lines, or all bars as one CSV table with the item's `code` first.
 *
 * Each HTTP request runs exactly as a frame on a WebSocket connection of its own would: the same
 * parser, limits, deadlines, errors and texts. The HTTP status says how it went (400 bad input,
 * 401 token, 404 unknown code, 413 too large, 429 too many in flight, 503 no workers or busy,
 * 504 timeout, 502 worker or upstream failure); the body is the requester answer, and says
 * `success: true` exactly when the status is 2xx.
 *
 * @module
 */

import { ErrorCode } from "../errors.ts";
import { BAR_FIELDS } from "../market/types.ts";

/** What the HTTP API needs of the requester port. */
export interface RequestRunner {
  /**
   * Runs one requester frame (JSON text) as a connection of its own; `onFrame` sees its progress
   * and item frames; resolves with its answer. Aborting `signal` cancels the request.
   */
  run(raw: string, options: RunOptions): Promise<Record<string, unknown>>;
  /** Largest frame, in characters. */
  readonly maxFrameBytes: number;
}

/** Options for {@linkcode RequestRunner.run}. */
export interface RunOptions {
  /** Cancels the request. */
  signal?: AbortSignal;
  /** `host:port` of the HTTP client, for logs. */
  address: string;
  onFrame?: (frame: Record<string, unknown>) => void;
  /** Whether the caller has room for more frames now; a streamed batch waits while it has not. */
  ready?: () => boolean;
}

/** The `get_market` params `GET /v1/market` passes on from its query. */
export const MARKET_QUERY_PARAMS: readonly string[] = [
  "symbol_type",
  "code",
  "period",
  "start_date",
  "end_date",
  "adjust",
];

const CSV_TYPE = "text/csv; charset=utf-8";
const JSON_TYPE = "application/json; charset=utf-8";
const NDJSON_TYPE = "application/x-ndjson; charset=utf-8";

/** The HTTP status for a wire error code (of the answer, or of a market item). */
export function httpStatus(code: unknown): number {
  switch (code) {
    case ErrorCode.INVALID_JSON:
    case ErrorCode.INVALID_FRAME:
    case ErrorCode.INVALID_FIELD:
    case ErrorCode.INVALID_DATA:
    case ErrorCode.BINARY_FRAME:
    case ErrorCode.BATCH_TOO_LARGE:
    case ErrorCode.DUPLICATE_REQUEST_ID:
    case "INVALID_PARAMS":
      return 400;
    case ErrorCode.UNAUTHORIZED:
      return 401;
    case "UNKNOWN_CODE":
      return 404;
    case ErrorCode.FRAME_TOO_LARGE:
      return 413;
    case ErrorCode.TOO_MANY_IN_FLIGHT:
      return 429;
    case ErrorCode.NO_WORKERS:
    case ErrorCode.UNKNOWN_COMMAND:
    case ErrorCode.BUSY:
    case ErrorCode.SHUTTING_DOWN:
      return 503;
    case ErrorCode.TIMEOUT:
      return 504;
    case "INTERNAL_ERROR":
      return 500;
    default:
      return 502;
  }
}

function jsonResponse(body: unknown, status: number): Response {
  return new Response(JSON.stringify(body) + "\n", {
    status,
    headers: { "content-type": JSON_TYPE },
  });
}

function failure(
  status: number,
  code: string,
  error: string,
  requestId: string | null = null,
): Response {
  return jsonResponse({
    request_id: requestId,
    success: false,
    data: null,
    error,
    error_code: code,
  }, status);
}

/**
 * The answer as the HTTP API sends it, with its status; the two always agree: 2xx exactly when
 * the body says `success: true`. An answer that succeeded around a failed result (`data.success`
 * false: a `get_market` item, or any action that answers so) takes the result's code and error as
 * its own, keeping `data` as it is. A batch's answer is 200 whenever the batch ran: its items
 * carry their own `success`, and its `summary` counts the failed ones.
 */
export function httpAnswer(
  answer: Record<string, unknown>,
): { status: number; body: Record<string, unknown> } {
  if (answer.success !== true) {
    return { status: httpStatus(answer.error_code), body: answer };
  }
  const data = answer.data as
    | { success?: unknown; error?: unknown; error_code?: unknown }
    | null;
  if (typeof data === "object" && data !== null && data.success === false) {
    return {
      status: httpStatus(data.error_code),
      body: {
        ...answer,
        success: false,
        error: data.error ?? "Failed without an error message",
        error_code: data.error_code ?? ErrorCode.WORKER_ERROR,
      },
    };
  }
  return { status: 200, body: answer };
}

function answerResponse(answer: Record<string, unknown>): Response {
  const { status, body } = httpAnswer(answer);
  return jsonResponse(body, status);
}

// ---- CSV -------------------------------------------------------------------------------------

const BAR_COLUMNS: readonly string[] = BAR_FIELDS.slice(0, 6);

function csvCell(value: unknown): string {
  if (value === null || value === undefined) return "";
  const text = typeof value === "object"
    ? JSON.stringify(value)
    : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/**
 * Columns for bars: the usual six first, then the optional fields the first bar has, in
 * `BAR_FIELDS`' order (the one order of every writer), then any others in the bar's own order.
 */
export function barColumns(bars: readonly unknown[]): string[] {
  const first = bars.find((b) => typeof b === "object" && b !== null) as
    | Record<string, unknown>
    | undefined;
  if (!first) return [...BAR_COLUMNS];
  const known = BAR_FIELDS.filter((k) =>
    BAR_COLUMNS.includes(k) || Object.hasOwn(first, k)
  );
  const other = Object.keys(first).filter((k) =>
    !(BAR_FIELDS as readonly string[]).includes(k)
  );
  return [...known, ...other];
}

/** CSV lines (with `\n`) for bars under `columns`, each prefixed by `prefix` cells. */
export function csvRows(
  bars: readonly unknown[],
  columns: readonly string[],
  prefix: readonly unknown[] = [],
): string {
  let out = "";
  for (const bar of bars) {
    if (typeof bar !== "object" || bar === null) continue;
    const b = bar as Record<string, unknown>;
    const cells = [...prefix, ...columns.map((c) => b[c])];
    out += cells.map(csvCell).join(",") + "\n";
  }
  return out;
}

// ---- request bodies --------------------------------------------------------------------------

class TooLarge extends Error {}

/** The connection ended before the body did (the client left, or the guard's body timeout). */
class BodyLost extends Error {}

async function readBody(req: Request, max: number): Promise<string> {
  const declared = Number(req.headers.get("content-length"));
  if (Number.isFinite(declared) && declared > max) throw new TooLarge();
  if (!req.body) return "";
  const decoder = new TextDecoder();
  let text = "";
  let bytes = 0;
  try {
    for await (const chunk of req.body) {
      // The limit is in bytes, as on a WebSocket.
      bytes += chunk.length;
      if (bytes > max) throw new TooLarge();
      text += decoder.decode(chunk, { stream: true });
    }
  } catch (error) {
    if (error instanceof TooLarge) throw error;
    throw new BodyLost("Request body lost", { cause: error });
  }
  return text + decoder.decode();
}

// ---- streaming -------------------------------------------------------------------------------

/** Bytes a streamed response may hold unread before its batch stops starting items. */
const STREAM_HIGH_WATER = 1024 * 1024;

/** Writes lines to a response body as they come; ends when `end()` is called. */
class LineStream {
  readonly body: ReadableStream<Uint8Array>;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #encoder = new TextEncoder();
  #closed = false;

  constructor(onCancel: () => void) {
    this.body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#controller = controller;
      },
      cancel: () => {
        this.#closed = true;
        onCancel();
      },
    }, {
      highWaterMark: STREAM_HIGH_WATER,
      size: (chunk) => chunk.byteLength,
    });
  }

  /** Whether the client has read most of what was written. */
  ready(): boolean {
    return this.#closed || (this.#controller.desiredSize ?? 1) > 0;
  }

  write(text: string): void {
    if (this.#closed || text === "") return;
    this.#controller.enqueue(this.#encoder.encode(text));
  }

  end(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#controller.close();
  }
}

type Format = "json" | "csv" | "ndjson";

/** `url`'s `format` parameter: one of `accepted`, `fallback` when absent, or a 400 answer. */
function readFormat(
  url: URL,
  accepted: readonly Format[],
  fallback: Format,
): Format | Response {
  const value = url.searchParams.get("format");
  if (value === null || value === "") return fallback;
  if ((accepted as readonly string[]).includes(value)) return value as Format;
  return failure(
    400,
    ErrorCode.INVALID_FIELD,
    `Invalid format '${value}': expected ${accepted.join(" or ")}`,
  );
}

/** Whether a request frame asks to be streamed (`stream: true`). */
function asksStream(raw: string): boolean {
  try {
    const frame = JSON.parse(raw);
    return typeof frame === "object" && frame !== null && frame.stream === true;
  } catch {
    // Not JSON: the runner refuses it with the WebSocket API's own message.
    return false;
  }
}

/** The HTTP API; see the module doc. */
export class HttpApi {
  #runner: RequestRunner;

  constructor(runner: RequestRunner) {
    this.#runner = runner;
  }

  /** Whether `path` belongs to the HTTP API. */
  static owns(path: string): boolean {
    return path === "/v1" || path.startsWith("/v1/");
  }

  /** Serves one HTTP API request; the caller has checked its token. */
  async handle(req: Request, address: string): Promise<Response> {
    const url = new URL(req.url);
    const route = `${req.method} ${url.pathname}`;
    try {
      switch (route) {
        case "GET /v1/market":
          return await this.#market(url, address);
        case "POST /v1/request":
          return await this.#request(req, url, address);
        case "POST /v1/markets":
          return await this.#markets(req, url, address);
      }
    } catch (error) {
      if (error instanceof TooLarge) {
        return failure(
          413,
          ErrorCode.FRAME_TOO_LARGE,
          `Request body too large (limit ${this.#runner.maxFrameBytes} bytes)`,
        );
      }
      // Nobody is left to read an answer; this one keeps it out of the error log.
      if (error instanceof BodyLost) {
        return new Response(
          "Request body lost: the connection closed before the body was complete\n",
          { status: 400, headers: { "content-type": "text/plain" } },
        );
      }
      throw error;
    }
    const known = ["/v1/market", "/v1/request", "/v1/markets"];
    if (known.includes(url.pathname)) {
      const allowed = url.pathname === "/v1/market" ? "GET" : "POST";
      return new Response(
        `Method ${req.method} not allowed on ${url.pathname}: use ${allowed}\n`,
        {
          status: 405,
          headers: { allow: allowed, "content-type": "text/plain" },
        },
      );
    }
    return new Response(
      `Not found: ${url.pathname}. The HTTP API offers GET /v1/market, ` +
        `POST /v1/request and POST /v1/markets\n`,
      { status: 404, headers: { "content-type": "text/plain" } },
    );
  }

  async #market(url: URL, address: string): Promise<Response> {
    const format = readFormat(url, ["json", "csv"], "json");
    if (format instanceof Response) return format;
    const data: Record<string, string> = {};
    for (const name of MARKET_QUERY_PARAMS) {
      const value = url.searchParams.get(name);
      if (value !== null) data[name] = value;
    }
    const frame: Record<string, unknown> = { command: "get_market", data };
    const timeout = url.searchParams.get("timeout");
    if (timeout !== null) {
      const seconds = Number(timeout);
      // Let the requester parser judge it, with its own message.
      frame.timeout = Number.isFinite(seconds) && timeout.trim() !== ""
        ? seconds
        : timeout;
    }
    const answer = await this.#runner.run(JSON.stringify(frame), {
      address,
    });
    if (httpAnswer(answer).status !== 200) return answerResponse(answer);
    const result = answer.data as { data?: unknown[]; code?: string };
    if (format === "json") return jsonResponse(result, 200);
    const bars = Array.isArray(result?.data) ? result.data : [];
    const columns = barColumns(bars);
    return new Response(columns.join(",") + "\n" + csvRows(bars, columns), {
      headers: {
        "content-type": CSV_TYPE,
        "content-disposition": `inline; filename="${
          String(result?.code ?? "market").replace(/[^\w.-]/g, "_")
        }.csv"`,
      },
    });
  }

  async #request(req: Request, url: URL, address: string): Promise<Response> {
    const format = readFormat(url, ["json", "ndjson"], "json");
    if (format instanceof Response) return format;
    const raw = await readBody(req, this.#runner.maxFrameBytes);
    if (format === "json" && !asksStream(raw)) {
      return answerResponse(await this.#runner.run(raw, { address }));
    }
    // JSON lines: every frame the WebSocket API would send, in order, the answer last.
    return this.#streamed(address, raw, "ndjson", format === "ndjson");
  }

  async #markets(req: Request, url: URL, address: string): Promise<Response> {
    const format = readFormat(url, ["ndjson", "csv"], "ndjson");
    if (format instanceof Response) return format;
    const raw = await readBody(req, this.#runner.maxFrameBytes);
    let data: unknown;
    try {
      data = JSON.parse(raw);
    } catch (error) {
      return failure(
        400,
        ErrorCode.INVALID_JSON,
        `Cannot parse body as JSON: ${(error as Error).message}`,
      );
    }
    const frame: Record<string, unknown> = {
      command: "get_markets",
      data,
      stream: true,
    };
    const timeout = Number(url.searchParams.get("timeout"));
    if (url.searchParams.has("timeout")) frame.timeout = timeout;
    return this.#streamed(
      address,
      JSON.stringify(frame),
      format as "ndjson" | "csv",
      true,
    );
  }

  /**
   * Runs a frame and streams what it sends. A batch's items go out as they finish when the
   * server streams them, else from the final answer's results; the HTTP status is set before the
   * first byte, so a failure that comes later is the last line (JSON lines) or ends the table.
   */
  async #streamed(
    address: string,
    raw: string,
    format: "ndjson" | "csv",
    forceStream: boolean,
  ): Promise<Response> {
    let text = raw;
    if (forceStream) {
      try {
        const frame = JSON.parse(raw);
        if (
          typeof frame === "object" && frame !== null && !Array.isArray(frame)
        ) {
          frame.stream = true;
          text = JSON.stringify(frame);
        }
      } catch {
        // Left as it is: the runner answers with the parse error.
      }
    }
    // A client that goes away cancels its body's stream, and so the request. (Deno's
    // `req.signal` is no help: it fires only once a response has been sent.)
    const cancel = new AbortController();
    const out = new LineStream(() => cancel.abort());
    let columns: string[] | undefined;
    const streamed = new Set<number>();
    const writeItem = (index: number, result: unknown) => {
      streamed.add(index);
      if (format === "ndjson") {
        out.write(JSON.stringify({ index, result }) + "\n");
        return;
      }
      const r = result as { success?: unknown; code?: unknown; data?: unknown };
      if (r?.success !== true || !Array.isArray(r.data)) return;
      if (!columns) {
        columns = barColumns(r.data);
        out.write(["code", ...columns].join(",") + "\n");
      }
      out.write(csvRows(r.data, columns, [r.code]));
    };
    // The first frame decides the status: a failure before anything streamed is a plain error.
    const first = Promise.withResolvers<Record<string, unknown> | null>();
    const done = this.#runner.run(text, {
      signal: cancel.signal,
      address,
      ready: () => out.ready(),
      onFrame: (frame) => {
        first.resolve(null);
        const item = frame.item as { index?: unknown; result?: unknown };
        if (item && Number.isInteger(item.index)) {
          writeItem(item.index as number, item.result);
        } else if (format === "ndjson") {
          out.write(JSON.stringify(frame) + "\n");
        }
      },
    }).then((answer) => {
      first.resolve(answer);
      return answer;
    });
    const early = await first.promise;
    if (early && httpAnswer(early).status !== 200) return answerResponse(early);
    void done.then((answer) => {
      const data = answer.data as { results?: unknown[] } | null;
      if (answer.success === true && Array.isArray(data?.results)) {
        data.results.forEach((result, index) => {
          if (!streamed.has(index)) writeItem(index, result);
        });
      }
      if (format === "ndjson") {
        const final = Array.isArray(data?.results)
          ? { ...answer, data: { ...data, results: undefined } }
          : answer;
        out.write(JSON.stringify(final) + "\n");
      } else if (!columns) {
        out.write(["code", ...BAR_COLUMNS].join(",") + "\n");
      }
      out.end();
    }, () => out.end());
    return new Response(out.body, {
      headers: {
        "content-type": format === "csv" ? CSV_TYPE : NDJSON_TYPE,
        "cache-control": "no-store",
      },
    });
  }
}
