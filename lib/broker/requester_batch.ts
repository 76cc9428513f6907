/**
 * A `get_markets` batch on the requester port: its items checked, run over the workers by
 * `batch.ts`, its progress and streamed items sent as they come, and its one answer.
 *
 * @module
 */

import { resultValue } from "./raw_result.ts";
import type { CancelSignal } from "../_cancel.ts";
import { ErrorCode, NO_WORKERS_TEXT, type ProtocolError } from "../errors.ts";
import {
  failureAnswer,
  type RequesterAnswer,
  type RequesterRequest,
} from "../protocol.ts";
import { readBatchItems, runBatch } from "./batch.ts";
import type { BrokerCore } from "./options.ts";
import { availableCommands } from "./requester_actions.ts";
import { pacingAllowanceMs } from "./pacing.ts";
import { requestDeadline } from "./requester_frames.ts";
import { hasRoom, type RequesterPeer, tooLargeText } from "./requester_peer.ts";

/** Sends a frame to a requester; returns the characters sent (see `writeAnswer`). */
export type SendAnswer = (
  peer: RequesterPeer,
  answer: RequesterAnswer | Record<string, unknown>,
  paced?: boolean,
) => number;

/** Runs the batch `request` for `peer` and returns its answer; `send` carries what comes before. */
export async function runRequesterBatch(
  core: BrokerCore,
  peer: RequesterPeer,
  request: RequesterRequest,
  started: number,
  signal: CancelSignal,
  send: SendAnswer,
): Promise<RequesterAnswer> {
  const id = request.request_id;
  let items: unknown[];
  try {
    items = readBatchItems(request.data, core.options.maxBatchItems);
  } catch (error) {
    const e = error as ProtocolError;
    return failureAnswer(id, e.message, e.code);
  }
  const front = core.marketFront;
  const held = front ? await front.lookup(items) : undefined;
  if (held !== undefined) {
    // Every item is in the store: no worker is asked.
    if (request.stream) {
      held.forEach((result, index) =>
        send(peer, { request_id: id, item: { index, result } }, true)
      );
    }
    const summary = { total: held.length, success: held.length, failed: 0 };
    const distributed = {
      workers_used: 0,
      elapsed_time: Math.round((core.clock.now() - started) / 10) / 100,
      errors: null,
    };
    return {
      request_id: id,
      success: true,
      data: request.stream
        ? { summary, distributed }
        : { results: held, summary, distributed },
      error: null,
      processed_by: "store",
      elapsed_ms: core.clock.now() - started,
    };
  }
  let lastSent = 0;
  const tracker = core.metrics.batchStarted(id, items.length);
  const outcome = await runBatch(
    core.dispatcher,
    items,
    {
      deadline: requestDeadline(
        request,
        started,
        core.options,
        pacingAllowanceMs(
          core.dispatcher.registry.all(),
          request.command,
          items,
          started,
        ),
      ),
      signal,
      owner: peer.lane ?? peer.id,
      onFinish: (index, result, elapsedMs) => {
        tracker.item(itemErrorCode(result), elapsedMs);
        front?.keep(items[index], resultValue(result));
      },
      onProgress: (done, total) => {
        tracker.progress(done);
        if (!request.progress) return;
        // At most ~20 frames a second, and always the final count.
        const now = core.clock.now();
        if (done < total && now - lastSent < 50) return;
        lastSent = now;
        send(peer, { request_id: id, progress: { done, total } });
      },
      // Streamed: each item leaves as it is final, and the server keeps none of them.
      onItem: request.stream
        ? (index, result) =>
          send(peer, { request_id: id, item: { index, result } }, true)
        : undefined,
      maxResultChars: request.stream ? undefined : core.options.maxAnswerBytes,
      // A streamed batch goes at the requester's pace: no new items start while more than
      // a sixteenth of the unread limit waits for it (little stands before a ping).
      flow: request.stream
        ? { ready: () => hasRoom(peer, core.options.maxBufferedBytes) }
        : undefined,
    },
  ).catch((error) => {
    tracker.finish(0, items.length);
    throw error;
  });
  const summary = outcome.data.summary;
  tracker.finish(summary.success, summary.failed);
  if (outcome.noWorkers) {
    return failureAnswer(id, NO_WORKERS_TEXT, ErrorCode.NO_WORKERS, {
      available_commands: availableCommands(core),
    });
  }
  if (outcome.tooLarge) {
    return failureAnswer(
      id,
      tooLargeText(outcome.tooLarge.chars, outcome.tooLarge.limit),
      ErrorCode.ANSWER_TOO_LARGE,
      { elapsed_ms: core.clock.now() - started },
    );
  }
  return {
    request_id: id,
    success: true,
    data: outcome.data,
    error: null,
    processed_by: `distributed_${outcome.workersUsed}_workers`,
    elapsed_ms: core.clock.now() - started,
  };
}

/** A batch item's error code; undefined when it succeeded. */
function itemErrorCode(result: unknown): string | undefined {
  const r = result as { success?: unknown; error_code?: unknown } | null;
  if (r?.success === true) return undefined;
  return typeof r?.error_code === "string"
    ? r.error_code
    : ErrorCode.WORKER_ERROR;
}
