/**
 * Distributed `get_markets`: split a batch by code, place each code on its rendezvous home among
 * the eligible workers (so a code meets the same worker's cache batch after batch), run the
 * shares in parallel in chunks pulled as workers free up (one that runs out takes from the share
 * that will take longest), re-send what failed for an upstream reason, and merge in input order.
 *
 * @module
 */

import { isCandidate, isHealthy, offers, rendezvousOrder } from "./balancer.ts";
import { Cancellation, type CancelSignal } from "../_cancel.ts";
import type { Dispatcher, Peer } from "./dispatcher.ts";
import { isRetriableFailure } from "./dispatcher.ts";
import { RawResult } from "./raw_result.ts";
import { ErrorCode, ProtocolError } from "../errors.ts";
import {
  fetchRate,
  planPlacement,
  UPSTREAM_BUDGET,
} from "./batch_placement.ts";

/** The command name of a batch. */
export const BATCH_COMMAND = "get_markets";

/** A batch answer's `data`, exactly as the original's distributed format. */
export interface BatchData {
  results: unknown[];
  summary: { total: number; success: number; failed: number };
  distributed: {
    workers_used: number;
    elapsed_time: number;
    errors: string[] | null;
  };
}

/** Options for {@linkcode runBatch}. */
export interface BatchOptions {
  deadline: number;
  signal?: CancelSignal;
  /** Who asked, for the dispatcher's fair queueing (see `SubmitOptions.owner`). */
  owner?: string;
  /** How many rounds an item may be re-sent after an upstream failure. @default 2 */
  maxRetryRounds?: number;
  /** Called whenever the count of finished items grows. */
  onProgress?: (done: number, total: number) => void;
  /**
   * Called once per item as soon as it is final, streamed or not, with the ms since it was
   * sent to a worker (since the batch began, for an item never sent).
   */
  onFinish?: (index: number, result: unknown, elapsedMs: number) => void;
  /**
   * Streams the batch: called once per item, in completion order, as soon as it is final. The
   * outcome's `data` then has no `results`.
   */
  onItem?: (index: number, result: unknown) => number | void;
  /**
   * Without `onItem`: once the results pass this many characters of JSON the batch stops, and
   * the outcome's `tooLarge` says so. @default no limit
   */
  maxResultChars?: number;
  /**
   * Streamed batches only: flow control. `ready()` says whether the requester has read enough
   * of what it was sent for more items to be started; with `window`, it bounds the memory a
   * slow requester can make the server hold.
   */
  flow?: { ready(): boolean };
  /**
   * Items out on workers at once, at most. It keeps shares waiting here, where a worker that
   * runs out can take from the one that will take longest. @default 32
   */
  window?: number;
  /**
   * Streamed batches with `flow`, when `onItem` returns the size of what it sent: the window
   * shrinks so that a window's worth of items of the average size so far stays under this many
   * bytes, but not under 8 items nor under three per worker. @default 4 MiB
   */
  windowBytes?: number;
}

/** Reads a batch's `data`: a list, or `{"markets": [...]}`. */
export function readBatchItems(data: unknown, maxItems: number): unknown[] {
  const items = Array.isArray(data)
    ? data
    : typeof data === "object" && data !== null &&
        Array.isArray((data as { markets?: unknown }).markets)
    ? (data as { markets: unknown[] }).markets
    : undefined;
  if (!items) {
    throw new ProtocolError(
      ErrorCode.INVALID_DATA,
      "Field 'data' of get_markets must be a list of market params or {\"markets\": [...]}",
    );
  }
  if (items.length > maxItems) {
    throw new ProtocolError(
      ErrorCode.BATCH_TOO_LARGE,
      `Batch too large: ${items.length} items (limit ${maxItems})`,
    );
  }
  return items;
}

function itemError(
  item: unknown,
  error: string,
  code: string,
  retriable = false,
) {
  const c = typeof item === "object" && item !== null
    ? (item as { code?: unknown }).code
    : undefined;
  return {
    success: false,
    code: typeof c === "string" ? c : null,
    error,
    error_code: code,
    retriable,
  };
}

