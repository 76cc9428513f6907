/**
 * Everything polite and resilient about talking to one upstream host: bounded concurrency, a
 * rate limit, a per-request timeout, retries with exponential back-off and full jitter, and a
 * circuit breaker that stops calling a host that looks like it is banning us.
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
  /** Consecutive resets or suspicious answers that open the breaker. @default 3 */
  threshold?: number;
  /** How long an open breaker refuses calls before it lets one probe through, in ms. @default 60000 */
  coolDownMs?: number;
}

/** Options for {@linkcode HostGate}. */
export interface HostGateOptions {
  /** Requests per second to this host; `0` disables the limit. @default 1 */
  rateLimit?: number;
  /** Requests in flight to this host at once. @default 2 */
  concurrency?: number;
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
};

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
  #requests = 0;

  constructor(host: string, options: HostGateOptions = {}) {
    this.host = host;
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#breaker = new CircuitBreaker({
      ...options.breaker,
      clock: this.#clock,
    });
    this.#limiter = new RateLimiter({
      rate: options.rateLimit ?? 1,
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
        await this.#clock.sleep(this.#random() * ceiling, signal);
      }
      await this.#slots.acquire(signal);
      let outcome: { body: unknown } | { failure: Failure; retry: boolean };
      try {
        await this.#limiter.acquire(signal);
        if (!this.#breaker.tryAcquire()) throw this.#blockedError();
        outcome = await this.#attempt(url, options);
      } finally {
        this.#slots.release();
      }
      if ("body" in outcome) return outcome.body;
      failure = outcome.failure;
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
    try {
      this.#requests++;
      const response = await this.#fetch(url, {
        headers: options.headers,
        signal: AbortSignal.any([signal, timeout.signal]),
      });
      status = response.status;
      text = await response.text();
    } catch (error) {
      if (signal.aborted) {
        this.#breaker.release();
        throw signal.reason;
      }
      // A reset or a silent drop is how these hosts ban an IP; a refused connection is not.
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
        retry: true,
      };
    } finally {
      clearTimeout(timer);
    }

    if (status === 429 || status === 403) {
      this.#countFailure();
      return {
        failure: { kind: "blocked", message: `HTTP ${status}` },
        retry: status === 429,
      };
    }
    if (status >= 500) {
      this.#breaker.release();
      return {
        failure: { kind: "unavailable", message: `HTTP ${status}` },
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
    const until = new Date(this.#breaker.retryAt ?? this.#clock.now())
      .toISOString();
    const detail = failure ? ` after: ${failure.message}` : "";
    return new UpstreamBlockedError(
      this.host,
      `Upstream host "${this.host}" is blocked until ${until}: circuit breaker open${detail}`,
      { cause: failure?.cause },
    );
  }
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
