/**
 * Request heads at the guard: reading one within its size limit, reading it as a `Request`, and
 * marking a relayed one with the real peer's address.
 *
 * @module
 */

import { headEnd } from "./_http.ts";

/** The header that carries `<secret> <address>` from the guard to the server. */
export const PEER_HEADER = "x-switchyard-peer";

const latin1 = new TextDecoder("latin1");

/** A request head as read: its text (without the blank line) and the bytes that followed it. */
export interface Head {
  head: string;
  rest: Uint8Array;
}

/**
 * Reads a request head of at most `max` bytes: "oversized" past it, "bare-lf" as soon as a line
 * ends in LF alone (RFC 9112 lets a server refuse those, and waiting for CRLF CRLF would only
 * end in the header timeout), undefined when the peer closes first.
 */
export async function readHead(
  conn: Deno.Conn,
  max: number,
): Promise<Head | "oversized" | "bare-lf" | undefined> {
  let buffer = new Uint8Array(4096);
  let length = 0;
  while (true) {
    if (length === buffer.length) {
      if (buffer.length >= max) return "oversized";
      const bigger = new Uint8Array(Math.min(buffer.length * 2, max));
      bigger.set(buffer);
      buffer = bigger;
    }
    const n = await conn.read(buffer.subarray(length));
    if (n === null) return undefined;
    const from = Math.max(0, length - 3);
    const read = length;
    length += n;
    const end = headEnd(buffer, from, length);
    const last = end >= 0 ? end + 2 : length;
    for (let i = read; i < last; i++) {
      if (buffer[i] === 10 && (i === 0 || buffer[i - 1] !== 13)) {
        return "bare-lf";
      }
    }
    if (end >= 0) {
      return {
        head: latin1.decode(buffer.subarray(0, end)),
        rest: buffer.slice(end + 4, length),
      };
    }
  }
}

/** Why a request is refused before anything else sees it: a status line, a text, extra headers. */
export interface Refusal {
  status: string;
  text: string;
  /** Header lines, each ending in CRLF. */
  headers?: string;
}

/** At most this many header fields: `Deno.serve` refuses more, and so does the guard. */
export const MAX_HEADERS = 100;

const REQUEST_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP\/1\.([01])$/;
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// Control characters other than a tab have no place in a field value.
// deno-lint-ignore no-control-regex
const BAD_VALUE = /[\x00-\x08\x0a-\x1f\x7f]/;

function badRequest(text: string): Refusal {
  return { status: "400 Bad Request", text };
}

/** A value for an error message: quoted, cut short, control characters escaped. */
function shown(text: string): string {
  const cut = text.length > 60 ? text.slice(0, 60) + "…" : text;
  return JSON.stringify(cut);
}

/**
 * Checks a request head against RFC 9112 (§3, §5): a request line of a token method, a target
 * and HTTP/1.0 or 1.1; at most {@linkcode MAX_HEADERS} fields, each a token name right before
 * its colon (no whitespace, no folded lines) and a value without control characters; exactly
 * one Host in HTTP/1.1, at most one in 1.0. A refusal (400) names what was wrong.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkHead } from "./_guard_head.ts";
 * assert.equal(checkHead("GET / HTTP/1.1\r\nHost: x"), undefined);
 * assert.match(checkHead("GET / HTTP/1.1\r\nHost : x")!.text, /Whitespace/);
 * ```
 */
export function checkHead(head: string): Refusal | undefined {
  const lines = head.split("\r\n");
  const line = REQUEST_LINE.exec(lines[0]);
  if (!line) {
    return badRequest(
      `Bad request line: ${shown(lines[0])} (expected: METHOD target HTTP/1.1)`,
    );
  }
  const fields = lines.length - 1;
  if (fields > MAX_HEADERS) {
    return badRequest(
      `Too many header fields: ${fields} (limit ${MAX_HEADERS})`,
    );
  }
  let hosts = 0;
  for (let i = 1; i < lines.length; i++) {
    const field = lines[i];
    const colon = field.indexOf(":");
    const name = colon < 0 ? field : field.slice(0, colon);
    if (colon <= 0 || !TOKEN.test(name)) {
      return badRequest(
        /^[ \t]/.test(field)
          ? `Folded header line: ${shown(field)}`
          : /[ \t]$/.test(name)
          ? `Whitespace before the colon of header ${shown(name.trim())}`
          : `Bad header line: ${shown(field)}`,
      );
    }
    if (BAD_VALUE.test(field)) {
      return badRequest(`Control character in header ${shown(name)}`);
    }
    if (name.length === 4 && name.toLowerCase() === "host") hosts++;
  }
  if (hosts > 1) return badRequest(`${hosts} Host headers (one is allowed)`);
  if (hosts === 0 && line[3] === "1") {
    return badRequest("No Host header (HTTP/1.1 needs one)");
  }
  return undefined;
}

/** Whether `value`, a comma-separated list, holds `token` (any case). */
function hasToken(value: string | null, token: string): boolean {
  if (value === null) return false;
  return value.split(",").some((t) => t.trim().toLowerCase() === token);
}

