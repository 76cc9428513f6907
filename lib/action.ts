/**
 * The shape of an action: one async function a worker (or the server) runs by name.
 *
 * @module
 */

/** What an action receives besides its params. */
export interface ActionContext {
  /** Aborted when the request's deadline passes, the peer goes away, or the process stops. */
  signal: AbortSignal;
  /** The envelope id of the request being served, for logs. */
  requestId: string;
  /**
   * Reports how far a long action has come; the broker relays it to requesters that asked. A
   * list-valued action may pass each finished `item` (its index in the result list and its
   * result): when the server asked for streaming, the item is sent now and left out of the final
   * list, so that if this worker dies, only unfinished items are sent elsewhere.
   */
  progress?: (
    done: number,
    total?: number,
    item?: { index: number; result: unknown },
  ) => void;
}

/** An action: takes the request's `params`, resolves with its `result` or throws its `error`. */
export type ActionHandler = (
  params: unknown,
  ctx: ActionContext,
) => Promise<unknown> | unknown;