/**
 * Assigns each code group to a worker: its rendezvous home unless that worker already holds more
 * than its fair share (bounded-load hashing), so one worker cannot end up with a long tail.
 */
export function assignGroups(
  groups: ReadonlyMap<string, number[]>,
  workers: readonly Peer[],
  totalItems: number,
  limits: {
    weight?: ReadonlyMap<string, number>;
    capacity?: ReadonlyMap<string, number>;
    /** The name of the worker that last served a code, tried before its rendezvous home. */
    lastServed?: (code: string) => string | undefined;
  } = {},
): Map<string, number[]> {
  const shares = new Map<string, number[]>();
  const load = new Map<string, number>();
  const weightOf = (w: Peer) => limits.weight?.get(w.id) ?? w.weight;
  const totalWeight = workers.reduce((s, w) => s + weightOf(w), 0);
  // 15% headroom over the exact share keeps most codes at home while bounding the largest share;
  // what a worker can fetch before the deadline bounds it too.
  const capOf = (w: Peer) =>
    Math.min(
      Math.ceil((totalItems * weightOf(w) / totalWeight) * 1.15) + 1,
      limits.capacity?.get(w.id) ?? Infinity,
    );
  // Hash on the worker's name, which survives reconnects (its client_id does not), unless two
  // workers share a name.
  const names = new Map<string, number>();
  for (const w of workers) names.set(w.name, (names.get(w.name) ?? 0) + 1);
  const keyed = workers.map((w) => ({
    id: names.get(w.name) === 1 ? w.name : `${w.name}#${w.id}`,
    weight: weightOf(w),
    w,
  }));
  for (const [code, indexes] of groups) {
    const order = rendezvousOrder(code, keyed);
    // The worker that served the code last has it in its cache, wherever the hash points.
    const served = limits.lastServed?.(code);
    const last = served === undefined
      ? -1
      : order.findIndex((o) => o.w.name === served);
    if (last > 0) order.unshift(...order.splice(last, 1));
    // A cache hit costs the worker nothing of its rate: the fair-share cap does not apply to
    // the code's last server, only what it can fetch before the deadline.
    const room = (o: (typeof keyed)[number]) =>
      (last >= 0 && o === order[0]
        ? limits.capacity?.get(o.w.id) ?? Infinity
        : capOf(o.w)) - (load.get(o.w.id) ?? 0);
    const home = order.find((o) => room(o) >= indexes.length) ??
      order.reduce((a, b) => room(b) > room(a) ? b : a);
    load.set(home.w.id, (load.get(home.w.id) ?? 0) + indexes.length);
    const share = shares.get(home.w.id) ?? [];
    share.push(...indexes);
    shares.set(home.w.id, share);
  }
  return shares;
}

/** Items of running batches placed on each worker and not yet finished: they share its rate. */
const committed = new WeakMap<Peer, number>();
/** Items of streamed batches sent to each worker and not yet back, over every batch. */
const outstanding = new WeakMap<Peer, number>();

function add(
  counts: WeakMap<Peer, number>,
  worker: Peer | undefined,
  n: number,
): void {
  if (worker) counts.set(worker, (counts.get(worker) ?? 0) + n);
}

/**
 * How long a worker takes to return an item once its rate lets it start (ms): its upstream's
 * latency plus the round trip. Each chunk's first answer is a sample, less the rate slots of the
 * items the worker already held; samples below the estimate replace it at once (a slow first
 * call, a busy moment, are forgotten), those above raise it slowly.
 */
const latency = new WeakMap<Peer, number>();

function noteLatency(worker: Peer | undefined, ms: number): void {
  if (!worker) return;
  const seen = latency.get(worker);
  latency.set(
    worker,
    seen === undefined || ms < seen ? ms : seen * 0.9 + ms * 0.1,
  );
}

