/**
 * A counting semaphore with abortable waits, for bounded concurrency.
 *
 * @module
 */

/** At most `limit` holders at a time; waiters are served first come, first served. */
export class Semaphore {
  #free: number;
  #waiters: Array<() => void> = [];

  constructor(limit: number) {
    if (!(limit >= 1) || !Number.isInteger(limit)) {
      throw new RangeError(
        `Invalid concurrency ${limit}: expected an integer >= 1`,
      );
    }
    this.#free = limit;
  }

  /** Resolves when a slot is held; rejects with `signal.reason` if aborted while waiting. */
  acquire(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#free > 0) {
      this.#free--;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const grant = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      };
      const onAbort = () => {
        const i = this.#waiters.indexOf(grant);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(signal?.reason);
      };
      this.#waiters.push(grant);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Gives a slot back, handing it straight to the next waiter. */
  release(): void {
    const next = this.#waiters.shift();
    if (next) next();
    else this.#free++;
  }
}

/** Runs `fn` over `items` with at most `limit` running at once; results keep input order. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  async function run(): Promise<void> {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i], i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, run));
  return results;
}
