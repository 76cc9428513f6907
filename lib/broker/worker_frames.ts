/**
 * Frame validation on the worker port: a frame becomes envelopes (several in one frame from a
 * worker that batches), and whatever is wrong with it is answered with an `error` envelope on
 * the same connection, which stays.
 *
 * @module
 */

import { overBytes, utf8Bytes } from "../transport/_frame_size.ts";
import { ErrorCode, type ProtocolError, SwitchyardError } from "../errors.ts";
import { logger } from "../log.ts";
import {
  type Envelope,
  MessageType,
  parseJson,
  readEnvelope,
} from "../protocol.ts";
import type { Peer } from "./dispatcher.ts";
import type { ResolvedOptions } from "./options.ts";
import type { WorkerLink } from "./worker_link.ts";
import { PEEK_CHARS, peekRequestId } from "./requester_frames.ts";
import { parseSpliced } from "./raw_result.ts";

const log = logger("broker");

/** Where a worker frame's envelopes go, and what the error answers need to know. */
export interface WorkerFrameContext {
  /** The broker's options (`maxWorkerFrameBytes`). */
  readonly options: ResolvedOptions;
  /** The requester port, named to a requester that dialled the worker port; unknown until bound. */
  readonly requesterPort: number | undefined;
  /** Handles one envelope; what it throws is answered to the worker as an `error` envelope. */
  onEnvelope(worker: Peer, link: WorkerLink, envelope: Envelope): void;
}

/** Reads one frame of `worker` and hands each of its envelopes to `context.onEnvelope`. */
export function readWorkerFrame(
  context: WorkerFrameContext,
  worker: Peer,
  link: WorkerLink,
  raw: unknown,
): void {
  if (typeof raw !== "string") {
    log.warn("Worker {id} sent a binary frame", { id: worker.id });
    return link.error(
      ErrorCode.BINARY_FRAME,
      "Binary frames are not supported: send JSON text",
    );
  }
  const limit = context.options.maxWorkerFrameBytes;
  if (overBytes(raw, limit)) {
    return oversizeFrame(
      context,
      worker,
      link,
      utf8Bytes(raw),
      raw.slice(0, PEEK_CHARS),
    );
  }
  let value: unknown;
  try {
    value = spliced(raw) ?? parseJson(raw);
  } catch (error) {
    return badFrame(worker, link, error as ProtocolError);
  }
  // Several envelopes in one frame, from a worker that registered with BATCH_ENVELOPES; from
  // any other worker an array is the bad frame it always was.
  if (Array.isArray(value) && link.batching) {
    for (const element of value) readValue(context, worker, link, element);
  } else readValue(context, worker, link, value);
}

const MSG_ID_PEEK = /"msg_id"\s*:\s*"([^"\\]{1,200})"/;
const RESPONSE_PEEK = /"type"\s*:\s*"response"/;

/**
 * A frame over the limit, `size` bytes, `head` its start (64 KiB, where its ids are): the
 * worker is told, and when it is a response, the request it answers fails at once with
 * `RESULT_TOO_LARGE` (naming the worker and the size) instead of waiting for its deadline.
 */
export function oversizeFrame(
  context: WorkerFrameContext,
  worker: Peer,
  link: WorkerLink,
  size: number,
  head: string,
): void {
  const limit = context.options.maxWorkerFrameBytes;
  log.warn("Worker {id} sent a frame of {size} bytes (limit {limit})", {
    id: worker.id,
    size,
    limit,
  });
  const msgId = MSG_ID_PEEK.exec(head)?.[1];
  link.error(
    ErrorCode.FRAME_TOO_LARGE,
    `Frame too large: ${size} bytes (limit ${limit})`,
    msgId,
  );
  const requestId = RESPONSE_PEEK.test(head) ? peekRequestId(head) : null;
  if (requestId === null) return;
  const name = worker.name === worker.id
    ? worker.id
    : `${worker.name} (${worker.id})`;
  readValue(context, worker, link, {
    type: MessageType.RESPONSE,
    msg_id: msgId ?? requestId,
    timestamp: Date.now() / 1000,
    data: {
      request_id: requestId,
      success: false,
      result: null,
      error:
        `Result too large: worker ${name} answered with ${size} bytes (the worker port takes at most ${limit})`,
      error_code: ErrorCode.RESULT_TOO_LARGE,
    },
  });
}

/** The frame parsed with its large item results spliced out, or undefined to parse it whole. */
function spliced(raw: string): unknown | undefined {
  try {
    return parseSpliced(raw);
  } catch {
    // Not JSON after all: the whole parse says what is wrong.
    return undefined;
  }
}

function badFrame(worker: Peer, link: WorkerLink, error: ProtocolError): void {
  log.warn("Bad frame from worker {id}: {message}", {
    id: worker.id,
    message: error.message,
  });
  link.error(error.code, error.message);
}

function readValue(
  context: WorkerFrameContext,
  worker: Peer,
  link: WorkerLink,
  value: unknown,
): void {
  let envelope: Envelope;
  try {
    envelope = readEnvelope(value);
  } catch (error) {
    if (isRequesterFrame(value)) return wrongPort(context, worker, link);
    return badFrame(worker, link, error as ProtocolError);
  }
  try {
    context.onEnvelope(worker, link, envelope);
  } catch (error) {
    const e = error instanceof SwitchyardError
      ? error
      : new SwitchyardError(ErrorCode.INVALID_FRAME, String(error));
    log.warn("Bad {type} frame from worker {id}: {message}", {
      type: envelope.type,
      id: worker.id,
      message: e.message,
    });
    link.error(e.code, e.message, envelope.msg_id);
  }
}

/**
 * A requester frame on the worker port: say where it belongs. The connection stays, as for
 * any bad frame; a Switchyard requester client fails its requests on its own.
 */
function wrongPort(
  context: WorkerFrameContext,
  worker: Peer,
  link: WorkerLink,
): void {
  const port = context.requesterPort;
  const error =
    `This is the worker port: requesters connect to the requester port${
      port === undefined ? " (8766 by default)" : ` ${port}`
    }`;
  log.warn("A requester at {address} connected to the worker port", {
    address: worker.address,
  });
  link.error(ErrorCode.WRONG_PORT, error);
}

/** Whether `value` is a requester's frame (`command`, no `type`), sent to the worker port. */
function isRequesterFrame(value: unknown): boolean {
  return typeof value === "object" && value !== null &&
    typeof (value as { command?: unknown }).command === "string" &&
    !("type" in value);
}