/**
 * Items a rate-limited worker is given to hold at once, over every batch: the one it fetches,
 * the one for its next slot, and as many more as its slots use up in the time a finished item's
 * replacement takes to reach it (at least half a second, or twice its measured latency). So it
 * is never idle while items wait, and holds so few that the end of a batch finishes level: no
 * worker has a queue of its own left when the others run out. `Infinity` for a worker without a
 * rate limit, 1 for one whose upstream is cooling down or out of budget now.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { itemsInHand } from "./batch.ts";
 * assert.equal(itemsInHand(2, 75), 2); // 2 req/s, 75 ms upstream: the one fetching, the next
 * assert.equal(itemsInHand(2, 1200), 6); // a slow upstream needs more ahead of it
 * assert.equal(itemsInHand(0, 75), 1);
 * assert.equal(itemsInHand(undefined, 75), Infinity);
 * ```
 */
export function itemsInHand(
  rate: number | undefined,
  latencyMs: number | undefined,
): number {
  if (rate === undefined) return Infinity;
  if (rate <= 0) return 1;
  const lead = Math.max(500, 2 * (latencyMs ?? 0));
  return Math.max(2, Math.ceil(rate * lead / 1000) + 1);
}

/**
 * How fast each worker has been finishing items lately (ms per item, smoothed): a worker that
 * answers from its cache finishes in milliseconds, one that fetches waits on its rate limit.
 */
const pace = new WeakMap<Peer, { msPerItem: number; lastAt: number }>();

function notePace(worker: Peer | undefined, sentAt: number, now: number): void {
  if (!worker) return;
  const seen = pace.get(worker);
  const since = Math.max(sentAt, seen?.lastAt ?? 0);
  const ms = Math.max(0, now - since);
  pace.set(worker, {
    msPerItem: seen ? seen.msPerItem * 0.8 + ms * 0.2 : ms,
    lastAt: now,
  });
}

/** Which worker (by name) last served each code, per dispatcher: the cache it warmed. */
const servedBy = new WeakMap<Dispatcher, Map<string, string>>();
const SERVED_CODES = 50_000;

function noteServed(dispatcher: Dispatcher, code: string, name: string): void {
  let map = servedBy.get(dispatcher);
  if (!map) servedBy.set(dispatcher, map = new Map());
  // Re-inserted at the end: the map's order is its least recently served first.
  map.delete(code);
  map.set(code, name);
  if (map.size > SERVED_CODES) map.delete(map.keys().next().value!);
}

// A worker that vanishes takes its unfinished sub-batch with it and the sub-batch starts over
// elsewhere, so large shares are cut into chunks: less work lost per failure, finer progress.
const CHUNK_ITEMS = 25;

/** The outcome of {@linkcode runBatch}. */
export interface BatchOutcome {
  /** The answer's `data`; without `results` when the batch was streamed. */
  data: BatchData | StreamedBatchData;
  /** Workers that answered at least one item. */
  workersUsed: number;
  /** No worker could take any item: the answer is `No available workers`. */
  noWorkers: boolean;
  /** Set when the results passed `maxResultChars`: the batch stopped early. */
  tooLarge?: { chars: number; limit: number };
}

/** A streamed batch answer's `data`: the items went out in frames of their own. */
export type StreamedBatchData = Omit<BatchData, "results">;

// Serialized items are measured only when a limit asks for it; a stringify per item costs about
// what parsing the worker's frame did.
function jsonChars(value: unknown): number {
  try {
    return JSON.stringify(value)?.length ?? 4;
  } catch {
    return 0;
  }
}

/**
 * Runs a distributed batch over the dispatcher's workers. With `onItem`, each item leaves as it
 * finishes and nothing is kept: memory holds only the items in flight.
 */
