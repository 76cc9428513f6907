/**
 * Cookies for upstream requests, read from a file. Users who pass Eastmoney's slider captcha in
 * a browser, or log in, get cookies (`qgqp_b_id`, `ct`, ...) under which the host tolerates more
 * requests; exporting them and handing the file to the worker reuses that standing.
 *
 * @module
 */

interface Cookie {
  /** Domain, lower case, without a leading dot; empty for "every host". */
  domain: string;
  /** Whether subdomains match too. */
  subdomains: boolean;
  name: string;
  value: string;
  /** Expiry, epoch seconds; 0 for a session cookie. */
  expires: number;
}

/** Cookies by host, from a cookie file. */
export interface CookieJar {
  /** The `Cookie` header value for `host` at time `now` (epoch ms), or `undefined`. */
  headerFor(host: string, now?: number): string | undefined;
  /** How many cookies the file held. */
  readonly size: number;
}

/**
 * Parses a cookie file: the Netscape `cookies.txt` format browsers' export extensions and curl
 * write (seven tab-separated fields a line), or a single `Cookie` header line
 * (`name=value; name2=value2`) copied from the browser's developer tools, sent to every host.
 *
 * @throws {SyntaxError} naming the line, when a line is neither.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseCookieFile } from "./cookies.ts";
 * const jar = parseCookieFile(".eastmoney.com\tTRUE\t/\tFALSE\t0\tct\tabc\n");
 * assert.equal(jar.headerFor("push2his.eastmoney.com"), "ct=abc");
 * assert.equal(jar.headerFor("web.ifzq.gtimg.cn"), undefined);
 * ```
 */
export function parseCookieFile(text: string): CookieJar {
  const cookies: Cookie[] = [];
  const lines = text.replace(/^\uFEFF/, "").split(/\r?\n/);
  lines.forEach((raw, i) => {
    let line = raw.trim();
    if (line.startsWith("#HttpOnly_")) line = line.slice("#HttpOnly_".length);
    else if (line === "" || line.startsWith("#")) return;
    const fields = raw.trim().replace(/^#HttpOnly_/, "").split("\t");
    if (fields.length === 7) {
      const [domain, sub, , , expires, name, value] = fields;
      cookies.push({
        domain: domain.toLowerCase().replace(/^\./, ""),
        subdomains: sub.toUpperCase() === "TRUE" || domain.startsWith("."),
        name,
        value,
        expires: Number(expires) || 0,
      });
      return;
    }
    const pairs = line.replace(/^cookie:\s*/i, "").split(";").map((p) =>
      p.trim()
    ).filter(Boolean);
    if (pairs.length === 0 || !pairs.every((p) => /^[^=\s]+=/.test(p))) {
      throw new SyntaxError(
        `Cannot read cookie file line ${i + 1} ${
          JSON.stringify(raw.slice(0, 60))
        }: expected 7 tab-separated fields (cookies.txt) or name=value pairs`,
      );
    }
    for (const pair of pairs) {
      const at = pair.indexOf("=");
      cookies.push({
        domain: "",
        subdomains: true,
        name: pair.slice(0, at),
        value: pair.slice(at + 1),
        expires: 0,
      });
    }
  });
  return {
    size: cookies.length,
    headerFor(host: string, now = Date.now()): string | undefined {
      const name = host.toLowerCase().replace(/:\d+$/, "");
      const matching = cookies.filter((c) =>
        (c.expires === 0 || c.expires * 1000 > now) &&
        (c.domain === "" || c.domain === name ||
          (c.subdomains && name.endsWith(`.${c.domain}`)))
      );
      return matching.length === 0
        ? undefined
        : matching.map((c) => `${c.name}=${c.value}`).join("; ");
    },
  };
}
