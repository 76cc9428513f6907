/**
 * Exit codes of `requester.ts`, one per cause, the same for a one-shot command, the console and
 * `markets`; and what counts as a failed answer.
 *
 * @module
 */

import {
  RequestTimeoutError,
  UnauthorizedError,
  WrongPortError,
} from "../errors.ts";

/** Exit codes of `requester.ts` and all its subcommands. */
export const RequesterExit = {
  /** The answer succeeded; for `markets`, every symbol did (or was complete already). */
  OK: 0,
  /**
   * The answer failed: its `success`, a nested `data.success`, or an item of a batch is false;
   * for `markets`, at least one symbol failed (`failed.txt` lists them).
   */
  FAILED: 1,
  /** Bad flags, JSON data or symbol list: nothing was sent. */
  USAGE: 2,
  /** The server could not be reached, or the connection was lost before the answer. */
  UNREACHABLE: 3,
  /** The server refused the token (missing, wrong, or too many wrong tries). */
  UNAUTHORIZED: 4,
  /** The URL is the server's worker port, not its requester port. */
  WRONG_PORT: 5,
  /** Interrupted (SIGINT/SIGTERM); for `markets`, files written so far are complete. */
  INTERRUPTED: 130,
} as const;

/** The lines `--help` prints for {@linkcode RequesterExit}. */
export const EXIT_CODES_HELP =
  `Exit codes (the same for every command, the console and markets):
  0    the answer succeeded (markets: every symbol did, or was complete already)
  1    the answer failed: its success, a nested data.success or a batch item is false
       (markets: some symbols failed, see failed.txt; the console: any answer failed)
  2    bad flags, JSON data or symbol list: nothing was sent
  3    the server could not be reached, or the connection was lost
  4    the token was refused (missing or wrong: check --token or SWITCHYARD_REQUESTER_TOKEN)
  5    this is the worker port: requesters connect to the requester port (default 8766)
  130  interrupted`;

/** The exit code for an error thrown while connecting or waiting for an answer. */
export function exitCodeOf(error: unknown): number {
  if (error instanceof UnauthorizedError) return RequesterExit.UNAUTHORIZED;
  if (error instanceof WrongPortError) return RequesterExit.WRONG_PORT;
  // No answer in time is a failed answer, whichever side gave up waiting.
  if (error instanceof RequestTimeoutError) return RequesterExit.FAILED;
  return RequesterExit.UNREACHABLE;
}

/**
 * Whether an answer reports a failure anywhere a user would look: its own `success`, a
 * `data.success` inside it (a market action that ran but whose upstream failed), or a batch's
 * failed items.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { answerFailed } from "./exit_codes.ts";
 * assert.equal(answerFailed({ success: true, data: { success: false } }), true);
 * assert.equal(answerFailed({ success: true, data: { summary: { failed: 1 } } }), true);
 * assert.equal(answerFailed({ success: true, data: [1, 2] }), false);
 * ```
 */
export function answerFailed(
  answer: { success: boolean; data?: unknown },
): boolean {
  if (!answer.success) return true;
  const data = answer.data;
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    return false;
  }
  const { success, summary, results } = data as {
    success?: unknown;
    summary?: { failed?: unknown };
    results?: unknown;
  };
  if (success === false) return true;
  if (typeof summary?.failed === "number" && summary.failed > 0) return true;
  return Array.isArray(results) &&
    results.some((r) =>
      typeof r === "object" && r !== null &&
      (r as { success?: unknown }).success === false
    );
}
