/**
 * A front for market commands: something (a local store) that may answer `get_market` and
 * whole `get_markets` batches before the workers, and keeps what the workers bring back.
 *
 * @module
 */

/** Answers market requests locally when it can. */
export interface MarketFront {
  /** `get_market` results for each item, in order, or `undefined` when any one is not held. */
  lookup(items: readonly unknown[]): Promise<unknown[] | undefined>;
  /** A worker's successful or failed result for `item`, to keep what is worth keeping. */
  keep(item: unknown, result: unknown): void;
}
