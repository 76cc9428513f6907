/**
 * Wire formats: the worker-port envelope and the requester-port request and answer, exactly as
 * the original system defined them, plus additive fields.
 *
 * @module
 */

import { ErrorCode, ProtocolError } from "./errors.ts";
import { messageId } from "./_id.ts";

/** The envelope types of the worker protocol. Peers ignore types they do not know. */
export const MessageType = {
  CONNECT: "connect",
  DISCONNECT: "disconnect",
  HEARTBEAT: "heartbeat",
  ERROR: "error",
  REQUEST: "request",
  RESPONSE: "response",
  NOTIFICATION: "notification",
  CUSTOM: "custom",
  /** Additive: a worker reports how far a long request has come. */
  PROGRESS: "progress",
  /** Additive: the server tells a worker to stop working on a request. */
  CANCEL: "cancel",
} as const;

/** A worker-protocol envelope. */
export interface Envelope<T = unknown> {
  /** The message type (`request`, `response`, `heartbeat`…). */
  type: string;
  /** Unique per message; a `response` answers the `request` with this id. */
  msg_id: string;
  /** Unix seconds with a fraction. */
  timestamp: number;
  /** The payload. */
  data: T;
}

/** `request.data`. */
export interface RequestData {
  action: string;
  params: unknown;
}

/** `response.data`. */
export interface ResponseData {
  /** The `msg_id` of the request it answers. */
  request_id: string;
  /** Whether the action succeeded. */
  success: boolean;
  /** The action's result. */
  result: unknown;
  /** Why it failed; null on success. */
  error: string | null;
  /** Additive: a machine-readable code for `error`. */
  error_code?: string;
}

/** A request from the requester port, after validation. */
export interface RequesterRequest {
  /** The requester's id for the request, echoed in its answer. */
  request_id: string;
  /** Whether the server made up `request_id` because the frame had none. */
  assignedId: boolean;
  /** The command (an action a worker or the server offers). */
  command: string;
  /** The command's params. */
  data: unknown;
  /** Seconds, when the frame gave one. */
  timeout?: number;
  /** Whether the requester asked for progress frames. */
  progress: boolean;
  /** A batch whose items come in frames of their own (additive, opt-in). */
  stream: boolean;
  /**
   * A cancel frame, `{"request_id": "…", "cancel": true}` (additive, opt-in): stop the request
   * in flight with this id. `command` is empty and nothing else is read.
   */
  cancel?: boolean;
}

/** An answer on the requester port. */
export interface RequesterAnswer {
  /** The request's id; null when the frame had none that could be read. */
  request_id: string | null;
  /** Whether the request succeeded. */
  success: boolean;
  /** The command's result. */
  data: unknown;
  /** Why it failed; null on success. */
  error: string | null;
  /** The worker that answered, `server`, or `distributed_N_workers` for a batch. */
  processed_by: string | null;
  /** Additive: a machine-readable code for `error`. */
  error_code?: string;
  /** Additive: ms from arrival to answer. */
  elapsed_ms?: number;
  /** Additive: workers tried. */
  attempts?: number;
  /**
   * On `NO_WORKERS` and `UNKNOWN_COMMAND` failures: the commands that can be asked for now
   * (workers' declared actions and the server's own), sorted.
   */
  available_commands?: string[];
  /** Further additive fields. */
  [extra: string]: unknown;
}

/** Unix seconds with a fraction, as the original stamps envelopes. */
export function unixSeconds(ms: number = Date.now()): number {
  return Math.round(ms) / 1000;
}