export async function runBatch(
  dispatcher: Dispatcher,
  items: readonly unknown[],
  options: BatchOptions,
): Promise<BatchOutcome> {
  const started = dispatcher.clock.now();
  const onItem = options.onItem;
  // Streamed batches keep no results; retriable failures wait here for a later round.
  const results: unknown[] | undefined = onItem
    ? undefined
    : new Array(items.length);
  const lastFailure = new Map<number, unknown>();
  // When each item last left for a worker, for its latency; only kept for whoever asks.
  const itemSentAt = new Float64Array(options.onFinish ? items.length : 0);
  const errors: string[] = [];
  const used = new Set<string>();
  const avoid = new Set<string>();
  // Our own stop, for an answer grown too large, besides the requester's.
  const stop = new Cancellation();
  const onAbort = () => stop.abort();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  if (options.signal?.aborted) stop.abort();
  const flow = options.onItem ? options.flow : undefined;
  const maxWindow = options.window ?? 32;
  const windowBytes = options.windowBytes ?? 4 * 1024 * 1024;
  let sentBytes = 0;
  let sentItems = 0;
  // Workers this round can place items on, and the items the rate-limited ones among them hold
  // at once (set by each round and as latencies are learnt).
  let placing = 1;
  let hands = 0;
  // Items finished at once wait in this process until sent: with large items (a full daily
  // history is ~0.5 MB) the window is what bounds the server's memory, so it counts bytes too.
  // But it never holds back what rate-limited workers need in hand (`itemsInHand`), or they
  // idle between their rate-limit slots while items wait: they bring items back no faster than
  // their rates, whatever the window.
  const windowNow = () =>
    Math.max(
      hands,
      sentItems === 0 ? maxWindow : Math.min(
        maxWindow,
        Math.max(
          8,
          3 * placing,
          Math.floor(windowBytes * sentItems / sentBytes),
        ),
      ),
    );
  let out = 0;
  let wake: (() => void) | undefined;
  const release = (n: number) => {
    out -= n;
    wake?.();
  };
  // Released items wake it at once; the timer re-checks the requester's reading and the
  // workers that other batches share.
  const nap = async () => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await new Promise<void>((resolve) => {
      wake = resolve;
      timer = setTimeout(resolve, 10);
    });
    clearTimeout(timer);
    wake = undefined;
  };
  /**
   * Each worker's share waits in a queue of its own, and a worker is sent its next
   * chunk only while it holds few items (over every batch), so what it holds is what it is
   * about to fetch. A worker that ran out takes from the back of the queue that will take longest
   * to drain, when it would fetch those items sooner than their home would reach them: the job
   * ends when the workers do, not when the largest share does. A worker that answers from its
   * cache drains fast, so its queue is left to it and its cache.
   */
  const pullChunks = async (
    shares: Map<string, number[]>,
    runChunk: (workerId: string, indexes: number[]) => Promise<void>,
    usable: ReadonlySet<string>,
  ): Promise<void> => {
    const queues = new Map<string, number[]>();
    for (const [id, indexes] of shares) queues.set(id, [...indexes]);
    const running: Promise<void>[] = [];
    const open = (id: string) => {
      const w = dispatcher.registry.get(id);
      return w && usable.has(id) && !avoid.has(id) && !w.blocked &&
          !w.draining
        ? w
        : undefined;
    };
    const held = (w: Peer) => outstanding.get(w) ?? 0;
    const hand = (w: Peer) =>
      itemsInHand(
        fetchRate(w.upstream, dispatcher.clock.now()),
        latency.get(w),
      );
    // A chunk fills a rate-limited worker's hand; the others get an even part of the window
    // (read now: the window shrinks once the items' sizes are known).
    const size = (w: Peer) =>
      hand(w) === Infinity
        ? Math.max(
          1,
          Math.min(CHUNK_ITEMS, Math.floor(windowNow() / placing)),
        )
        : hand(w) - held(w);
    const room = (w: Peer) =>
      hand(w) === Infinity ? Infinity : hand(w) - held(w);
    const msPerItem = (w: Peer, cached: boolean) => {
      const rate = fetchRate(w.upstream, dispatcher.clock.now());
      const fetching = rate === undefined
        ? 0
        : rate > 0
        ? 1000 / rate
        : Infinity;
      return cached ? pace.get(w)?.msPerItem ?? fetching : fetching;
    };
    const next = ():
      | { worker: Peer; from: number[]; n: number; take?: number[] }
      | undefined => {
      const takers = [...new Set([...queues.keys(), ...usable])]
        .map(open)
        .filter((w): w is Peer =>
          w !== undefined && isCandidate(w, BATCH_COMMAND) && room(w) > 0
        )
        .sort((a, b) => held(a) / a.weight - held(b) / b.weight);
      const own = takers.find((w) => (queues.get(w.id)?.length ?? 0) > 0);
      if (own) {
        const from = queues.get(own.id)!;
        return { worker: own, from, n: Math.min(size(own), from.length) };
      }
      const thief = takers[0];
      if (!thief) return undefined;
      const served = servedBy.get(dispatcher);
      let best: { from: number[]; finish: number; cold: number[] } | undefined;
      for (const [id, from] of queues) {
        if (from.length === 0 || id === thief.id) continue;
        const home = open(id);
        // A code its home served before is likely in its cache: it stays, unless the home
        // cannot take it any more.
        const cold = home
          ? from.filter((i) => served?.get(codeOf(items[i])) !== home.name)
          : from;
        if (cold.length === 0) continue;
        const finish = home
          ? (held(home) + from.length) * msPerItem(home, true)
          : Infinity;
        if (!best || finish > best.finish) best = { from, finish, cold };
      }
      if (!best) return undefined;
      const n = Math.min(
        size(thief),
        Math.ceil(best.from.length / 2),
        best.cold.length,
      );
      const mine = (held(thief) + n) * msPerItem(thief, false);
      return best.finish > mine
        ? { worker: thief, from: best.from, n, take: best.cold.slice(-n) }
        : undefined;
    };
    while (!stop.aborted) {
      hands = 0;
      for (const id of usable) {
        const w = open(id);
        if (w && hand(w) !== Infinity) hands += hand(w);
      }
      let queued = 0;
      for (const q of queues.values()) queued += q.length;
      if (queued === 0) break;
      const pick = next();
      if (!pick && ![...queues.keys(), ...usable].some(open)) {
        // Nobody left to pull: the dispatcher re-homes what it can, or says why it cannot.
        for (const [id, from] of queues) {
          if (from.length === 0) continue;
          out += from.length;
          running.push(runChunk(id, from.splice(0)));
        }
        break;
      }
      if (
        pick && (out === 0 || out + pick.n <= windowNow()) &&
        (flow?.ready() ?? true)
      ) {
        const { worker, from, n, take } = pick;
        let indexes: number[];
        if (take) {
          const taken = new Set(take);
          indexes = take;
          from.splice(0, from.length, ...from.filter((i) => !taken.has(i)));
        } else indexes = from.splice(0, n);
        out += indexes.length;
        running.push(runChunk(worker.id, indexes));
        continue;
      }
      await nap();
    }
    for (const from of queues.values()) {
      for (const i of from.splice(0)) {
        finish(
          i,
          itemError(items[i], "Request cancelled", ErrorCode.CANCELLED),
        );
      }
    }
    await Promise.all(running);
  };
  const limit = options.maxResultChars;
  let chars = 0;
  let tooLarge = false;
  let done = 0;
  let success = 0;
  const inProgress = new Map<string, number>();
  const report = () => {
    let partial = 0;
    for (const n of inProgress.values()) partial += n;
    options.onProgress?.(Math.min(done + partial, items.length), items.length);
  };
  const finish = (index: number, result: unknown) => {
    lastFailure.delete(index);
    done++;
    if (options.onFinish) {
      const now = dispatcher.clock.now();
      options.onFinish(index, result, now - (itemSentAt[index] || started));
    }
    if (
      typeof result === "object" && result !== null &&
      (result as { success?: unknown }).success === true
    ) success++;
    if (onItem) {
      const bytes = onItem(index, result);
      if (typeof bytes === "number" && bytes > 0) {
        sentBytes += bytes;
        sentItems++;
      }
      return;
    }
    results![index] = result;
    if (limit !== undefined && !tooLarge) {
      chars += jsonChars(result) + 1;
      if (chars > limit) {
        tooLarge = true;
        stop.abort();
      }
    }
  };

  let pending: number[] = [];
  const invalid: number[] = [];
  items.forEach((item, i) => {
    if (typeof item !== "object" || item === null || Array.isArray(item)) {
      invalid.push(i);
    } else pending.push(i);
  });
  const eligibleOf = () => {
    // The same health as single requests (isHealthy): no item to a worker with recent timeouts
    // or silent while holding work, unless no healthy worker is left.
    const offering = dispatcher.registry.all().filter((w) =>
      offers(w, BATCH_COMMAND) && !w.draining
    );
    let all = offering.filter(isHealthy);
    if (all.length === 0) all = offering.filter((w) => w.mayProbe);
    const open = all.filter((w) => !avoid.has(w.id) && !w.blocked);
    return open.length > 0 ? open : all.filter((w) => !avoid.has(w.id));
  };
  // After a restart a batch can arrive before the workers are back: give them the grace period.
  if (invalid.length === 0 && pending.length > 0 && eligibleOf().length === 0) {
    await dispatcher.whenOffered(
      (w) => eligibleOf().includes(w),
      dispatcher.graceFor(BATCH_COMMAND, options.deadline),
    );
  }
  // Nothing can run: say so in one answer, before any item has gone out on its own.
  if (invalid.length === 0 && pending.length > 0 && eligibleOf().length === 0) {
    options.signal?.removeEventListener("abort", onAbort);
    return {
      workersUsed: 0,
      noWorkers: true,
      data: {
        ...(onItem ? {} : { results: [] }),
        summary: { total: items.length, success: 0, failed: items.length },
        distributed: { workers_used: 0, elapsed_time: 0, errors: null },
      },
    };
  }
  for (const i of invalid) {
    const item = items[i];
    finish(
      i,
      itemError(
        item,
        `Market params must be an object: got ${
          Array.isArray(item) ? "array" : String(item)
        }`,
        "INVALID_PARAMS",
      ),
    );
  }

  const maxRounds = 1 + (options.maxRetryRounds ?? 2);
  for (
    let round = 0;
    round < maxRounds && pending.length > 0 && !stop.aborted;
    round++
  ) {
    const eligible = eligibleOf();
    if (eligible.length === 0) {
      const why = round === 0
        ? "No available workers"
        : "No other worker could take the items";
      for (const i of pending) {
        finish(
          i,
          itemError(
            items[i],
            why,
            round === 0 ? ErrorCode.NO_WORKERS : ErrorCode.WORKER_LOST,
          ),
        );
      }
      pending = [];
      break;
    }
    const groups = new Map<string, number[]>();
    for (const i of pending) {
      const code = String((items[i] as { code?: unknown }).code ?? "");
      const g = groups.get(code);
      if (g) g.push(i);
      else groups.set(code, [i]);
    }
    // What the workers' upstreams allow before the deadline (their heartbeats say).
    const now = dispatcher.clock.now();
    const plan = planPlacement(
      eligible,
      now,
      options.deadline,
      (w) => committed.get(w) ?? 0,
    );
    let admitted = pending.length;
    if (plan.total < pending.length) {
      // Whole codes in input order while they fit; the rest are refused now, retriable, instead
      // of waiting to time out behind a host that is cooling down or out of budget.
      let room = plan.total;
      let refusedNoted = false;
      admitted = 0;
      for (const [code, indexes] of groups) {
        if (indexes.length <= room) {
          room -= indexes.length;
          admitted += indexes.length;
          continue;
        }
        groups.delete(code);
        const why = plan.usable.length === 0
          ? `No worker can fetch before the deadline: every worker's upstream is cooling down or out of budget${
            plan.earliest && plan.earliest > now
              ? ` (the first is free again at ${
                new Date(plan.earliest).toISOString()
              })`
              : ""
          }`
          : `Not sent: the workers' upstream rates and budgets allow about ${plan.total} of ${pending.length} items before the deadline; ask again later, or with a longer timeout`;
        if (!refusedNoted) errors.push(why);
        refusedNoted = true;
        for (const i of indexes) {
          finish(i, {
            ...itemError(items[i], why, UPSTREAM_BUDGET, true),
            ...(plan.earliest ? { retry_at: plan.earliest } : {}),
          });
        }
      }
    }
    if (admitted === 0) {
      pending = [];
      break;
    }
    const usableIds = new Set(plan.usable.map((w) => w.id));
    const unusable = eligible.filter((w) => !usableIds.has(w.id)).map((w) =>
      w.id
    );
    placing = Math.max(1, plan.usable.length);
    const served = servedBy.get(dispatcher);
    const shares = assignGroups(groups, plan.usable, admitted, {
      ...plan,
      lastServed: served ? (code) => served.get(code) : undefined,
    });
    const retry: number[] = [];
    let chunkCount = 0;
    // One chunk, to `workerId` first (whoever else is free when it has no free slot).
    const runChunk = async (
      workerId: string,
      indexes: number[],
    ): Promise<void> => {
      const c = chunkCount++;
      const sentAt = dispatcher.clock.now();
      if (options.onFinish) { for (const i of indexes) itemSentAt[i] = sentAt; }
      const home = dispatcher.registry.get(workerId);
      // The chunk's first item waits behind what the worker held: its first answer, less those
      // items' rate slots, measures the worker's latency.
      const rate = fetchRate(home?.upstream, sentAt);
      const ahead = home && rate
        ? (outstanding.get(home) ?? 0) * 1000 / rate
        : 0;
      let timing = home !== undefined;
      add(outstanding, home, indexes.length);
      add(committed, home, indexes.length);
      // Spill order: home first, then whoever else is free, by least load.
      const preferred = [
        workerId,
        ...plan.usable.filter((w) =>
          w.id !== workerId && isCandidate(w, BATCH_COMMAND)
        )
          .sort((a, b) => a.inFlight / a.weight - b.inFlight / b.weight).map((
            w,
          ) => w.id),
      ];
      const key = `${round}:${c}`;
      // What the chunk's current attempt works on. Items the worker streams back as they finish
      // are settled at once and leave it, so a worker that dies mid-chunk costs only the rest.
      let current = indexes;
      const settled = new Set<number>();
      const blockedOn = new Map<string, number>();
      let accepted = 0;
      const accept = (i: number, result: unknown, workerId: string) => {
        settled.add(i);
        accepted++;
        release(1);
        add(outstanding, home, -1);
        const worker = workerId ? dispatcher.registry.get(workerId) : undefined;
        if (home) notePace(worker, sentAt, dispatcher.clock.now());
        if (timing && worker === home) {
          noteLatency(
            home,
            Math.max(0, dispatcher.clock.now() - sentAt - ahead),
          );
        }
        timing = false;
        if (worker && (result as { success?: unknown })?.success === true) {
          noteServed(dispatcher, codeOf(items[i]), worker.name);
        }
        if (workerId) used.add(workerId);
        if (isRetriableFailure(result) && round + 1 < maxRounds) {
          blockedOn.set(workerId, (blockedOn.get(workerId) ?? 0) + 1);
          retry.push(i);
          lastFailure.set(i, annotate(result, workerId));
        } else {
          finish(i, annotate(result, workerId));
        }
      };
      const outcome = await dispatcher.submit(
        BATCH_COMMAND,
        indexes.map((i) => items[i]),
        {
          deadline: options.deadline,
          owner: options.owner,
          preferred,
          // Workers that cannot fetch before the deadline take nothing, not even spill-over.
          exclude: [...avoid, ...unusable],
          signal: stop,
          onProgress: ({ done: d, item, worker }) => {
            const i = item ? current[item.index] : undefined;
            if (i !== undefined && !settled.has(i)) {
              accept(i, item!.result, worker ?? "");
            } else if (!item) inProgress.set(key, Math.min(d, current.length));
            report();
          },
          resend: (lost) => {
            current = current.filter((i) => !settled.has(i));
            errors.push(
              `${current.length} items re-sent: worker ${lost.worker} lost them (${lost.reason})`,
            );
            return current.map((i) => items[i]);
          },
        },
      );
      inProgress.delete(key);
      add(committed, home, -indexes.length);
      const open = current.filter((i) => !settled.has(i));
      if (!outcome.ok) {
        if (open.length > 0 && !tooLarge) {
          errors.push(
            `${open.length} items failed${
              outcome.worker ? ` on worker ${outcome.worker.id}` : ""
            }: ${outcome.error.message}`,
          );
        }
        for (const i of open) {
          finish(
            i,
            itemError(items[i], outcome.error.message, outcome.error.code),
          );
        }
      } else {
        const worker = outcome.worker;
        used.add(worker.id);
        const list = outcome.result;
        if (!Array.isArray(list) || list.length !== current.length) {
          const got = Array.isArray(list)
            ? `${list.length} results`
            : typeof list;
          const message =
            `Worker ${worker.id} answered ${got} for ${current.length} items`;
          errors.push(message);
          for (const i of open) {
            finish(i, itemError(items[i], message, ErrorCode.WORKER_ERROR));
          }
        } else {
          let missing = 0;
          current.forEach((i, k) => {
            if (settled.has(i)) return;
            // A streaming worker puts null where it already sent the item; an item whose
            // report never arrived (lost between servers) is missing, not a result.
            if (list[k] === null || list[k] === undefined) {
              missing++;
              const lost = itemError(
                items[i],
                `Worker ${worker.id} streamed this item but its report never arrived`,
                ErrorCode.WORKER_LOST,
              );
              if (round + 1 < maxRounds) {
                retry.push(i);
                lastFailure.set(i, lost);
              } else finish(i, lost);
            } else accept(i, list[k], worker.id);
          });
          if (missing > 0) {
            errors.push(
              `${missing} items re-sent: their streamed reports from worker ${worker.id} never arrived`,
            );
          }
        }
      }
      for (const [workerId, blocked] of blockedOn) {
        // Steer this batch (and, for a while, others) around a worker whose upstream pushes back.
        avoid.add(workerId);
        const worker = dispatcher.registry.get(workerId);
        if (worker) worker.blockedUntil = dispatcher.clock.now() + 60_000;
        errors.push(
          `${blocked} items re-sent: upstream of worker ${workerId} failed`,
        );
      }
      release(indexes.length - accepted);
      add(outstanding, home, accepted - indexes.length);
      report();
    };
    await pullChunks(shares, runChunk, usableIds);
    pending = retry.sort((a, b) => a - b);
  }
  for (const i of pending) {
    finish(
      i,
      lastFailure.get(i) ??
        itemError(items[i], "Request cancelled", ErrorCode.CANCELLED),
    );
  }
  options.signal?.removeEventListener("abort", onAbort);

  const summary = {
    total: items.length,
    success,
    failed: items.length - success,
  };
  const distributed = {
    workers_used: used.size,
    elapsed_time: Math.round((dispatcher.clock.now() - started) / 10) / 100,
    errors: errors.length > 0 ? errors : null,
  };
  return {
    workersUsed: used.size,
    noWorkers: false,
    tooLarge: tooLarge ? { chars, limit: limit! } : undefined,
    data: results
      ? { results, summary, distributed }
      : { summary, distributed },
  };
}

function codeOf(item: unknown): string {
  return String((item as { code?: unknown } | null)?.code ?? "");
}

function annotate(result: unknown, workerId: string): unknown {
  if (result instanceof RawResult) return result.annotated(workerId);
  if (typeof result !== "object" || result === null || Array.isArray(result)) {
    return result;
  }
  if ("processed_by" in result) return result;
  return { ...result, processed_by: workerId };
}
