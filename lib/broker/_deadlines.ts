// Deadlines for many in-flight items, with one timer per distinct duration instead of one timer
// per item. Requests mostly share a few timeouts (the server default, a client's own), so items
// of one duration expire in the order they were added: a linked list per duration, kept in due
// order, with a single timer armed for its head. Removing an item is O(1); arming and clearing a
// timer per request was a tenth of the server's CPU under load.

/** One deadline, and its own handle: no closure per deadline. */
class Node<T> implements DeadlineHandle {
  prev?: Node<T> = undefined;
  next?: Node<T> = undefined;
  removed = false;
  constructor(
    readonly item: T,
    /** Due time on the monotonic clock (`performance.now()`), in ms. */
    readonly due: number,
    readonly lane: Lane<T>,
  ) {}

  cancel(): void {
    if (this.removed) return;
    this.removed = true;
    const lane = this.lane;
    if (this.prev) this.prev.next = this.next;
    else lane.head = this.next;
    if (this.next) this.next.prev = this.prev;
    else lane.tail = this.prev;
    this.prev = this.next = undefined;
    // The lane's timer stays armed even when the lane empties: it wakes up once, re-arms for
    // the new head or retires the lane. Clearing and re-creating it per request under light
    // load would cost as much as the per-request timers this class replaces.
  }
}

interface Lane<T> {
  key: number;
  head?: Node<T>;
  tail?: Node<T>;
  timer?: unknown;
  /** When the armed timer fires, on the monotonic clock. */
  armedFor: number;
}

/** A handle to cancel one deadline. */
export interface DeadlineHandle {
  cancel(): void;
}

/**
 * The monotonic clock and the one-shot timer a {@linkcode Deadlines} runs on. Tests pass a manual
 * one so that "the head was cancelled before it fell due" does not depend on how busy the machine is.
 */
export interface DeadlineTimers {
  /** Milliseconds on a monotonic clock. */
  now(): number;
  /** Arms a one-shot timer; what it returns is only ever passed back to `clearTimeout`. */
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
}

const REAL_TIMERS: DeadlineTimers = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id as ReturnType<typeof setTimeout>),
};

/** Calls `onExpire(item)` once `delayMs` has passed for it, unless its handle was cancelled. */
export class Deadlines<T> {
  #lanes = new Map<number, Lane<T>>();
  #onExpire: (item: T) => void;
  #timers: DeadlineTimers;

  constructor(
    onExpire: (item: T) => void,
    timers: DeadlineTimers = REAL_TIMERS,
  ) {
    this.#onExpire = onExpire;
    this.#timers = timers;
  }

  add(item: T, delayMs: number): DeadlineHandle {
    const delay = Math.max(0, delayMs);
    // Lanes by duration in 100 ms steps: a deadline computed a millisecond later must not open
    // a lane (and a timer) of its own. Order within a lane is kept exact below.
    const key = Math.round(delay / 100);
    let lane = this.#lanes.get(key);
    if (!lane) {
      lane = { key, armedFor: Infinity };
      this.#lanes.set(key, lane);
    }
    const node = new Node(item, this.#timers.now() + delay, lane);
    // Same duration, later start: almost always the new tail. Walk back for the rare exception.
    let after = lane.tail;
    while (after && after.due > node.due) after = after.prev;
    if (after) {
      node.prev = after;
      node.next = after.next;
      if (after.next) after.next.prev = node;
      else lane.tail = node;
      after.next = node;
    } else {
      node.next = lane.head;
      if (lane.head) lane.head.prev = node;
      else lane.tail = node;
      lane.head = node;
    }
    if (lane.timer === undefined) this.#arm(lane);
    else if (node.due < lane.armedFor) {
      this.#timers.clearTimeout(lane.timer);
      this.#arm(lane);
    }
    return node;
  }

  #arm(lane: Lane<T>): void {
    const head = lane.head!;
    lane.armedFor = head.due;
    lane.timer = this.#timers.setTimeout(
      () => this.#fire(lane),
      Math.max(0, head.due - this.#timers.now()),
    );
  }

  #fire(lane: Lane<T>): void {
    lane.timer = undefined;
    const now = this.#timers.now();
    while (lane.head && lane.head.due <= now + 1) {
      const node = lane.head;
      node.cancel();
      this.#onExpire(node.item);
    }
    if (this.#lanes.get(lane.key) !== lane || lane.timer !== undefined) return;
    if (lane.head) this.#arm(lane);
    else this.#lanes.delete(lane.key);
  }

  /** Whether a timer is still armed (an emptied lane keeps its timer until it fires). */
  get armed(): boolean {
    for (const lane of this.#lanes.values()) {
      if (lane.timer !== undefined) return true;
    }
    return false;
  }

  /** Stops every timer; nothing expires afterwards. Call it when the owner closes. */
  close(): void {
    for (const lane of this.#lanes.values()) {
      if (lane.timer !== undefined) this.#timers.clearTimeout(lane.timer);
    }
    this.#lanes.clear();
  }
}