/** Serializes an envelope of `type` with a fresh `msg_id` unless one is given. */
export function encodeEnvelope(
  type: string,
  data: unknown,
  msgId: string = messageId(),
): string {
  return JSON.stringify({
    type,
    msg_id: msgId,
    timestamp: unixSeconds(),
    data,
  });
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

/** Parses JSON text, mapping every failure (including absurd nesting) to a ProtocolError. */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    throw new ProtocolError(
      ErrorCode.INVALID_JSON,
      `Cannot parse frame as JSON: ${detail}`,
      { cause: error },
    );
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Reads a worker-port frame. Missing `msg_id`/`timestamp`/`data` are tolerated; `type` is not. */
export function decodeEnvelope(text: string): Envelope {
  return readEnvelope(parseJson(text));
}

/**
 * Reads one parsed envelope (a frame's JSON value, or one element of a frame of several; see
 * {@linkcode BATCH_ENVELOPES}).
 */
export function readEnvelope(value: unknown): Envelope {
  if (!isObject(value)) {
    throw new ProtocolError(
      ErrorCode.INVALID_FRAME,
      `Frame must be a JSON object: got ${describe(value)}`,
    );
  }
  const { type, msg_id, timestamp, data } = value;
  if (typeof type !== "string" || type === "") {
    throw new ProtocolError(
      ErrorCode.INVALID_FIELD,
      `Field 'type' must be a non-empty string: got ${describe(type)}`,
    );
  }
  if (msg_id !== undefined && typeof msg_id !== "string") {
    throw new ProtocolError(
      ErrorCode.INVALID_FIELD,
      `Field 'msg_id' must be a string: got ${describe(msg_id)}`,
    );
  }
  return {
    type,
    msg_id: msg_id ?? "",
    timestamp: typeof timestamp === "number" ? timestamp : unixSeconds(),
    data: data === undefined ? {} : data,
  };
}

/**
 * The `connect` field with which both sides of the worker port agree to several envelopes per
 * frame (additive, opt-in). The server offers it in its welcome; a worker that understands it
 * echoes it in its registration; from then on either side may send a JSON array of envelopes
 * as one text frame, in order. Peers that never say it (the original workers and server) only
 * ever see one envelope per frame.
 */
export const BATCH_ENVELOPES = "batch_envelopes";

/**
 * Envelopes written in one turn wait here and leave as one frame (`[e1,e2,…]`), or as the single
 * envelope when only one was written, so original readers of a lone envelope see no change.
 * Frames stay below `maxChars`; a larger envelope leaves alone, after what was queued before it.
 */
export class EnvelopeBatcher {
  #queued: string[] = [];
  #chars = 0;
  #scheduled = false;
  #write: (frame: string) => void;
  #maxChars: number;
  readonly #flushTask = () => this.flush();

  constructor(write: (frame: string) => void, maxChars = 64 * 1024) {
    this.#write = write;
    this.#maxChars = maxChars;
  }

  /** Queues an encoded envelope; it leaves at the end of the current turn at the latest. */
  push(envelope: string): void {
    if (this.#chars + envelope.length + 1 > this.#maxChars) this.flush();
    if (envelope.length + 2 > this.#maxChars) {
      // Alone, and synchronously: a failed write throws to the caller, as an unbatched send does.
      return this.#write(envelope);
    }
    this.#queued.push(envelope);
    this.#chars += envelope.length + 1;
    if (!this.#scheduled) {
      this.#scheduled = true;
      queueMicrotask(this.#flushTask);
    }
  }

  /** Writes what is queued now. */
  flush(): void {
    this.#scheduled = false;
    const queued = this.#queued;
    if (queued.length === 0) return;
    const frame = queued.length === 1 ? queued[0] : `[${queued.join(",")}]`;
    // One list for the batcher's life: what it held is in `frame` now.
    queued.length = 0;
    this.#chars = 0;
    try {
      this.#write(frame);
    } catch {
      // The socket closed under us. What was queued counts as sent, as it would had the socket
      // closed a moment later: the close handler re-places the jobs the peer held.
    }
  }
}

/** `data` of an envelope of `kind`, which must be an object. */
function envelopeData(data: unknown, kind: string): Record<string, unknown> {
  if (!isObject(data)) {
    throw new ProtocolError(
      ErrorCode.INVALID_FIELD,
      `Field 'data' of ${kind} must be an object: got ${describe(data)}`,
    );
  }
  return data;
}

/** `data[field]`, which must be a non-empty string. */
function nonEmptyString(data: Record<string, unknown>, field: string): string {
  const value = data[field];
  if (typeof value !== "string" || value === "") {
    throw new ProtocolError(
      ErrorCode.INVALID_FIELD,
      `Field 'data.${field}' must be a non-empty string: got ${
        describe(value)
      }`,
    );
  }
  return value;
}

/** Validates `request.data` of a worker-protocol request. */
export function readRequestData(data: unknown): RequestData {
  const d = envelopeData(data, "a request");
  return { action: nonEmptyString(d, "action"), params: d.params ?? {} };
}

/** Validates `response.data` of a worker-protocol response. */
export function readResponseData(unchecked: unknown): ResponseData {
  const data = envelopeData(unchecked, "a response");
  const requestId = nonEmptyString(data, "request_id");
  // The original omits `success` on some paths; an error text alone still means failure.
  const success = typeof data.success === "boolean"
    ? data.success
    : data.error === undefined || data.error === null;
  const error = data.error === undefined || data.error === null
    ? null
    : String(data.error);
  return {
    request_id: requestId,
    success,
    result: data.result ?? null,
    error,
    error_code: typeof data.error_code === "string"
      ? data.error_code
      : undefined,
  };
}

/** Limits applied while reading a requester frame. */
export interface RequesterLimits {
  /** The largest `timeout` a requester may ask for, in seconds. @default 300 */
  maxTimeoutSeconds?: number;
}

/**
 * Reads a requester-port frame. Throws a ProtocolError that carries the frame's `request_id`
 * whenever it could be read, so the error answer reaches the right waiter.
 */
export function parseRequesterFrame(
  text: string,
  limits: RequesterLimits = {},
): RequesterRequest {
  const value = parseJson(text);
  if (!isObject(value)) {
    throw new ProtocolError(
      ErrorCode.INVALID_FRAME,
      `Request must be a JSON object: got ${describe(value)}`,
    );
  }
  const rawId = value.request_id;
  let requestId: string | undefined;
  if (typeof rawId === "string" && rawId !== "") requestId = rawId;
  else if (typeof rawId === "number" && Number.isFinite(rawId)) {
    requestId = String(rawId);
  } else if (rawId !== undefined && rawId !== null) {
    throw new ProtocolError(
      ErrorCode.INVALID_FIELD,
      `Field 'request_id' must be a non-empty string: got ${describe(rawId)}`,
    );
  }
  if (requestId !== undefined && requestId.length > 200) {
    throw new ProtocolError(
      ErrorCode.INVALID_FIELD,
      `Field 'request_id' is too long: ${requestId.length} characters (limit 200)`,
    );
  }
  const fail = (code: ErrorCode, message: string): never => {
    throw new ProtocolError(code, message, { requestId });
  };
  if (value.cancel !== undefined && value.cancel !== false) {
    if (value.cancel !== true) {
      fail(
        ErrorCode.INVALID_FIELD,
        `Field 'cancel' must be true: got ${describe(value.cancel)}`,
      );
    }
    if (requestId === undefined) {
      fail(
        ErrorCode.INVALID_FIELD,
        "A cancel frame needs the 'request_id' of the request to cancel",
      );
    }
    return {
      request_id: requestId!,
      assignedId: false,
      command: "",
      data: {},
      progress: false,
      stream: false,
      cancel: true,
    };
  }
  const { command, timeout, progress, stream } = value;
  if (command === undefined) {
    fail(ErrorCode.INVALID_FIELD, "Field 'command' is missing");
  }
  if (typeof command !== "string" || command.trim() === "") {
    fail(
      ErrorCode.INVALID_FIELD,
      `Field 'command' must be a non-empty string: got ${describe(command)}`,
    );
  }
  const maxTimeout = limits.maxTimeoutSeconds ?? 300;
  if (
    timeout !== undefined && timeout !== null &&
    (typeof timeout !== "number" || !Number.isFinite(timeout) || timeout <= 0)
  ) {
    fail(
      ErrorCode.INVALID_FIELD,
      `Field 'timeout' must be a positive number of seconds: got ${
        JSON.stringify(timeout)
      }`,
    );
  }
  if (
    progress !== undefined && progress !== null && typeof progress !== "boolean"
  ) {
    fail(
      ErrorCode.INVALID_FIELD,
      `Field 'progress' must be a boolean: got ${describe(progress)}`,
    );
  }
  if (stream !== undefined && stream !== null && typeof stream !== "boolean") {
    fail(
      ErrorCode.INVALID_FIELD,
      `Field 'stream' must be a boolean: got ${describe(stream)}`,
    );
  }
  return {
    request_id: requestId ?? crypto.randomUUID(),
    assignedId: requestId === undefined,
    command: (command as string).trim(),
    data: value.data === undefined || value.data === null ? {} : value.data,
    timeout: typeof timeout === "number"
      ? Math.min(timeout, maxTimeout)
      : undefined,
    progress: progress === true,
    stream: stream === true,
  };
}

/** Builds a failed answer. */
export function failureAnswer(
  requestId: string | null,
  error: string,
  code: string,
  extra: Partial<RequesterAnswer> = {},
): RequesterAnswer {
  return {
    request_id: requestId,
    success: false,
    data: null,
    error,
    processed_by: null,
    error_code: code,
    ...extra,
  };
}
