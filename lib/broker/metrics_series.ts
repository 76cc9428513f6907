/**
 * Recording for `/metrics`: per command, a count per outcome and a latency histogram, kept as
 * plain numbers (the request path bumps them; `metrics_exposition.ts` renders them when
 * scraped). Label cardinality is bounded: see {@linkcode CommandSeries}.
 *
 * @module
 */

/** Latency histogram bucket bounds, in seconds. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
  120,
  300,
];
const BUCKETS_MS = LATENCY_BUCKETS.map((s) => s * 1000);

/** The command label for commands without a series of their own. */
export const OTHER_COMMAND = "other";

/** One command's counts: answers by outcome, and a latency histogram in ms. */
export class Series {
  /** Answers by outcome (`success` or a wire error code). */
  outcomes: Map<string, number> = new Map();
  /** Answers per latency bucket (not cumulative); the last is past the largest bound. */
  buckets: Float64Array = new Float64Array(BUCKETS_MS.length + 1);
  /** Latencies summed, in ms. */
  sum = 0;
  /** Answers. */
  count = 0;
}

/**
 * The series of every command. A command gets its own series only when it succeeded or
 * `isKnown` says a worker or the server offers it, and only up to `maxCommands` of them; the
 * rest count as `other`.
 */
export class CommandSeries {
  #series = new Map<string, Series>();
  #other = new Series();
  #maxCommands: number;
  #isKnown: (command: string) => boolean;

  /** Up to `maxCommands` series, for commands `isKnown` names or that succeeded. */
  constructor(maxCommands: number, isKnown: (command: string) => boolean) {
    this.#maxCommands = maxCommands;
    this.#isKnown = isKnown;
  }

  /** Counts one answer of `command`: `outcome` is `success` or its error code. */
  record(command: string, outcome: string, elapsedMs: number): void {
    const series = this.#seriesOf(command, outcome === "success");
    series.outcomes.set(outcome, (series.outcomes.get(outcome) ?? 0) + 1);
    let i = 0;
    while (i < BUCKETS_MS.length && elapsedMs > BUCKETS_MS[i]) i++;
    series.buckets[i]++;
    series.sum += elapsedMs;
    series.count++;
  }

  /** Every command's series, `other` last when it counted anything. */
  *all(): Iterable<[string, Series]> {
    yield* this.#series;
    if (this.#other.count > 0) yield [OTHER_COMMAND, this.#other];
  }

  #seriesOf(command: string, succeeded: boolean): Series {
    const known = this.#series.get(command);
    if (known) return known;
    if (
      this.#series.size < this.#maxCommands && command !== OTHER_COMMAND &&
      (succeeded || this.#isKnown(command))
    ) {
      const series = new Series();
      this.#series.set(command, series);
      return series;
    }
    return this.#other;
  }
}
