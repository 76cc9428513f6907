/**
 * One error class per condition a caller of the market library branches on, and the list of
 * error codes that are worth retrying on another worker.
 *
 * @module
 */

import type { MarketErrorCode } from "./types.ts";

/**
 * Error codes for which another worker (another IP, other cache) may succeed: the upstream
 * refused or failed this worker, not the request. `INVALID_PARAMS` and `UNKNOWN_CODE` fail the
 * same way everywhere.
 */
export const RETRIABLE_ERROR_CODES: readonly MarketErrorCode[] = Object.freeze([
  "UPSTREAM_BLOCKED",
  "UPSTREAM_UNAVAILABLE",
]);

/** Bad `get_market` params: wrong type, unknown value, malformed date. */
export class MarketParamsError extends TypeError {
  /** The item error code. */
  readonly errorCode = "INVALID_PARAMS" as const;
  /** Creates the error; `options.cause` keeps what it came from. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "MarketParamsError";
  }
}

/** The provider does not know the code (Eastmoney answered `data: null`, no CSV file...). */
export class UnknownCodeError extends Error {
  /** The item error code. */
  readonly errorCode = "UNKNOWN_CODE" as const;
  /** Creates the error; `options.cause` keeps what it came from. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "UnknownCodeError";
  }
}

/**
 * The upstream host looks like it is refusing this client: its circuit breaker is open, it
 * reset connections, throttled us or gave suspiciously empty answers.
 */
export class UpstreamBlockedError extends Error {
  /** The item error code. */
  readonly errorCode = "UPSTREAM_BLOCKED" as const;
  /** The upstream host. */
  readonly host: string;
  /** When this client may call the host again (cool-down end, budget refill), epoch ms. */
  readonly retryAt: number | undefined;
  /** Creates the error for `host`; `options.retryAt` tells when to come back. */
  constructor(
    host: string,
    message: string,
    options?: ErrorOptions & { retryAt?: number },
  ) {
    super(message, options);
    this.name = "UpstreamBlockedError";
    this.host = host;
    this.retryAt = options?.retryAt;
  }
}

/** The upstream host failed (network error, HTTP 5xx, garbage) after every retry. */
export class UpstreamUnavailableError extends Error {
  /** The item error code. */
  readonly errorCode = "UPSTREAM_UNAVAILABLE" as const;
  /** The upstream host, or the CSV folder. */
  readonly host: string;
  /** Creates the error for `host`; `options.cause` keeps what it came from. */
  constructor(host: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "UpstreamUnavailableError";
    this.host = host;
  }
}

/** Any market error class. */
export type MarketError =
  | MarketParamsError
  | UnknownCodeError
  | UpstreamBlockedError
  | UpstreamUnavailableError;

/** Whether `error` is one of the market error classes. */
export function isMarketError(error: unknown): error is MarketError {
  return error instanceof MarketParamsError ||
    error instanceof UnknownCodeError ||
    error instanceof UpstreamBlockedError ||
    error instanceof UpstreamUnavailableError;
}

/** Whether an item that failed with `code` may succeed on another worker. */
export function isRetriable(code: MarketErrorCode): boolean {
  return RETRIABLE_ERROR_CODES.includes(code);
}
