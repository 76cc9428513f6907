/**
 * A circuit breaker per upstream host. When a host starts resetting connections or answering
 * with suspicious empty data, it is usually banning our IP; hammering it makes the ban longer.
 * The breaker stops all calls for a cool-down, then lets one probe through.
 *
 * @module
 */

import { type Clock, systemClock } from "./clock.ts";

/** Options for {@linkcode CircuitBreaker}. */
export interface CircuitBreakerOptions {
  /** Consecutive failures that open the breaker. @default 3 */
  threshold?: number;
  /** How long the breaker stays open before a probe, in ms. @default 60000 */
  coolDownMs?: number;
  /** Time source. @default systemClock */
  clock?: Clock;
}

/** Breaker states: `closed` lets everything through, `open` nothing, `half-open` one probe. */
export type BreakerState = "closed" | "open" | "half-open";

/** Counts consecutive failures of one host and refuses calls while the host looks hostile. */
export class CircuitBreaker {
  #threshold: number;
  #coolDownMs: number;
  #clock: Clock;
  #failures = 0;
  #openedAt: number | undefined;
  #probing = false;

  constructor(options: CircuitBreakerOptions = {}) {
    this.#threshold = options.threshold ?? 3;
    this.#coolDownMs = options.coolDownMs ?? 60_000;
    this.#clock = options.clock ?? systemClock;
    if (!(this.#threshold >= 1)) {
      throw new RangeError(
        `Invalid breaker threshold ${this.#threshold}: expected 1 or more`,
      );
    }
  }

  /** The state now. */
  get state(): BreakerState {
    if (this.#openedAt === undefined) return "closed";
    return this.#clock.now() - this.#openedAt >= this.#coolDownMs
      ? "half-open"
      : "open";
  }

  /** When an open breaker will let a probe through, in epoch ms. */
  get retryAt(): number | undefined {
    return this.#openedAt === undefined
      ? undefined
      : this.#openedAt + this.#coolDownMs;
  }

  /**
   * Asks to make a call. `true` when closed, or when half-open and no other probe is out (the
   * caller then is the probe and must report `success()` or `failure()`).
   */
  tryAcquire(): boolean {
    const state = this.state;
    if (state === "closed") return true;
    if (state === "open" || this.#probing) return false;
    this.#probing = true;
    return true;
  }

  /** The host answered properly: close the breaker. */
  success(): void {
    this.#failures = 0;
    this.#openedAt = undefined;
    this.#probing = false;
  }

  /** The host misbehaved. Returns `true` when this failure opened the breaker. */
  failure(): boolean {
    this.#failures++;
    const wasProbe = this.#probing;
    this.#probing = false;
    if (
      wasProbe ||
      (this.#openedAt === undefined && this.#failures >= this.#threshold)
    ) {
      this.#openedAt = this.#clock.now();
      return true;
    }
    return false;
  }

  /** A call ended without telling anything about the host (aborted by the caller). */
  release(): void {
    this.#probing = false;
  }
}
