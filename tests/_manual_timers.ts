import type { DeadlineTimers } from "../lib/broker/_deadlines.ts";

/**
 * A clock and timers that move only when the test says so: `advance(ms)` runs every timer that
 * falls due, in due order, with `now()` reading each one's due time as it runs.
 */
export class ManualTimers implements DeadlineTimers {
  #now = 0;
  #next = 1;
  #timers = new Map<number, { due: number; fn: () => void }>();

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => void, ms: number): number {
    const id = this.#next++;
    this.#timers.set(id, { due: this.#now + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(id: unknown): void {
    if (typeof id !== "number") return;
    this.#timers.delete(id);
  }

  /** How many timers are pending. */
  get pending(): number {
    return this.#timers.size;
  }

  advance(ms: number): void {
    const until = this.#now + ms;
    for (;;) {
      let first: [number, { due: number; fn: () => void }] | undefined;
      for (const entry of this.#timers) {
        if (entry[1].due <= until && (!first || entry[1].due < first[1].due)) {
          first = entry;
        }
      }
      if (!first) break;
      this.#timers.delete(first[0]);
      this.#now = Math.max(this.#now, first[1].due);
      first[1].fn();
    }
    this.#now = until;
  }
}
