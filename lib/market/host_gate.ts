/**
 * Everything polite and resilient about talking to one upstream host: bounded concurrency, a
 * rate limit, hourly and daily request budgets, a per-request timeout, retries with exponential
 * back-off and full jitter, `Retry-After`, and a circuit breaker with a growing cool-down that
 * stops calling a host that looks like it is banning us.
 *
 * @module
 */

import { getLogger } from "npm:@logtape/logtape@2.4.2";
import { type BreakerState, CircuitBreaker } from "./breaker.ts";
import { type Clock, systemClock } from "./clock.ts";
import { UpstreamBlockedError, UpstreamUnavailableError } from "./errors.ts";
import { RateLimiter } from "./rate_limiter.ts";
import { Semaphore } from "./_semaphore.ts";

const logger = getLogger(["switchyard", "market"]);

/** Circuit-breaker settings. */
export interface BreakerOptions {
  /** Consecutive resets or suspicious answers that open the breaker. @default 2 */
  threshold?: number;
  /** How long an open breaker first refuses calls before one probe, in ms. @default 300000 */
  coolDownMs?: number;
  /** Ceiling of the cool-down, which doubles per failed probe, in ms. @default 28800000 */
  maxCoolDownMs?: number;
}

/** Budgets meaning "no budget": large, finite, so that they survive JSON. */
export const UNLIMITED_BUDGET = 1_000_000_000;

/** What a worker reports about one upstream host in its heartbeats. */
export interface HostStatus {
  /** Until when the host is not called (ban cool-down or `Retry-After`), epoch ms; 0 if none. */
  cooldown_until: number;
  /** Requests left in the last rolling hour; null when the host has no hourly budget. */
  budget_hour: number | null;
  /** Requests left in the last rolling 24 hours; null when the host has no daily budget. */
  budget_day: number | null;
  /** Requests per second this gate allows (0: no limit). */
  rate: number;
}

/** Options for {@linkcode HostGate}. */
export interface HostGateOptions {
  /** Requests per second to this host; `0` disables the limit. @default 1 */
  rateLimit?: number;
  /** Requests in flight to this host at once. @default 2 */
  concurrency?: number;
  /** Requests allowed in any rolling hour. @default UNLIMITED_BUDGET */
  budgetHour?: number;
  /** Requests allowed in any rolling 24 hours. @default UNLIMITED_BUDGET */
  budgetDay?: number;
  /** Retries after the first attempt, on network errors and HTTP 5xx/429. @default 2 */
  retries?: number;
  /** Upper bound of the first retry delay, in ms; doubles per retry (full jitter). @default 500 */
  retryBaseMs?: number;
  /** Largest retry delay, in ms. @default 8000 */
  retryMaxMs?: number;
  /** Per-attempt timeout, in ms. @default 20000 */
  timeoutMs?: number;
  /** Circuit-breaker settings. */
  breaker?: BreakerOptions;
  /** Time source for spacing, back-off and cool-down. @default systemClock */
  clock?: Clock;
  /** Random source in [0, 1), for jitter. @default Math.random */
  random?: () => number;
  /** The fetch implementation. @default globalThis.fetch */
  fetch?: typeof fetch;
  /** Headers sent with every request to this host (after the caller's, so they win). */
  headers?: Record<string, string>;
}

/** Options for one {@linkcode HostGate.requestJson} call. */
export interface RequestJsonOptions {
  /** Request headers. */
  headers?: HeadersInit;
  /** Cancels waiting, the request and the back-off. */
  signal: AbortSignal;
  /**
   * Tells whether a well-formed answer is suspicious (typically: empty where data was
   * expected). A suspicious answer counts against the breaker and fails as blocked.
   */
  suspicious?: (body: unknown) => boolean;
}

type Failure = {
  kind: "blocked" | "unavailable";
  message: string;
  cause?: unknown;
  /** `Retry-After`, in ms, when the host sent one. */
  retryAfterMs?: number;
};

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

