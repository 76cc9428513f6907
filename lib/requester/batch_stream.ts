/**
 * A streamed batch on the requester's side: items queue as they arrive and leave as the caller
 * iterates; while the caller falls behind, the socket is not read (so the server starts no new
 * items), with a short read now and then so pings are still answered.
 *
 * @module
 */

import type { ClientSocket } from "../transport/_connect.ts";
import type { RequesterAnswer } from "../protocol.ts";

/** One finished item of a streamed batch. */
export interface StreamedItem {
  /** The item's position in the batch's input list. */
  index: number;
  /** Its `get_market` result (or error object). */
  result: unknown;
  /**
   * The item's whole frame as text, when it was kept as its frame: a caller that renders the
   * item itself can read it without the parse `result` costs (`result` is parsed on first use).
   */
  readonly text?: string;
  /** The frame's UTF-8 bytes, when it arrived as a large frame and was kept undecoded. */
  bytes?: Uint8Array;
}

/**
 * A streamed batch in progress: iterate it for the items as they finish (completion order);
 * `answer` resolves with the final answer (`summary` and `distributed`, no `results`).
 */
export interface BatchStream extends AsyncIterable<StreamedItem> {
  /** The final answer (leaving the loop early does not stop the batch). */
  readonly answer: Promise<RequesterAnswer>;
}

// Items a stream's caller may fall behind by before the socket stops being read, and where
// reading resumes; a full daily history is ~0.5 MB of text, so bytes bound the hold as well.
const STREAM_HIGH_WATER = 16;
const STREAM_LOW_WATER = 4;
const STREAM_HIGH_BYTES = 4 << 20;
const STREAM_LOW_BYTES = 1 << 20;
/**
 * The head of an item frame: the server writes item frames with these keys first, so such a
 * frame is routed from its head and kept as text until the caller takes it (its parsed objects
 * take twice the memory).
 */
export const ITEM_HEAD: RegExp =
  /^\{"request_id":"([^"\\]*)","item":\{"index":(\d+),"result":/;

/** A streamed item as it waits for the caller: parsed, or still the frame's text or bytes. */
export type ArrivedItem = {
  index: number;
  result?: unknown;
  text?: string;
  bytes?: Uint8Array;
};
/** Item frames this large wait as their bytes: not even decoded until the caller wants them. */
export const ITEM_BYTES_MIN = 16 * 1024;
/** Decodes item frames kept as bytes. */
export const frameDecoder: TextDecoder = new TextDecoder();
// How often a held socket is read briefly, for pings: well inside the server's idle timeout.
const BREATH_MS = 3000;
const KEEP_ALIVE_MS = 5000;

/**
 * The stream of one batch: `start` sends it with an item callback and resolves with its final
 * answer; `hold` stops (or resumes) reading the socket; `ping` sends a ping.
 */
export function batchStream(
  start: (onItem: (item: ArrivedItem) => void) => Promise<RequesterAnswer>,
  holdSocket: (on: boolean) => void,
  ping: () => void,
): BatchStream {
  const queue: ArrivedItem[] = [];
  let queuedBytes = 0;
  let wake: (() => void) | undefined;
  let ended = false;
  let failure: { error: unknown } | undefined;
  // Backpressure: while a caller iterates but falls behind, stop reading the socket; the
  // server then starts no new items until it drains (its flow control).
  let iterating = false;
  let holding = false;
  const hold = (on: boolean) => {
    if (on === holding) return;
    holding = on;
    holdSocket(on);
  };
  const answer = start((item) => {
    queue.push(item);
    queuedBytes += item.text?.length ?? item.bytes?.length ?? 0;
    if (
      iterating &&
      (queue.length >= STREAM_HIGH_WATER || queuedBytes >= STREAM_HIGH_BYTES)
    ) hold(true);
    wake?.();
  });
  // Frames of our own keep the server's idle timer from closing a connection whose pings
  // wait behind a backlog of items.
  const keepAlive = setInterval(() => {
    try {
      ping();
    } catch { /* closing */ }
  }, KEEP_ALIVE_MS);
  answer.then(
    () => {
      ended = true;
      clearInterval(keepAlive);
      hold(false);
      wake?.();
    },
    (error) => {
      failure = { error };
      ended = true;
      clearInterval(keepAlive);
      hold(false);
      wake?.();
    },
  );
  // The iterator reports a lost connection itself; `answer` must not also be unhandled.
  answer.catch(() => {});
  return {
    answer,
    async *[Symbol.asyncIterator]() {
      iterating = true;
      try {
        while (true) {
          if (queue.length > 0) {
            const next = queue.shift()!;
            queuedBytes -= next.text?.length ?? next.bytes?.length ?? 0;
            if (
              queue.length <= STREAM_LOW_WATER &&
              queuedBytes <= STREAM_LOW_BYTES
            ) hold(false);
            yield next.bytes !== undefined
              ? lazyItem(next.index, next.bytes)
              : next.text !== undefined
              ? lazyItem(next.index, next.text)
              : { index: next.index, result: next.result };
            continue;
          }
          hold(false);
          if (ended) {
            if (failure) throw failure.error;
            return;
          }
          await new Promise<void>((resolve) => wake = resolve);
          wake = undefined;
        }
      } finally {
        iterating = false;
        hold(false);
      }
    },
  };
}

/** Pauses reading a connection's socket while any stream holds it; see the module doc. */
export class ReadHold {
  #socket: () => ClientSocket | undefined;
  #holds = 0;
  #breath: ReturnType<typeof setInterval> | undefined;
  #exhale: ReturnType<typeof setTimeout> | undefined;

  /** Holds for the connection's socket of the moment. */
  constructor(socket: () => ClientSocket | undefined) {
    this.#socket = socket;
  }

  /** One stream starts (`true`) or stops (`false`) holding the socket. */
  set(on: boolean): void {
    this.#holds += on ? 1 : -1;
    const socket = this.#socket();
    if (!socket) return;
    if (this.#holds > 0) {
      socket.pause();
      // A paused socket answers no ping: let it breathe now and then, or the server's idle
      // timeout closes a connection whose reader is merely slow.
      this.#breath ??= setInterval(() => {
        const s = this.#socket();
        if (!s || this.#holds <= 0) return;
        s.resume();
        clearTimeout(this.#exhale);
        this.#exhale = setTimeout(() => {
          if (this.#holds > 0) this.#socket()?.pause();
        }, 20);
      }, BREATH_MS);
    } else {
      socket.resume();
      clearInterval(this.#breath);
      clearTimeout(this.#exhale);
      this.#breath = undefined;
    }
  }

  /** Stops the short reads. */
  stop(): void {
    clearInterval(this.#breath);
    clearTimeout(this.#exhale);
    this.#breath = undefined;
  }
}

/** A streamed item kept as its frame, its `result` parsed when first read. */
function lazyItem(index: number, frame: string | Uint8Array): StreamedItem {
  let result: unknown;
  let parsed = false;
  const bytes = typeof frame === "string" ? undefined : frame;
  return {
    index,
    bytes,
    get text() {
      return typeof frame === "string" ? frame : frameDecoder.decode(frame);
    },
    get result() {
      if (!parsed) {
        result = itemResult(this.text!);
        parsed = true;
      }
      return result;
    },
  };
}

/** The `result` of an item frame kept as text (null when the frame is not valid JSON). */
function itemResult(text: string): unknown {
  try {
    return (JSON.parse(text) as { item?: { result?: unknown } }).item?.result ??
      null;
  } catch {
    return null;
  }
}
