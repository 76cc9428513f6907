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
 * Reads a request head of at most `max` bytes; "oversized" past it, undefined when the peer
 * closes first.
 */
export async function readHead(
  conn: Deno.Conn,
  max: number,
): Promise<Head | "oversized" | undefined> {
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
    length += n;
    const end = headEnd(buffer, from, length);
    if (end >= 0) {
      return {
        head: latin1.decode(buffer.subarray(0, end)),
        rest: buffer.slice(end + 4, length),
      };
    }
  }
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

/** A request head as a `Request` (no body: only upgrades come this way); undefined if garbled. */
export function parseHead(head: string, tls: boolean): Request | undefined {
  const lines = head.split("\r\n");
  const [method, target, version] = lines[0].split(" ");
  if (!method || !target?.startsWith("/") || !version?.startsWith("HTTP/")) {
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
    let url: URL;
    try {
      url = new URL(
        target,
        `${tls ? "https" : "http"}://${headers.get("host") ?? "localhost"}`,
      );
    } catch {
      url = new URL(target, "http://localhost");
    }
    return new Request(url, { method, headers });
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
