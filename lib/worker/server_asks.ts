/**
 * A worker's own requests to the server (for its server actions, such as the console's
 * `request`): each waits for the server's `response` envelope, its deadline, or the connection's
 * end.
 *
 * @module
 */

import { ErrorCode, RequestTimeoutError, WorkerError } from "../errors.ts";
import { messageId } from "../_id.ts";
import { logger } from "../log.ts";
import { type Envelope, MessageType, readResponseData } from "../protocol.ts";

const log = logger("worker");

/** Sends an envelope with `msgId`; false when not connected. */
export type SendRequest = (
  type: string,
  data: unknown,
  msgId: string,
) => boolean;

/** The requests a worker waits on; see the module doc. */
export class ServerAsks {
  #asks = new Map<string, PromiseWithResolvers<unknown>>();
  #send: SendRequest;

  /** Requests that leave through `send`. */
  constructor(send: SendRequest) {
    this.#send = send;
  }

  /** Asks the server to run `action`; resolves with its result. */
  request(
    action: string,
    params: unknown,
    timeoutMs: number,
  ): Promise<unknown> {
    const msgId = messageId();
    const ask = Promise.withResolvers<unknown>();
    if (!this.#send(MessageType.REQUEST, { action, params }, msgId)) {
      return Promise.reject(
        new WorkerError(
          "Not connected to the server",
          ErrorCode.CONNECTION_CLOSED,
        ),
      );
    }
    this.#asks.set(msgId, ask);
    const timer = setTimeout(() => {
      if (this.#asks.delete(msgId)) ask.reject(new RequestTimeoutError());
    }, timeoutMs);
    return ask.promise.finally(() => clearTimeout(timer));
  }

  /** Takes the server's `response` envelope to one of the requests. */
  answer(envelope: Envelope): void {
    try {
      const response = readResponseData(envelope.data);
      const ask = this.#asks.get(response.request_id);
      if (!ask) return;
      this.#asks.delete(response.request_id);
      if (response.success) ask.resolve(response.result);
      else {
        ask.reject(
          new WorkerError(
            response.error ?? "Request failed",
            (response.error_code ?? ErrorCode.WORKER_ERROR) as ErrorCode,
          ),
        );
      }
    } catch (error) {
      log.warn("Bad response from the server: {message}", {
        message: (error as Error).message,
      });
    }
  }

  /** The connection closed: every request waiting fails. */
  closed(): void {
    for (const ask of this.#asks.values()) {
      ask.reject(
        new WorkerError(
          "Connection to the server closed",
          ErrorCode.CONNECTION_CLOSED,
        ),
      );
    }
    this.#asks.clear();
  }
}