/** The gate in front of one host. All of a provider's HTTP calls go through it. */
export class HostGate {
  /** The host name. */
  readonly host: string;
  #breaker: CircuitBreaker;
  #limiter: RateLimiter;
  #slots: Semaphore;
  #retries: number;
  #retryBaseMs: number;
  #retryMaxMs: number;
  #timeoutMs: number;
  #clock: Clock;
  #random: () => number;
  #fetch: typeof fetch;
  #headers: Record<string, string>;
  #rate: number;
  #budgetHour: number;
  #budgetDay: number;
  /** Send times of the last 24 hours, oldest first. */
  #sent: number[] = [];
  #requests = 0;

  constructor(host: string, options: HostGateOptions = {}) {
    this.host = host;
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#breaker = new CircuitBreaker({
      ...options.breaker,
      clock: this.#clock,
    });
    this.#rate = options.rateLimit ?? 1;
    this.#budgetHour = budget("budgetHour", options.budgetHour);
    this.#budgetDay = budget("budgetDay", options.budgetDay);
    this.#headers = options.headers ?? {};
    this.#limiter = new RateLimiter({
      rate: this.#rate,
      clock: this.#clock,
      random: this.#random,
    });
    this.#slots = new Semaphore(options.concurrency ?? 2);
    this.#retries = options.retries ?? 2;
    this.#retryBaseMs = options.retryBaseMs ?? 500;
    this.#retryMaxMs = options.retryMaxMs ?? 8000;
    this.#timeoutMs = options.timeoutMs ?? 20_000;
    this.#fetch = options.fetch ?? globalThis.fetch;
  }

  /** The breaker's state now. */
  get state(): BreakerState {
    return this.#breaker.state;
  }

  /** HTTP requests sent so far (every attempt counts). */
  get requests(): number {
    return this.#requests;
  }

  /** Cool-down, budgets and rate now, as workers report them in heartbeats. */
  status(): HostStatus {
    const now = this.#clock.now();
    this.#prune(now);
    const first = this.#sent.findIndex((t) => t > now - HOUR_MS);
    const inHour = first < 0 ? 0 : this.#sent.length - first;
    return {
      cooldown_until: this.#breaker.state === "open"
        ? this.#breaker.retryAt ?? 0
        : 0,
      // No budget is said as such, not as a billion less what was used.
      budget_hour: this.#budgetHour === UNLIMITED_BUDGET
        ? null
        : Math.max(0, this.#budgetHour - inHour),
      budget_day: this.#budgetDay === UNLIMITED_BUDGET
        ? null
        : Math.max(0, this.#budgetDay - this.#sent.length),
      rate: this.#rate,
    };
  }

  /**
   * Counts a hostile answer that only the caller can recognise (an empty page in mid-history)
   * against the breaker, like a reset.
   */
  reportHostile(): void {
    this.#countFailure();
  }

  /** Refuses at once, with when to come back, if the budgets are spent. */
  #checkBudget(): void {
    const now = this.#clock.now();
    this.#prune(now);
    let retryAt: number | undefined;
    let which = "";
    if (this.#sent.length >= this.#budgetDay) {
      retryAt = this.#sent[this.#sent.length - this.#budgetDay] + DAY_MS;
      which = `daily budget of ${this.#budgetDay} requests`;
    } else {
      const first = this.#sent.findIndex((t) => t > now - HOUR_MS);
      const inHour = first < 0 ? 0 : this.#sent.length - first;
      if (inHour >= this.#budgetHour) {
        retryAt = this.#sent[this.#sent.length - this.#budgetHour] + HOUR_MS;
        which = `hourly budget of ${this.#budgetHour} requests`;
      }
    }
    if (retryAt === undefined) return;
    throw new UpstreamBlockedError(
      this.host,
      `Upstream host "${this.host}": ${which} spent, next request at ${
        new Date(retryAt).toISOString()
      }; not calling it before then`,
      { retryAt },
    );
  }

  #prune(now: number): void {
    let drop = 0;
    while (drop < this.#sent.length && this.#sent[drop] <= now - DAY_MS) drop++;
    if (drop > 0) this.#sent.splice(0, drop);
  }

  /**
   * GETs `url` and parses the JSON answer, retrying transient failures.
   *
   * @throws {UpstreamBlockedError} breaker open, connection reset, HTTP 403/429, non-JSON or
   *   suspicious answer.
   * @throws {UpstreamUnavailableError} other network errors or HTTP errors after all retries.
   */
  async requestJson(
    url: string,
    options: RequestJsonOptions,
  ): Promise<unknown> {
    const { signal } = options;
    let failure: Failure | undefined;
    for (let attempt = 0; attempt <= this.#retries; attempt++) {
      if (attempt > 0) {
        const ceiling = Math.min(
          this.#retryMaxMs,
          this.#retryBaseMs * 2 ** (attempt - 1),
        );
        await this.#clock.sleep(
          failure?.retryAfterMs ?? this.#random() * ceiling,
          signal,
        );
      }
      // Fail fast while the host cools down or the budget is spent: waiting hours in a queue
      // helps nobody, and another worker may fetch the item now.
      if (this.#breaker.state === "open") throw this.#blockedError();
      this.#checkBudget();
      await this.#slots.acquire(signal);
      let outcome: { body: unknown } | { failure: Failure; retry: boolean };
      try {
        await this.#limiter.acquire(signal);
        this.#checkBudget();
        if (!this.#breaker.tryAcquire()) throw this.#blockedError();
        outcome = await this.#attempt(url, options);
      } finally {
        this.#slots.release();
      }
      if ("body" in outcome) return outcome.body;
      failure = outcome.failure;
      if (failure.retryAfterMs !== undefined) {
        if (failure.retryAfterMs > this.#retryMaxMs) {
          // Too long to wait for in a request: keep the whole host quiet until then.
          this.#breaker.holdUntil(this.#clock.now() + failure.retryAfterMs);
          throw this.#blockedError(failure);
        }
      }
      if (this.#breaker.state !== "closed") throw this.#blockedError(failure);
      if (!outcome.retry) break;
      logger.debug("Retrying {host} after: {message}", {
        host: this.host,
        ...failure,
      });
    }
    const message = `Upstream host "${this.host}" failed: ${failure!.message}`;
    throw failure!.kind === "blocked"
      ? new UpstreamBlockedError(this.host, message, { cause: failure!.cause })
      : new UpstreamUnavailableError(this.host, message, {
        cause: failure!.cause,
      });
  }

  async #attempt(
    url: string,
    options: RequestJsonOptions,
  ): Promise<{ body: unknown } | { failure: Failure; retry: boolean }> {
    const { signal } = options;
    const timeout = new AbortController();
    const timer = setTimeout(
      () =>
        timeout.abort(
          new DOMException("Upstream request timed out", "TimeoutError"),
        ),
      this.#timeoutMs,
    );
    let status: number;
    let text: string;
    let retryAfterMs: number | undefined;
    try {
      this.#requests++;
      this.#sent.push(this.#clock.now());
      const headers = new Headers(options.headers);
      for (const [name, value] of Object.entries(this.#headers)) {
        headers.set(name, value);
      }
      const response = await this.#fetch(url, {
        headers,
        signal: AbortSignal.any([signal, timeout.signal]),
      });
      status = response.status;
      retryAfterMs = parseRetryAfter(
        response.headers.get("retry-after"),
        this.#clock.now(),
      );
      text = await response.text();
    } catch (error) {
      if (signal.aborted) {
        this.#breaker.release();
        throw signal.reason;
      }
      // A reset or a silent drop is how these hosts ban an IP; a refused connection is not.
      // Asking again at once is what turns a short ban into a long one: no retry to this host.
      const hostile = timeout.signal.aborted || isReset(error);
      if (hostile) this.#countFailure();
      else this.#breaker.release();
      return {
        failure: {
          kind: hostile ? "blocked" : "unavailable",
          message: timeout.signal.aborted
            ? `no answer within ${this.#timeoutMs} ms`
            : errorText(error),
          cause: error,
        },
        // A host that cannot be reached at all (no DNS answer, refused, a certificate that does
        // not verify) will not be reached in a second either: asking again would wait a whole
        // rate-limit slot per retry, past the request's deadline, only to fail the same way.
        retry: !hostile && !isUnreachable(error),
      };
    } finally {
      clearTimeout(timer);
    }

    if (status === 429 || status === 403) {
      this.#countFailure();
      return {
        failure: { kind: "blocked", message: `HTTP ${status}`, retryAfterMs },
        retry: status === 429,
      };
    }
    if (status >= 500) {
      this.#breaker.release();
      return {
        failure: {
          kind: "unavailable",
          message: `HTTP ${status}`,
          retryAfterMs,
        },
        retry: true,
      };
    }
    if (status < 200 || status >= 300) {
      this.#breaker.release();
      return {
        failure: { kind: "unavailable", message: `HTTP ${status}` },
        retry: false,
      };
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch (error) {
      // A 200 with HTML instead of JSON is a captcha or block page.
      this.#countFailure();
      const message = `answer is not JSON: ${
        JSON.stringify(text.slice(0, 60))
      }`;
      return {
        failure: { kind: "blocked", message, cause: error },
        retry: false,
      };
    }
    if (options.suspicious?.(body)) {
      this.#countFailure();
      return {
        failure: { kind: "blocked", message: "suspicious empty answer" },
        retry: false,
      };
    }
    this.#breaker.success();
    return { body };
  }

  #countFailure(): void {
    if (this.#breaker.failure()) {
      logger.warn("Circuit breaker for {host} opened until {until}", {
        host: this.host,
        until: new Date(this.#breaker.retryAt!).toISOString(),
      });
    }
  }

  #blockedError(failure?: Failure): UpstreamBlockedError {
    const retryAt = this.#breaker.retryAt ?? this.#clock.now();
    const until = new Date(retryAt).toISOString();
    const detail = failure ? ` after: ${failure.message}` : "";
    return new UpstreamBlockedError(
      this.host,
      `Upstream host "${this.host}" is blocked until ${until}: circuit breaker open${detail}`,
      { cause: failure?.cause, retryAt },
    );
  }
}

