/**
 * What users add to upstream requests to be let through: headers, and a proxy. (Cookies are in
 * `cookies.ts`.) These back the worker's `--header` and `--proxy` flags.
 *
 * @module
 */

/**
 * Parses `NAME:VALUE` header flags into a header record. Later flags win over earlier ones for
 * the same name.
 *
 * @throws {TypeError} naming the flag, for a missing colon, an empty or invalid name.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseHeaderFlags } from "./upstream_options.ts";
 * const headers = parseHeaderFlags(["User-Agent: my-browser/1.0", "X-Forwarded-For:10.0.0.1"]);
 * assert.equal(headers["User-Agent"], "my-browser/1.0");
 * ```
 */
export function parseHeaderFlags(
  flags: readonly string[],
): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const flag of flags) {
    const at = flag.indexOf(":");
    const name = at < 0 ? "" : flag.slice(0, at).trim();
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) {
      throw new TypeError(
        `Invalid --header ${JSON.stringify(flag)}: expected NAME:VALUE`,
      );
    }
    const value = flag.slice(at + 1).trim();
    try {
      new Headers([[name, value]]);
    } catch (error) {
      throw new TypeError(
        `Invalid --header ${JSON.stringify(flag)}: ${(error as Error).message}`,
      );
    }
    headers[name] = value;
  }
  return headers;
}

/** A `fetch` that sends every request through one HTTP(S) proxy, and its `close()`. */
export interface ProxyFetch {
  /** Same as `globalThis.fetch`, through the proxy. */
  fetch: typeof fetch;
  /** Closes the proxy connections. */
  close(): void;
}

/**
 * Creates a `fetch` through an HTTP or HTTPS proxy (`http://user:pass@host:port`), with
 * `Deno.createHttpClient`: the way to give a worker another exit IP, or a mainland one.
 *
 * @throws {TypeError} for a URL that is not http(s).
 */
export function createProxyFetch(url: string): ProxyFetch {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new TypeError(
      `Invalid --proxy ${
        JSON.stringify(url)
      }: expected http://host:port or https://host:port`,
    );
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new TypeError(
      `Invalid --proxy ${
        JSON.stringify(url)
      }: expected http://host:port or https://host:port`,
    );
  }
  const basicAuth = parsed.username === "" ? undefined : {
    username: decodeURIComponent(parsed.username),
    password: decodeURIComponent(parsed.password),
  };
  parsed.username = "";
  parsed.password = "";
  const client = Deno.createHttpClient({
    proxy: { url: parsed.href, basicAuth },
  });
  return {
    fetch: (input, init) => fetch(input, { ...init, client }),
    close: () => client.close(),
  };
}
