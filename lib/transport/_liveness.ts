/**
 * Whether the peer of a connection is still there, with one timer per connection: after half the
 * idle timeout without a byte from the peer it is pinged, and only if it then stays silent for
 * the other half is it given up. A peer that answers pings is never given up, however long its
 * connection carries no messages (a request waiting minutes for its answer, say).
 *
 * @module
 */

/** Time and timers, injectable so that tests run on a clock of their own. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
}

/** The system's clock and timers. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id as number),
};

/** What {@linkcode Liveness} does about a quiet peer. */
export interface LivenessActions {
  /** Sends a ping: any answer (or any byte) counts as heard. */
  ping(): void;
  /** The peer did not answer a ping within half the idle timeout. */
  expire(silentMs: number): void;
}

/** One connection's liveness; see the module doc. */
export class Liveness {
  #idleMs: number;
  #actions: LivenessActions;
  #clock: Clock;
  #lastHeard: number;
  /** When the unanswered ping went out; undefined when none is out. */
  #pingedAt: number | undefined;
  #timer: unknown;
  #stopped = false;

  constructor(idleMs: number, actions: LivenessActions, clock = systemClock) {
    this.#idleMs = idleMs;
    this.#actions = actions;
    this.#clock = clock;
    this.#lastHeard = clock.now();
    this.#arm(idleMs / 2);
  }

  /** The peer sent something: cheap, called on every read. */
  heard(): void {
    this.#lastHeard = this.#clock.now();
  }

  /** No more pings or expiry. */
  stop(): void {
    this.#stopped = true;
    this.#clock.clearTimeout(this.#timer);
  }

  #arm(ms: number): void {
    if (this.#stopped) return;
    this.#timer = this.#clock.setTimeout(() => this.#check(), ms);
  }

  #check(): void {
    if (this.#stopped) return;
    const now = this.#clock.now();
    const half = this.#idleMs / 2;
    if (this.#pingedAt !== undefined && this.#lastHeard >= this.#pingedAt) {
      this.#pingedAt = undefined;
    }
    const quiet = now - this.#lastHeard;
    if (quiet < half) return this.#arm(half - quiet);
    if (this.#pingedAt === undefined) {
      // Half the timeout without a word: ask, and give the answer the other half.
      this.#pingedAt = now;
      this.#actions.ping();
      return this.#arm(half);
    }
    const waited = now - this.#pingedAt;
    if (waited < half) return this.#arm(half - waited);
    this.stop();
    this.#actions.expire(quiet);
  }
}