function budget(name: string, value: number | undefined): number {
  if (value === undefined || value === 0) return UNLIMITED_BUDGET;
  if (!(value >= 1) || !Number.isFinite(value)) {
    throw new RangeError(
      `Invalid ${name} ${value}: expected requests >= 1, or 0 for no budget`,
    );
  }
  return Math.floor(value);
}

/** `Retry-After` (seconds or an HTTP date) in ms from `now`; `undefined` when absent or bad. */
function parseRetryAfter(text: string | null, now: number): number | undefined {
  if (text === null || text.trim() === "") return undefined;
  const seconds = Number(text);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** Whether a fetch failed before reaching the host: DNS, a refused connection, TLS. */
function isUnreachable(error: unknown): boolean {
  return /dns error|failed to lookup|name or service not known|no address associated|connection refused|os error 111|certificate|invalid ?peer|tls|handshake/i
    .test(errorText(error));
}

function isReset(error: unknown): boolean {
  return /reset|connection closed|closed before|broken pipe|unexpected eof|incomplete/i
    .test(
      errorText(error),
    );
}

function errorText(error: unknown): string {
  let text = error instanceof Error ? error.message : String(error);
  const cause = error instanceof Error ? error.cause : undefined;
  if (cause instanceof Error) text += `: ${cause.message}`;
  return text;
}
