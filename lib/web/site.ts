/**
 * What the requester port serves over plain HTTP besides `/health` and `/metrics`: the live
 * dashboard (`GET /`, its assets, and `GET /events`, a stream of snapshots as server-sent events)
 * and the HTTP API (`/v1/…`, see `http_api.ts`).
 *
 * All of it sits behind the requester token when one is set. Tools send it as
 * `Authorization: Bearer …`; a browser cannot, so it opens `/?token=…` once: the server answers
 * with a cookie holding the token (HttpOnly, SameSite=Strict) and a redirect to `/`, so the token
 * leaves the address bar and the page's own requests carry the cookie.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
// Puts the package in the module graph, so its files can be found (and are bundled by
// `deno compile`); the browser gets the standalone build from them, not from a CDN.
import "npm:lightweight-charts@5.2.1/package.json" with { type: "json" };
import page from "./dashboard.html" with { type: "text" };
import script from "./dashboard.js" with { type: "text" };
import { presentedToken } from "../broker/auth.ts";
import { remoteAddress } from "../broker/http.ts";
import { HttpApi, type RequestRunner } from "../broker/http_api.ts";
import { logger } from "../log.ts";
import { workerState } from "../broker/metrics.ts";
import type { WorkerInfo } from "../broker/registry.ts";
import type { BrokerCore } from "../broker/options.ts";
import { VERSION } from "../broker/options.ts";

const log = logger("web");

/** The cookie a browser keeps the requester token in. */
export const TOKEN_COOKIE = "switchyard_token";

/** Options for {@linkcode WebSite}. */
export interface WebSiteOptions {
  /** The requester token; none leaves the site open, like the requester port. */
  token?: string;
  /** Runs HTTP API requests (the requester port). */
  runner: RequestRunner;
  /** How often `/events` sends a snapshot, in ms. @default 1000 */
  intervalMs?: number;
  /** Seconds of history in a snapshot's timeline. @default 300 */
  timelineSeconds?: number;
}

/** A snapshot as `/events` sends it. */
export interface DashboardSnapshot {
  now: number;
  version: string;
  stats: ReturnType<BrokerCore["stats"]>;
  /** Answers so far, each batch item counted as one in place of its batch. */
  answers: ReturnType<BrokerCore["metrics"]["answers"]>;
  workers: (WorkerInfo & { state: string })[];
  batches: ReturnType<BrokerCore["metrics"]["batches"]>;
  errors: ReturnType<BrokerCore["metrics"]["recentErrors"]>;
  timeline: ReturnType<BrokerCore["metrics"]["timeline"]>;
}

function digest(text: string): Uint8Array {
  return createHash("sha256").update(text).digest();
}

function cookieToken(req: Request): string | undefined {
  const header = req.headers.get("cookie");
  if (!header) return undefined;
  for (const part of header.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === TOKEN_COOKIE) return decodeURIComponent(rest.join("="));
  }
  return undefined;
}

let chartsScript: Promise<string> | undefined;

/** The standalone build of lightweight-charts, read once from the npm package. */
function loadChartsScript(): Promise<string> {
  chartsScript ??= Deno.readTextFile(
    new URL(
      "dist/lightweight-charts.standalone.production.js",
      import.meta.resolve("npm:lightweight-charts@5.2.1/package.json"),
    ),
  );
  return chartsScript;
}

/**
 * The tab icon: a switch's two tracks. Browsers ask `/favicon.ico` of every site, also before
 * a token is presented, and it tells nothing: it is served to anyone, never refused.
 */
const FAVICON = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">` +
  `<rect width="32" height="32" rx="6" fill="#2962ff"/>` +
  `<path d="M6 24 L16 8 L26 24 M16 8 V24" stroke="#fff" stroke-width="3" ` +
  `fill="none" stroke-linecap="round" stroke-linejoin="round"/></svg>\n`;

const ASSETS: Record<string, () => Promise<string> | string> = {
  "/assets/dashboard.js": () => script,
  "/assets/lightweight-charts.js": loadChartsScript,
};

/** The requester port's web pages and HTTP API; see the module doc. */
export class WebSite {
  #core: BrokerCore;
  #token?: Uint8Array;
  #tokenText?: string;
  #api: HttpApi;
  #intervalMs: number;
  #timelineSeconds: number;
  /** Each open event stream: how to end it, how to send it a snapshot now. */
  #streams = new Map<() => void, () => void>();
  #unsubscribe: () => void;
  #pending: ReturnType<typeof setTimeout> | undefined;

  constructor(core: BrokerCore, options: WebSiteOptions) {
    this.#core = core;
    if (options.token) {
      this.#tokenText = options.token;
      this.#token = digest(options.token);
    }
    this.#api = new HttpApi(options.runner);
    this.#intervalMs = options.intervalMs ?? 1000;
    this.#timelineSeconds = options.timelineSeconds ?? 300;
    this.#unsubscribe = core.metrics.onChange(() => this.#nudge());
  }

