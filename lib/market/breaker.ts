/**
 * A circuit breaker per upstream host. When a host starts resetting connections or answering
 * with suspicious empty data, it is usually banning our IP; hammering it makes the ban longer.
 * The breaker stops all calls for a cool-down, then lets one probe through. Each failed probe
 * doubles the cool-down (up to a ceiling), because bans last hours: a fixed minute would send
 * dozens of probes into one ban, each of which may extend it.
 *
 * @module
 */

import { type Clock, systemClock } from "./clock.ts";

/** Options for {@linkcode CircuitBreaker}. */
export interface CircuitBreakerOptions {
  /** Consecutive failures that open the breaker. @default 2 */
  threshold?: number;
  /** How long the breaker first stays open before a probe, in ms. @default 300000 */
  coolDownMs?: number;
  /** Longest cool-down after repeated failed probes, in ms. @default 28800000 (8 h) */
  maxCoolDownMs?: number;
  /** Time source. @default systemClock */
  clock?: Clock;
}

/** Breaker states: `closed` lets everything through, `open` nothing, `half-open` one probe. */
export type BreakerState = "closed" | "open" | "half-open";

/** Counts consecutive failures of one host and refuses calls while the host looks hostile. */
export class CircuitBreaker {
  #threshold: number;
  #baseMs: number;
  #maxMs: number;
  #coolDownMs: number;
  #clock: Clock;
  #failures = 0;
  #openedAt: number | undefined;
  #probing = false;

  constructor(options: CircuitBreakerOptions = {}) {
    this.#threshold = options.threshold ?? 2;
    this.#baseMs = options.coolDownMs ?? 300_000;
    this.#maxMs = Math.max(this.#baseMs, options.maxCoolDownMs ?? 28_800_000);
    this.#coolDownMs = this.#baseMs;
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

  /** The current cool-down, in ms: the base, doubled per failed probe since the last success. */
  get coolDownMs(): number {
    return this.#coolDownMs;
  }

  /** The host answered properly: close the breaker and forget the cool-down's growth. */
  success(): void {
    this.#failures = 0;
    this.#openedAt = undefined;
    this.#probing = false;
    this.#coolDownMs = this.#baseMs;
  }

  /**
   * Keeps the host closed until `until` (epoch ms) at least, whatever the failure count: for a
   * `Retry-After` the host asked for. A later success still closes it early only via a probe.
   */
  holdUntil(until: number): void {
    const now = this.#clock.now();
    if (until <= now) return;
    const retryAt = this.retryAt;
    if (retryAt !== undefined && retryAt >= until) return;
    this.#openedAt = until - this.#coolDownMs;
  }

  /** The host misbehaved. Returns `true` when this failure opened the breaker. */
  failure(): boolean {
    this.#failures++;
    const wasProbe = this.#probing;
    this.#probing = false;
    if (wasProbe) {
      this.#coolDownMs = Math.min(this.#maxMs, this.#coolDownMs * 2);
      this.#openedAt = this.#clock.now();
      return true;
    }
    if (this.#openedAt === undefined && this.#failures >= this.#threshold) {
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
