/**
 * Spacing between requests to one host, with jitter so that requests do not tick like a bot. The
 * jitter spreads each interval evenly around the nominal one, so the rate over any minute is the
 * rate asked for: a host sees the rate its user chose, no more and no slower.
 *
 * @module
 */

import { type Clock, systemClock } from "./clock.ts";

/** Options for {@linkcode RateLimiter}. */
export interface RateLimiterOptions {
  /** Requests per second; `0` disables the limiter. @default 1 */
  rate?: number;
  /** How far an interval may stray either way, as a fraction of the base interval (0-1). @default 0.3 */
  jitter?: number;
  /** Time source. @default systemClock */
  clock?: Clock;
  /** Random source in [0, 1). @default Math.random */
  random?: () => number;
}

/**
 * Hands out request slots at most `rate` per second. Slots are reserved in call order, so
 * concurrent callers queue instead of bursting together when the interval passes.
 */
export class RateLimiter {
  #interval: number;
  #jitter: number;
  #clock: Clock;
  #random: () => number;
  #next = -Infinity;

  constructor(options: RateLimiterOptions = {}) {
    const rate = options.rate ?? 1;
    if (!(rate >= 0) || !Number.isFinite(rate)) {
      throw new RangeError(
        `Invalid rate limit ${rate}: expected requests per second >= 0`,
      );
    }
    this.#interval = rate === 0 ? 0 : 1000 / rate;
    this.#jitter = Math.min(Math.max(options.jitter ?? 0.3, 0), 1);
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
  }

  /** Resolves when the caller may send; rejects with `signal.reason` if aborted while waiting. */
  async acquire(signal?: AbortSignal): Promise<void> {
    if (this.#interval === 0) return;
    const now = this.#clock.now();
    const at = Math.max(now, this.#next);
    this.#next = at +
      this.#interval * (1 + this.#jitter * (2 * this.#random() - 1));
    if (at > now) await this.#clock.sleep(at - now, signal);
  }
}