  // A change reaches open dashboards within ~100 ms, however many changes come meanwhile.
  #nudge(): void {
    if (this.#pending !== undefined || this.#streams.size === 0) return;
    this.#pending = setTimeout(() => {
      this.#pending = undefined;
      for (const send of this.#streams.values()) send();
    }, 100);
  }

  /** The answer for a path of the site; undefined for any other request. */
  handle(
    req: Request,
    info?: Deno.ServeHandlerInfo,
  ): Response | Promise<Response> | undefined {
    if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
      return undefined;
    }
    const url = new URL(req.url);
    const path = url.pathname;
    if (path === "/favicon.ico" || path === "/favicon.svg") {
      return new Response(req.method === "HEAD" ? null : FAVICON, {
        headers: {
          "content-type": "image/svg+xml",
          "cache-control": "max-age=86400",
        },
      });
    }
    const api = HttpApi.owns(path);
    const dashboard = path === "/" || path === "/events" ||
      Object.hasOwn(ASSETS, path);
    if (!api && !dashboard) return undefined;
    const presented = presentedToken(req);
    const address = remoteAddress(info);
    const wait = this.#token ? this.#core.auth.retryAfter(address) : 0;
    if (wait > 0) {
      return new Response(
        `Too many failed tries: missing or invalid token; retry in ${wait} s\n`,
        { status: 429, headers: { "retry-after": String(wait) } },
      );
    }
    if (!this.#allowed(presented ?? cookieToken(req))) {
      // Counted and summed up in one log line per interval, never one line per try.
      this.#core.auth.failed(address);
      if (dashboard && req.method === "GET") return this.#login();
      return new Response(
        JSON.stringify({
          success: false,
          data: null,
          error: "Unauthorized: missing or invalid token",
          error_code: "UNAUTHORIZED",
        }) + "\n",
        {
          status: 401,
          headers: {
            "content-type": "application/json",
            "www-authenticate": "Bearer",
          },
        },
      );
    }
    if (api) {
      const addr = info?.remoteAddr as Deno.NetAddr | undefined;
      return this.#api.handle(
        req,
        addr ? `${addr.hostname}:${addr.port}` : "unknown",
      );
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response(`Method ${req.method} not allowed: use GET\n`, {
        status: 405,
        headers: { allow: "GET" },
      });
    }
    if (path === "/" && url.searchParams.has("token") && this.#tokenText) {
      // Swap the token in the address bar for a cookie.
      const secure = url.protocol === "https:" ? "; Secure" : "";
      return new Response(null, {
        status: 303,
        headers: {
          location: "/",
          "set-cookie": `${TOKEN_COOKIE}=${
            encodeURIComponent(this.#tokenText)
          }; Path=/; HttpOnly; SameSite=Strict${secure}`,
        },
      });
    }
    if (path === "/") {
      return new Response(page, {
        headers: {
          "content-type": "text/html; charset=utf-8",
          "cache-control": "no-store",
        },
      });
    }
    if (path === "/events") return this.#events();
    return this.#asset(path);
  }

  /** Ends every open event stream (the server is closing). */
  close(): void {
    this.#unsubscribe();
    clearTimeout(this.#pending);
    this.#pending = undefined;
    for (const end of [...this.#streams.keys()]) end();
    this.#streams.clear();
  }

  /** The state the dashboard draws. */
  snapshot(): DashboardSnapshot {
    const core = this.#core;
    return {
      now: core.clock.now(),
      version: VERSION,
      stats: core.stats(),
      answers: core.metrics.answers(),
      workers: core.dispatcher.registry.all().map((w) => ({
        ...w.info(),
        state: workerState(w),
      })),
      batches: core.metrics.batches(),
      errors: core.metrics.recentErrors(),
      timeline: core.metrics.timeline(this.#timelineSeconds),
    };
  }

  #allowed(presented: string | undefined): boolean {
    if (!this.#token) return true;
    if (presented === undefined) return false;
    return timingSafeEqual(digest(presented), this.#token);
  }

  #login(): Response {
    return new Response(
      `<!doctype html><meta charset="utf-8"><title>Switchyard: token needed</title>
<p>This dashboard needs the requester token. Open <code>/?token=&lt;requester token&gt;</code>
once: the server keeps the token in a cookie for this browser.</p>\n`,
      {
        status: 401,
        headers: {
          "content-type": "text/html; charset=utf-8",
          "www-authenticate": "Bearer",
        },
      },
    );
  }

  async #asset(path: string): Promise<Response> {
    try {
      const body = await ASSETS[path]();
      return new Response(body, {
        headers: {
          "content-type": "text/javascript; charset=utf-8",
          "cache-control": "no-cache",
        },
      });
    } catch (error) {
      log.error("Cannot serve {path}: {error}", { path, error });
      return new Response(`Cannot serve ${path}: ${error}\n`, { status: 500 });
    }
  }

  #events(): Response {
    const encoder = new TextEncoder();
    let timer: ReturnType<typeof setInterval> | undefined;
    let end = () => {};
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        const send = () => {
          const data = JSON.stringify(this.snapshot());
          try {
            controller.enqueue(
              encoder.encode(`event: snapshot\ndata: ${data}\n\n`),
            );
          } catch {
            end(); // the client is gone
          }
        };
        end = () => {
          clearInterval(timer);
          this.#streams.delete(end);
          try {
            controller.close();
          } catch {
            // Already closed by the client.
          }
        };
        this.#streams.set(end, send);
        // The browser reconnects after this long when the stream breaks.
        controller.enqueue(encoder.encode("retry: 1000\n\n"));
        send();
        timer = setInterval(send, this.#intervalMs);
      },
      cancel: () => end(),
    });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream",
        "cache-control": "no-store",
      },
    });
  }
}
