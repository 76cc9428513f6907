/**
 * One error class per condition a caller branches on. Each sets `name`, carries the wire
 * `code` it maps to, and accepts `{ cause }`.
 *
 * @module
 */

/** Wire error codes, sent as the additive `error_code` field. */
export const ErrorCode = {
  NO_WORKERS: "NO_WORKERS",
  UNKNOWN_COMMAND: "UNKNOWN_COMMAND",
  TIMEOUT: "TIMEOUT",
  INVALID_JSON: "INVALID_JSON",
  INVALID_FRAME: "INVALID_FRAME",
  INVALID_FIELD: "INVALID_FIELD",
  INVALID_DATA: "INVALID_DATA",
  INVALID_PARAMS: "INVALID_PARAMS",
  BINARY_FRAME: "BINARY_FRAME",
  FRAME_TOO_LARGE: "FRAME_TOO_LARGE",
  DUPLICATE_REQUEST_ID: "DUPLICATE_REQUEST_ID",
  TOO_MANY_IN_FLIGHT: "TOO_MANY_IN_FLIGHT",
  BATCH_TOO_LARGE: "BATCH_TOO_LARGE",
  ANSWER_TOO_LARGE: "ANSWER_TOO_LARGE",
  RESULT_TOO_LARGE: "RESULT_TOO_LARGE",
  BUSY: "BUSY",
  WORKER_ERROR: "WORKER_ERROR",
  WORKER_LOST: "WORKER_LOST",
  UNKNOWN_REQUEST: "UNKNOWN_REQUEST",
  UNKNOWN_TYPE: "UNKNOWN_TYPE",
  UNKNOWN_ACTION: "UNKNOWN_ACTION",
  UNAUTHORIZED: "UNAUTHORIZED",
  SHUTTING_DOWN: "SHUTTING_DOWN",
  CONNECTION_CLOSED: "CONNECTION_CLOSED",
  CANCELLED: "CANCELLED",
  WRONG_PORT: "WRONG_PORT",
} as const;

/** One of the wire error codes in {@linkcode ErrorCode}. */
export type ErrorCode = typeof ErrorCode[keyof typeof ErrorCode];

/** Texts fixed by the original system; clients match on them, so they never change. */
export const NO_WORKERS_TEXT = "No available workers";
/** Texts fixed by the original system; clients match on them, so they never change. */
export const TIMEOUT_TEXT = "Worker response timeout";

/** Base class: an error that travels over the wire with a code. */
export class SwitchyardError extends Error {
  /** The wire `error_code`. */
  readonly code: ErrorCode;
  /** An error with the wire `code` and `message`. */
  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SwitchyardError";
    this.code = code;
  }
}

/** A frame that could not be understood: bad JSON, wrong shape, wrong field types, too large. */
export class ProtocolError extends SwitchyardError {
  /** The request id the frame carried, when it could be read. */
  readonly requestId: string | undefined;
  /** A protocol error with `code`, naming the frame's `requestId` when it had one. */
  constructor(
    code: ErrorCode,
    message: string,
    options?: ErrorOptions & { requestId?: string },
  ) {
    super(code, message, options);
    this.name = "ProtocolError";
    this.requestId = options?.requestId;
  }
}

/** No connected worker can take the command. */
export class NoWorkersError extends SwitchyardError {
  /** "No available workers", with `NO_WORKERS` or `UNKNOWN_COMMAND`. */
  constructor(
    code: ErrorCode = ErrorCode.NO_WORKERS,
    options?: ErrorOptions,
  ) {
    super(code, NO_WORKERS_TEXT, options);
    this.name = "NoWorkersError";
  }
}

/** The deadline passed before an answer came. */
export class RequestTimeoutError extends SwitchyardError {
  /** "Worker response timeout", or `message`. */
  constructor(message: string = TIMEOUT_TEXT, options?: ErrorOptions) {
    super(ErrorCode.TIMEOUT, message, options);
    this.name = "RequestTimeoutError";
  }
}

/** The server cannot take more work right now: queue full or too many requests in flight. */
export class ServerBusyError extends SwitchyardError {
  /** A full queue or connection, with `BUSY` or another `code`. */
  constructor(
    message: string,
    code: ErrorCode = ErrorCode.BUSY,
    options?: ErrorOptions,
  ) {
    super(code, message, options);
    this.name = "ServerBusyError";
  }
}

/** The worker ran the action and it failed, or the worker went away. */
export class WorkerError extends SwitchyardError {
  /** A worker's failure, with its `code` (`WORKER_ERROR` by default). */
  constructor(
    message: string,
    code: ErrorCode = ErrorCode.WORKER_ERROR,
    options?: ErrorOptions,
  ) {
    super(code, message, options);
    this.name = "WorkerError";
  }
}

/** A token was missing or wrong. */
export class UnauthorizedError extends SwitchyardError {
  /** A refused token. */
  constructor(
    message = "Unauthorized: missing or invalid token",
    options?: ErrorOptions,
  ) {
    super(ErrorCode.UNAUTHORIZED, message, options);
    this.name = "UnauthorizedError";
  }
}

/** The connection closed while requests were waiting on it. */
export class ConnectionClosedError extends SwitchyardError {
  /** The connection closed before an answer came. */
  constructor(message = "Connection closed", options?: ErrorOptions) {
    super(ErrorCode.CONNECTION_CLOSED, message, options);
    this.name = "ConnectionClosedError";
  }
}

/**
 * A requester reached the worker port, or a worker the requester port: the message names the
 * right port.
 */
export class WrongPortError extends SwitchyardError {
  /** A connection to the wrong port, saying which port to use. */
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.WRONG_PORT, message, options);
    this.name = "WrongPortError";
  }
}

/** An action's params have the wrong keys or values; the message lists what it expects. */
export class InvalidParamsError extends SwitchyardError {
  /** Params the action cannot use. */
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.INVALID_PARAMS, message, options);
    this.name = "InvalidParamsError";
  }
}
