/**
 * Plain HTTP on both ports: `/health` (liveness), `/health/ready` (readiness: 503 while no
 * worker can serve), `/metrics`, a hint for browsers, and who may upgrade.
 *
 * @module
 */

import { authorized } from "./auth.ts";
import { logger } from "../log.ts";
import { Metrics } from "./metrics.ts";
import { type BrokerCore, VERSION } from "./options.ts";

const log = logger("broker");

/** The two ports, as `/health` names them. */
export type PortName = "worker" | "requester";

/** `host:port` of the peer, or "unknown". */
export function remoteAddress(info: Deno.ServeHandlerInfo | undefined): string {
  const addr = info?.remoteAddr as Deno.NetAddr | undefined;
  return addr?.hostname ? `${addr.hostname}:${addr.port}` : "unknown";
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

/** The answer to a request that is not a WebSocket upgrade; undefined for an upgrade. */
export function plainHttp(
  core: BrokerCore,
  req: Request,
  port: PortName,
): Response | Promise<Response> | undefined {
  if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
    return undefined;
  }
  const path = new URL(req.url).pathname;
  if (req.method === "GET" && path === "/health") {
    return json({ ...core.stats(), port, version: VERSION });
  }
  if (req.method === "GET" && path === "/metrics") {
    return core.metrics.text().then((text) =>
      new Response(text, { headers: { "content-type": Metrics.CONTENT_TYPE } })
    );
  }
  if (req.method === "GET" && path === "/health/ready") {
    // Readiness, for load balancers and orchestrators: alive is not enough, someone must serve.
    const stats = core.stats();
    const reason = stats.status !== "ok"
      ? "the server is shutting down"
      : stats.healthy_workers === 0
      ? stats.workers === 0 ? "no worker is connected" : "no worker is healthy"
      : null;
    return json(
      { ...stats, ready: reason === null, reason, port, version: VERSION },
      reason === null ? 200 : 503,
    );
  }
  return new Response(
    `This is the Switchyard ${port} port: connect with a WebSocket client ` +
      `(ws://host:port/), or GET /health for status, GET /metrics for Prometheus.\n`,
    {
      status: 426,
      headers: { "content-type": "text/plain", upgrade: "websocket" },
    },
  );
}

/**
 * The headers that say which port this is, on a refused upgrade: the token of the other port
 * fails here, and a client told only "unauthorized" would check its token, not its port.
 * Port numbers are no secret; each client compares the name with what it is.
 */
export function portHeaders(
  core: BrokerCore,
  port: PortName,
): Record<string, string> {
  const headers: Record<string, string> = { "x-switchyard-port": port };
  for (const name of ["worker", "requester"] as const) {
    const number = core.ports[name];
    if (number !== undefined) {
      headers[`x-switchyard-${name}-port`] = String(number);
    }
  }
  return headers;
}

/** Why an upgrade is refused (closed, bad token, too many connections); undefined to accept. */
export function refuseUpgrade(
  core: BrokerCore,
  req: Request,
  token: string | undefined,
  port: PortName,
  connections: number,
  address = "unknown",
): Response | undefined {
  if (core.closed) {
    core.metrics.refused(port, "shutting_down");
    return new Response("Server is shutting down\n", { status: 503 });
  }
  if (token !== undefined) {
    // An address that keeps failing is told to wait, without its token being looked at.
    const wait = core.auth.retryAfter(address);
    if (wait > 0) {
      core.metrics.refused(port, "rate_limited");
      return new Response(
        `Too many failed tries: missing or invalid token; retry in ${wait} s\n`,
        {
          status: 429,
          headers: { "retry-after": String(wait), ...portHeaders(core, port) },
        },
      );
    }
  }
  if (!authorized(req, token)) {
    core.metrics.refused(port, "unauthorized");
    // Counted and summed up in one line per interval (AuthLimiter), never one line per try.
    core.auth.failed(address);
    const other = port === "worker" ? "requester" : "worker";
    const number = core.ports[other];
    return new Response(
      `Unauthorized: missing or invalid token for the ${port} port (${other}s connect to ${
        number === undefined ? `the ${other} port` : `port ${number}`
      })\n`,
      {
        status: 401,
        headers: { "www-authenticate": "Bearer", ...portHeaders(core, port) },
      },
    );
  }
  const limit = core.options.maxConnections;
  if (connections >= limit) {
    core.metrics.refused(port, "too_many_connections");
    log.warn(
      "Refused a {port} connection from {address}: {limit} connections already",
      {
        port,
        address,
        limit,
      },
    );
    return new Response(
      `Too many ${port} connections (limit ${limit})\n`,
      {
        status: 503,
      },
    );
  }
  return undefined;
}
