/**
 * Reconnect delays: exponential growth with full jitter, so that a crowd of workers that lost the
 * same server spreads its reconnects over the whole window instead of arriving together.
 *
 * @module
 */

/** Options for {@linkcode Backoff}. */
export interface BackoffOptions {
  /** The first delay's upper bound, in ms. @default 500 */
  initialMs?: number;
  /** The largest delay, in ms. @default 30000 */
  maxMs?: number;
  /** Growth per attempt. @default 2 */
  factor?: number;
  /** Random source in [0, 1). @default Math.random */
  random?: () => number;
}

/** A reconnect schedule; `reset()` after a connection proved stable. */
export class Backoff {
  #initialMs: number;
  #maxMs: number;
  #factor: number;
  #random: () => number;
  #attempt = 0;

  /** A schedule with `options`. */
  constructor(options: BackoffOptions = {}) {
    this.#initialMs = options.initialMs ?? 500;
    this.#maxMs = options.maxMs ?? 30_000;
    this.#factor = options.factor ?? 2;
    this.#random = options.random ?? Math.random;
    if (
      !(this.#initialMs > 0) || !(this.#maxMs >= this.#initialMs) ||
      !(this.#factor >= 1)
    ) {
      throw new RangeError(
        `Invalid backoff: initialMs ${this.#initialMs}, maxMs ${this.#maxMs}, factor ${this.#factor}`,
      );
    }
  }

  /** How many delays were handed out since the last reset. */
  get attempt(): number {
    return this.#attempt;
  }

  /** The longest delay this schedule hands out. */
  get maxMs(): number {
    return this.#maxMs;
  }

  /** The upper bound of the next delay: `min(max, initial × factor^attempt)`. */
  ceiling(attempt: number = this.#attempt): number {
    return Math.min(this.#maxMs, this.#initialMs * this.#factor ** attempt);
  }

  /** The next delay: uniform in [0, ceiling] ("full jitter"). */
  next(): number {
    const delay = Math.round(this.#random() * this.ceiling());
    this.#attempt++;
    return delay;
  }

  /** Starts the schedule over. */
  reset(): void {
    this.#attempt = 0;
  }
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