/**
 * Checks a WebSocket upgrade (its `Upgrade` says `websocket`) against RFC 6455 §4.2.1: HTTP/1.1
 * or later, GET, `Connection` with the `upgrade` token, a 16-byte base64 key, version 13 (426
 * with `Sec-WebSocket-Version: 13` for any other), and no body: an upgrade request carries
 * none, and bytes framed after it would otherwise be taken for WebSocket frames.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkUpgrade } from "./_guard_head.ts";
 * const headers = new Headers({
 *   upgrade: "websocket",
 *   connection: "Upgrade",
 *   "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
 *   "sec-websocket-version": "8",
 * });
 * const req = new Request("http://x/", { headers });
 * assert.equal(checkUpgrade(req, "HTTP/1.1")?.status, "426 Upgrade Required");
 * ```
 */
export function checkUpgrade(
  req: Request,
  version: string,
): Refusal | undefined {
  const h = req.headers;
  if (version !== "HTTP/1.1") {
    return badRequest(`A WebSocket upgrade needs HTTP/1.1, not ${version}`);
  }
  if (req.method !== "GET") {
    return badRequest(`A WebSocket upgrade is a GET, not ${req.method}`);
  }
  if (!hasToken(h.get("connection"), "upgrade")) {
    return badRequest(
      "A WebSocket upgrade needs a Connection header with the upgrade token",
    );
  }
  const length = h.get("content-length");
  if (h.has("transfer-encoding") || (length !== null && length !== "0")) {
    return badRequest("A WebSocket upgrade request carries no body");
  }
  const wanted = h.get("sec-websocket-version");
  if (wanted !== "13") {
    return {
      status: "426 Upgrade Required",
      text: `Unsupported WebSocket version: ${
        wanted === null ? "none given" : shown(wanted)
      } (this server speaks 13)`,
      headers: "Sec-WebSocket-Version: 13\r\n",
    };
  }
  const key = h.get("sec-websocket-key");
  if (key === null || !/^[A-Za-z0-9+/]{22}==$/.test(key)) {
    return badRequest(
      `Bad Sec-WebSocket-Key: ${
        key === null ? "none given" : shown(key)
      } (expected 16 bytes in base64)`,
    );
  }
  return undefined;
}

/**
 * Rewrites a request head for the server behind: drops any peer header the client sent, adds
 * ours, and asks for the connection to close after a plain HTTP answer, so that every request on
 * a connection passes the header timeout (keep-alive would let a second head dribble in).
 */
export function rewriteHead(
  head: string,
  secret: string,
  address: string,
): string {
  const lines = head.split("\r\n");
  const out = [lines[0]];
  let upgrade = false;
  for (const line of lines.slice(1)) {
    if (line === "") continue;
    const name = line.slice(0, line.indexOf(":")).trim().toLowerCase();
    if (name === PEER_HEADER || name === "connection") {
      if (name === "connection" && /\bupgrade\b/i.test(line)) upgrade = true;
      continue;
    }
    out.push(line);
  }
  // An upgrade that is refused (401, 503) ends the connection too.
  out.push(upgrade ? "Connection: Upgrade, close" : "Connection: close");
  out.push(`${PEER_HEADER}: ${secret} ${address}`);
  return out.join("\r\n") + "\r\n\r\n";
}

/** Reads the real peer address a relayed request carries, or undefined if it is not ours. */
export function relayedPeer(req: Request, secret: string): string | undefined {
  const value = req.headers.get(PEER_HEADER);
  if (!value) return undefined;
  const space = value.indexOf(" ");
  if (space < 0 || value.slice(0, space) !== secret) return undefined;
  return value.slice(space + 1);
}

/**
 * A request head (checked by {@linkcode checkHead}) as a `Request` without a body, with the
 * protocol version beside it; undefined for a target that is neither origin-form (`/path`) nor
 * absolute-form (`http://host/path`, taken the same way).
 */
export function parseHead(
  head: string,
  tls: boolean,
): { req: Request; version: string } | undefined {
  const lines = head.split("\r\n");
  const [method, target, version] = lines[0].split(" ");
  const absolute = /^(https?|wss?):\/\//i.test(target ?? "");
  if (!method || !(target?.startsWith("/") || absolute) || !version) {
    return undefined;
  }
  try {
    const headers = new Headers();
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      if (colon <= 0) return undefined;
      headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
    }
    // The Host header only names the URL; anything odd in it must not refuse the upgrade.
    const scheme = tls ? "https" : "http";
    let url: URL;
    try {
      if (absolute) {
        // RFC 9112 §3.2.2: the target's authority stands for the Host header.
        const given = new URL(target);
        url = new URL(
          given.pathname + given.search,
          `${scheme}://${given.host}`,
        );
      } else {
        url = new URL(
          target,
          `${scheme}://${headers.get("host") ?? "localhost"}`,
        );
      }
    } catch {
      if (absolute) return undefined;
      url = new URL(target, "http://localhost");
    }
    return { req: new Request(url, { method, headers }), version };
  } catch {
    return undefined;
  }
}

/** `host:port` (or `[v6]:port`) as the address `Deno.ServeHandlerInfo` carries. */
export function parseAddress(address: string): Deno.NetAddr {
  const i = address.lastIndexOf(":");
  return {
    transport: "tcp",
    hostname: address.slice(0, i).replace(/^\[|\]$/g, ""),
    port: Number(address.slice(i + 1)),
  };
}
