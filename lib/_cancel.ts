// A cancellation flag for the broker's per-request hot path. An AbortController with its
// EventTarget machinery costs more than the rest of a request's bookkeeping; the dispatcher needs
// only `aborted` and abort listeners, which this provides (and an AbortSignal fits the same
// interface, for callers that have one).

/** What the dispatcher needs of a cancellation signal; an `AbortSignal` fits too. */
export interface CancelSignal {
  /** Whether it was aborted. */
  readonly aborted: boolean;
  /** Calls `listener` on abort. */
  addEventListener(
    type: "abort",
    listener: () => void,
    options?: { once?: boolean },
  ): void;
  /** Stops calling `listener`. */
  removeEventListener(type: "abort", listener: () => void): void;
}

/** A one-shot cancellation: `abort()` calls each listener once. */
export class Cancellation implements CancelSignal {
  aborted = false;
  #listeners: (() => void)[] | undefined;

  addEventListener(_type: "abort", listener: () => void): void {
    (this.#listeners ??= []).push(listener);
  }

  removeEventListener(_type: "abort", listener: () => void): void {
    const listeners = this.#listeners;
    if (!listeners) return;
    const i = listeners.indexOf(listener);
    if (i >= 0) listeners.splice(i, 1);
  }

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    const listeners = this.#listeners ?? [];
    this.#listeners = undefined;
    for (const listener of listeners) listener();
  }
}
