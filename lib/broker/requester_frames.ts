/**
 * Frame validation on the requester port: what a frame must be before it becomes a request,
 * and what a request must be before it runs. Each refusal names its error code.
 *
 * @module
 */

import { overBytes, utf8Bytes } from "../transport/_frame_size.ts";
import { ErrorCode, type ProtocolError } from "../errors.ts";
import { parseRequesterFrame, type RequesterRequest } from "../protocol.ts";
import type { ResolvedOptions } from "./options.ts";
import type { RequesterPeer } from "./requester_peer.ts";

// A request_id still readable from a frame too large to parse, so its error reaches the waiter.
const REQUEST_ID_PEEK = /"request_id"\s*:\s*"([^"\\]{1,200})"/;

/** How far into a frame too large to parse its `request_id` is looked for: 64 KiB. */
export const PEEK_CHARS = 64 * 1024;

/**
 * The first `"request_id": "…"` in the first 64 KiB of a frame too large to parse, or null.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { peekRequestId } from "./requester_frames.ts";
 * assert.equal(peekRequestId('{"request_id": "r1", "data": [1, 2'), "r1");
 * ```
 */
export function peekRequestId(text: string): string | null {
  return REQUEST_ID_PEEK.exec(text.slice(0, PEEK_CHARS))?.[1] ?? null;
}

/** A frame or request the port refuses, with what its failure answer says. */
export class Refusal {
  /** The request it answers, when the frame named one. */
  readonly requestId: string | null;
  /** The `error_code`. */
  readonly code: string;
  /** The `error` text. */
  readonly error: string;

  /** A refusal of `requestId` with `code` and `error`. */
  constructor(requestId: string | null, code: string, error: string) {
    this.requestId = requestId;
    this.code = code;
    this.error = error;
  }
}

/**
 * Reads one requester frame: the request, or a {@linkcode Refusal} (a binary frame, one over
 * `maxRequesterFrameBytes`, one that does not parse, or a worker's envelope on this port, which
 * names `workerPort`).
 */
export function readRequesterFrame(
  raw: unknown,
  options: ResolvedOptions,
  workerPort: number | undefined,
): RequesterRequest | Refusal {
  if (typeof raw !== "string") {
    return new Refusal(
      null,
      ErrorCode.BINARY_FRAME,
      "Binary frames are not supported: send a JSON text frame",
    );
  }
  if (overBytes(raw, options.maxRequesterFrameBytes)) {
    const id = peekRequestId(raw);
    return new Refusal(
      id,
      ErrorCode.FRAME_TOO_LARGE,
      `Frame too large: ${
        utf8Bytes(raw)
      } bytes (limit ${options.maxRequesterFrameBytes})`,
    );
  }
  try {
    return parseRequesterFrame(raw, {
      maxTimeoutSeconds: options.maxTimeoutMs / 1000,
    });
  } catch (error) {
    // The connection stays, as for any bad frame; a Switchyard worker hangs up on its own when
    // it reads this.
    if (isWorkerEnvelope(raw)) {
      return new Refusal(
        null,
        ErrorCode.WRONG_PORT,
        `This is the requester port: workers connect to the worker port${
          workerPort === undefined ? " (8765 by default)" : ` ${workerPort}`
        }`,
      );
    }
    const e = error as ProtocolError;
    return new Refusal(e.requestId ?? null, e.code, e.message);
  }
}

/**
 * Whether `request` may start on `peer` now: not while the server drains, not twice under one
 * id, and not past `maxInFlightPerConnection`. Returns the refusal, if any.
 */
export function admitRequest(
  peer: RequesterPeer,
  request: RequesterRequest,
  options: ResolvedOptions,
  draining: boolean,
): Refusal | undefined {
  const id = request.request_id;
  if (draining) {
    return new Refusal(
      id,
      ErrorCode.SHUTTING_DOWN,
      "Server is shutting down: request not accepted",
    );
  }
  if (peer.requests.has(id)) {
    return new Refusal(
      id,
      ErrorCode.DUPLICATE_REQUEST_ID,
      `Duplicate request_id '${id}': a request with this id is already in flight on this connection`,
    );
  }
  if (peer.requests.size >= options.maxInFlightPerConnection) {
    return new Refusal(
      id,
      ErrorCode.TOO_MANY_IN_FLIGHT,
      `Server busy: ${peer.requests.size} requests in flight on this connection (limit ${options.maxInFlightPerConnection})`,
    );
  }
  return undefined;
}

/**
 * When `request` must be answered by, read at `now`: its own `timeout`, capped, or the default
 * plus `pacingMs`, what the workers' upstream pacing needs for it (see `pacing.ts`), capped too.
 */
export function requestDeadline(
  request: RequesterRequest,
  now: number,
  options: ResolvedOptions,
  pacingMs = 0,
): number {
  const ms = request.timeout !== undefined
    ? Math.min(request.timeout * 1000, options.maxTimeoutMs)
    : Math.max(
      options.timeoutMs,
      Math.min(options.timeoutMs + pacingMs, options.maxTimeoutMs),
    );
  return now + ms;
}

/** Whether `raw` is a worker's envelope (`type`, `msg_id`, no `command`), sent to this port. */
function isWorkerEnvelope(raw: string): boolean {
  try {
    const frame = JSON.parse(raw);
    return typeof frame === "object" && frame !== null &&
      typeof frame.type === "string" && "msg_id" in frame &&
      !("command" in frame);
  } catch {
    return false;
  }
}
