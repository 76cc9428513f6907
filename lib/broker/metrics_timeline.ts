/**
 * The dashboard's per-second timeline of answers: how many, how many failed, mean and largest
 * latency, in a ring of slots that the answer path fills and the dashboard reads. A batch counts
 * as its items, each when it finishes.
 *
 * @module
 */

/**
 * Per-second totals, oldest first, ending at `end` (epoch seconds, exclusive). A batch counts
 * as its items, each when it finishes, never as one answer at its end.
 */
export interface Timeline {
  /** The second after the last one, in epoch seconds. */
  end: number;
  /** Requests and batch items answered per second. */
  requests: number[];
  /** Requests and batch items answered with a failure per second. */
  failures: number[];
  /** Mean latency per second in ms; null for a second without requests. */
  mean_ms: (number | null)[];
  /** Largest latency per second in ms; null for a second without requests. */
  max_ms: (number | null)[];
}

/** Answers as the dashboard counts them: each batch item as one, in place of its batch. */
export interface AnswerCounts {
  /** Requests and batch items answered with success. */
  answered: number;
  /** Requests and batch items that failed, and rejected frames. */
  failed: number;
}

/** The ring of per-second slots; see the module doc. */
export class AnswerTimeline {
  #slots: number;
  /** The slot being filled, as an epoch second. */
  #second: number;
  #requests: Float64Array;
  #failures: Float64Array;
  #latencySum: Float64Array;
  #latencyMax: Float64Array;
  /** Answers without a latency of their own (items of a batch that ended before they ran). */
  #unmeasured: Float64Array;
  #answers: AnswerCounts = { answered: 0, failed: 0 };

  /** `slots` seconds of history, starting at `now` (epoch ms). */
  constructor(slots: number, now: number) {
    this.#slots = slots;
    this.#requests = new Float64Array(slots);
    this.#failures = new Float64Array(slots);
    this.#latencySum = new Float64Array(slots);
    this.#latencyMax = new Float64Array(slots);
    this.#unmeasured = new Float64Array(slots);
    this.#second = Math.floor(now / 1000);
  }

  /** Counts one answer (a request's or a batch item's) at `now`, with its latency if it has one. */
  add(failed: boolean, elapsedMs: number | undefined, now: number): void {
    const second = Math.floor(now / 1000);
    if (second !== this.#second) this.#advance(second);
    const slot = second % this.#slots;
    this.#requests[slot]++;
    if (elapsedMs !== undefined) {
      this.#latencySum[slot] += elapsedMs;
      if (elapsedMs > this.#latencyMax[slot]) {
        this.#latencyMax[slot] = elapsedMs;
      }
    } else this.#unmeasured[slot]++;
    if (failed) {
      this.#failures[slot]++;
      this.#answers.failed++;
    } else this.#answers.answered++;
  }

  /** Answers so far. */
  answers(): AnswerCounts {
    return { ...this.#answers };
  }

  /** The last `seconds` (at most the ring's length) up to `now` (epoch ms). */
  read(seconds: number, now: number): Timeline {
    const second = Math.floor(now / 1000);
    if (second > this.#second) this.#advance(second);
    const n = Math.min(seconds, this.#slots);
    const out: Timeline = {
      end: this.#second + 1,
      requests: [],
      failures: [],
      mean_ms: [],
      max_ms: [],
    };
    for (let s = this.#second - n + 1; s <= this.#second; s++) {
      const slot = ((s % this.#slots) + this.#slots) % this.#slots;
      out.requests.push(this.#requests[slot]);
      out.failures.push(this.#failures[slot]);
      const count = this.#requests[slot] - this.#unmeasured[slot];
      out.mean_ms.push(
        count ? Math.round(this.#latencySum[slot] / count * 100) / 100 : null,
      );
      out.max_ms.push(
        count ? Math.round(this.#latencyMax[slot] * 100) / 100 : null,
      );
    }
    return out;
  }

  #advance(second: number): void {
    if (second < this.#second) return; // a clock step back: keep filling the current slot
    const gap = Math.min(second - this.#second, this.#slots);
    for (let s = 1; s <= gap; s++) {
      const slot = (this.#second + s) % this.#slots;
      this.#requests[slot] = 0;
      this.#failures[slot] = 0;
      this.#latencySum[slot] = 0;
      this.#latencyMax[slot] = 0;
      this.#unmeasured[slot] = 0;
    }
    this.#second = second;
  }
}
