/**
 * A requester as the requester port sees it (a connection, or one HTTP call) and how an answer
 * reaches it: limits on answer size, and on bytes it leaves unread.
 *
 * @module
 */

import { RawResult } from "./raw_result.ts";
import type { Cancellation } from "../_cancel.ts";
import { ErrorCode } from "../errors.ts";
import { logger } from "../log.ts";
import { failureAnswer, type RequesterAnswer } from "../protocol.ts";
import type { ResolvedOptions } from "./options.ts";

const log = logger("broker");

/** One requester: a WebSocket connection, or an HTTP caller with a sink for its frames. */
export interface RequesterPeer {
  id: string;
  socket: WebSocket;
  address: string;
  /** Set for an HTTP caller: takes its frames instead of a socket. */
  sink?: (frame: Record<string, unknown>) => void;
  /** For an HTTP caller: whether its response has room for more (streamed batches wait). */
  sinkReady?: () => boolean;
  /** Requests in flight by `request_id`, each with what cancels it. */
  requests: Map<string, Cancellation>;
  /** Dropped for not reading: forgotten, though its socket may linger until the peer reads. */
  dropped?: boolean;
  /** Its lane in the fair queue: the connection, or for HTTP callers their address. */
  lane?: string;
}

/** What {@linkcode writeAnswer} returns for a requester it closed for not reading. */
export const TOO_SLOW = -1;

/**
 * Sends `answer` to `peer`. Returns the characters sent (0 when nothing went, or not on a
 * socket), or {@linkcode TOO_SLOW} when the peer left more than `maxBufferedBytes` unread and
 * its socket is closing: the caller forgets it.
 */
export function writeAnswer(
  peer: RequesterPeer,
  answer: RequesterAnswer | Record<string, unknown>,
  options: ResolvedOptions,
  paced: boolean,
): number {
  if (peer.sink) {
    // An HTTP caller reads the items' fields (CSV): a spliced result goes as its value.
    const item = (answer as { item?: { index?: unknown; result?: unknown } })
      .item;
    peer.sink(
      item?.result instanceof RawResult
        ? { ...answer, item: { ...item, result: item.result.value } }
        : answer as Record<string, unknown>,
    );
    return 0;
  }
  const socket = peer.socket;
  if (socket.readyState !== WebSocket.OPEN) return 0;
  // Streamed items are paced by the batch (flow control above) instead: a requester that
  // reads slowly gets its items slowly, rather than dropped.
  if (socket.bufferedAmount > options.maxBufferedBytes && !paced) {
    // A requester that stops reading would otherwise hold the server's memory hostage.
    log.warn(
      "Dropping requester {id}: {bytes} bytes unread (limit {limit})",
      {
        id: peer.id,
        bytes: socket.bufferedAmount,
        limit: options.maxBufferedBytes,
      },
    );
    socket.close(1008, "Too slow: answers are not being read");
    return TOO_SLOW;
  }
  let text: string;
  try {
    text = itemFrame(answer) ?? JSON.stringify(answer);
  } catch (error) {
    // Past V8's longest string: the limit below should have caught it first.
    text = "";
    log.error("Cannot serialize the answer to {id}: {error}", {
      id: answer.request_id,
      error,
    });
  }
  const limit = options.maxAnswerBytes;
  if (text === "" || text.length > limit) {
    text = JSON.stringify(failureAnswer(
      (answer.request_id as string | null | undefined) ?? null,
      tooLargeText(text.length || Infinity, limit),
      ErrorCode.ANSWER_TOO_LARGE,
    ));
  }
  socket.send(text);
  return text.length;
}

/**
 * The frame of a streamed item whose result is spliced: the same bytes `JSON.stringify` gives
 * for `{request_id, item: {index, result}}`, with the worker's text as the result.
 */
function itemFrame(
  answer: RequesterAnswer | Record<string, unknown>,
): string | undefined {
  const item = (answer as { item?: { index?: unknown; result?: unknown } })
    .item;
  if (!(item?.result instanceof RawResult)) return undefined;
  return `{"request_id":${JSON.stringify(answer.request_id)},"item":{"index":${
    JSON.stringify(item.index)
  },"result":${item.result.text}}}`;
}

/** Whether a streamed batch may start more items for `peer`: little stands unread before a ping. */
export function hasRoom(
  peer: RequesterPeer,
  maxBufferedBytes: number,
): boolean {
  // An HTTP caller (a sink, no socket) is paced by its own response stream.
  return peer.sink
    ? peer.sinkReady?.() ?? true
    : peer.socket.readyState !== WebSocket.OPEN ||
      peer.socket.bufferedAmount < maxBufferedBytes / 16;
}

/** The text of an `ANSWER_TOO_LARGE` failure. */
export function tooLargeText(chars: number, limit: number): string {
  return `Answer too large: ${
    Number.isFinite(chars) ? `more than ${chars}` : "too many"
  } characters (limit ${limit}); send the batch with "stream": true to receive each item in a frame of its own`;
}
