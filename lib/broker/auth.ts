/**
 * Shared-secret tokens for each port: from an `Authorization: Bearer` header, or a `token` query
 * parameter for browsers that cannot set headers on a WebSocket. Compared in constant time.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import { logger } from "../log.ts";

const authLog = logger("auth");

function digest(text: string): Uint8Array {
  return createHash("sha256").update(text).digest();
}

/** Reads the token a request presents, or undefined. */
export function presentedToken(req: Request): string | undefined {
  const header = req.headers.get("authorization");
  if (header) {
    const match = /^Bearer\s+(.+)$/i.exec(header.trim());
    if (match) return match[1].trim();
  }
  const query = new URL(req.url).searchParams.get("token");
  return query ?? undefined;
}

/**
 * Whether `req` carries `expected`. Hashing both sides first makes the comparison constant-time
 * regardless of the presented token's length.
 */
export function authorized(
  req: Request,
  expected: string | undefined,
): boolean {
  if (expected === undefined || expected === "") return true;
  const token = presentedToken(req);
  if (token === undefined) return false;
  return timingSafeEqual(digest(token), digest(expected));
}

/** Options for {@linkcode AuthLimiter}. */
export interface AuthLimiterOptions {
  /** Failed tries one address may make in a window before it is answered 429. @default 20 */
  maxFailures?: number;
  /** The window, in ms: an address's count starts over after it. @default 60000 */
  windowMs?: number;
  /** One summary log line at most this often, in ms. @default 10000 */
  logIntervalMs?: number;
  /** Addresses remembered at once; past it the oldest is forgotten. @default 10000 */
  maxAddresses?: number;
  /** @default the wall clock */
  clock?: { now(): number };
  /** Where the summary goes. @default a warning in the `switchyard.auth` log */
  log?: (line: string) => void;
}

interface Tries {
  failures: number;
  since: number;
}

/**
 * Failed authentication, per IP address: past `maxFailures` in a window the address is answered
 * `429 Too Many Requests` (with `Retry-After`) without its token being looked at, and the tries
 * are logged as one summary line per interval, never one line per try.
 */
export class AuthLimiter {
  readonly maxFailures: number;
  readonly windowMs: number;
  #o: Required<Omit<AuthLimiterOptions, "maxFailures" | "windowMs">>;
  #tries = new Map<string, Tries>();
  #failed = 0;
  #limited = 0;
  #byAddress = new Map<string, number>();
  #loggedAt: number;

  constructor(options: AuthLimiterOptions = {}) {
    this.maxFailures = options.maxFailures ?? 20;
    this.windowMs = options.windowMs ?? 60_000;
    const clock = options.clock ?? { now: () => Date.now() };
    this.#o = {
      logIntervalMs: options.logIntervalMs ?? 10_000,
      maxAddresses: options.maxAddresses ?? 10_000,
      clock,
      log: options.log ?? ((line) => authLog.warn(line)),
    };
    this.#loggedAt = -Infinity;
  }

  /** Seconds until `address` may try again, or 0 when it may try now. */
  retryAfter(address: string): number {
    const host = hostOf(address);
    const tries = this.#tries.get(host);
    if (!tries || tries.failures < this.maxFailures) return 0;
    const left = tries.since + this.windowMs - this.#o.clock.now();
    if (left <= 0) {
      this.#tries.delete(host);
      return 0;
    }
    this.#limited++;
    this.#byAddress.set(host, (this.#byAddress.get(host) ?? 0) + 1);
    return Math.ceil(left / 1000);
  }

  /** Counts a failed try from `address`. */
  failed(address: string): void {
    const host = hostOf(address);
    const now = this.#o.clock.now();
    this.#failed++;
    this.#byAddress.set(host, (this.#byAddress.get(host) ?? 0) + 1);
    let tries = this.#tries.get(host);
    if (!tries || now - tries.since >= this.windowMs) {
      this.#tries.delete(host);
      if (this.#tries.size >= this.#o.maxAddresses) {
        this.#tries.delete(this.#tries.keys().next().value!);
      }
      tries = { failures: 0, since: now };
      this.#tries.set(host, tries);
    }
    tries.failures++;
    // After a quiet interval the first failure is said at once; the rest wait for the summary.
    if (now - this.#loggedAt >= this.#o.logIntervalMs) this.flush();
  }

  /** Writes the summary line when the interval has passed and there is something to say. */
  tick(): void {
    const now = this.#o.clock.now();
    if (now - this.#loggedAt < this.#o.logIntervalMs) return;
    this.flush();
  }

  /** Writes the summary line now, if there were failed or limited tries since the last one. */
  flush(): void {
    this.#loggedAt = this.#o.clock.now();
    if (this.#failed === 0 && this.#limited === 0) return;
    const top = [...this.#byAddress].sort((a, b) => b[1] - a[1]).slice(0, 3)
      .map(([host, n]) => `${host} (${n})`).join(", ");
    this.#o.log(
      `Refused ${this.#failed} connections with a missing or invalid token and ${this.#limited} ` +
        `more with 429 (over ${this.maxFailures} failures in ${
          this.windowMs / 1000
        } s) from ${this.#byAddress.size} ` +
        `addresses, most from ${top}`,
    );
    this.#failed = 0;
    this.#limited = 0;
    this.#byAddress.clear();
  }
}

function hostOf(address: string): string {
  if (address.startsWith("[")) {
    return address.slice(0, address.indexOf("]") + 1);
  }
  const i = address.lastIndexOf(":");
  return i > 0 && address.indexOf(":") === i ? address.slice(0, i) : address;
}
