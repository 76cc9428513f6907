/**
 * The broker's side of one worker connection: what it sends to the worker, several envelopes
 * per frame once the worker asked for that, and the drop of a worker that stops reading.
 *
 * @module
 */

import { logger } from "../log.ts";
import { encodeEnvelope, EnvelopeBatcher, MessageType } from "../protocol.ts";

const log = logger("broker");

/** Options for {@linkcode WorkerLink}. */
export interface WorkerLinkOptions {
  /** Unread bytes past which the worker is dropped. */
  maxBufferedBytes: number;
  /** Called once the worker is dropped for not reading (its socket is closing). */
  onDropped: () => void;
}

/** One worker's socket as the worker port writes to it; see the module doc. */
export class WorkerLink {
  /** The worker's `client_id`. */
  readonly id: string;
  /** The worker's socket. */
  readonly socket: WebSocket;
  #maxBufferedBytes: number;
  #onDropped: () => void;
  /** Set for a worker that reads several envelopes per frame (see `BATCH_ENVELOPES`). */
  #batcher: EnvelopeBatcher | undefined;

  /** The link to worker `id` over `socket`. */
  constructor(id: string, socket: WebSocket, options: WorkerLinkOptions) {
    this.id = id;
    this.socket = socket;
    this.#maxBufferedBytes = options.maxBufferedBytes;
    this.#onDropped = options.onDropped;
  }

  /** Whether the worker reads several envelopes per frame (and may send them so). */
  get batching(): boolean {
    return this.#batcher !== undefined;
  }

  /** From now on, envelopes sent in one turn leave in one frame. */
  batch(): void {
    this.#batcher ??= new EnvelopeBatcher((frame) => this.socket.send(frame));
  }

  /** Writes what is batched and sends one envelope per frame from now on. */
  unbatch(): void {
    this.#batcher?.flush();
    this.#batcher = undefined;
  }

  /**
   * Sends to the worker unless it stopped reading: past `maxBufferedBytes` unread, the worker
   * is dropped as a requester would be, so that it cannot make the server hold its frames.
   * Throws when the socket is closed or the worker was dropped.
   */
  send(frame: string): void {
    this.#checkReading();
    if (this.#batcher) this.#batcher.push(frame);
    else this.socket.send(frame);
  }

  /** {@linkcode send} for replies: a worker that is gone or dropped just misses them. */
  trySend(frame: string): void {
    try {
      this.#checkReading();
      this.socket.send(frame);
    } catch {
      // Closed or dropped for not reading; said in the log once already.
    }
  }

  /** Sends an `error` envelope (about the envelope `msgId`, if given). */
  error(code: string, error: string, msgId?: string): void {
    this.trySend(
      encodeEnvelope(MessageType.ERROR, { error, code, msg_id: msgId ?? null }),
    );
  }

  /** Throws (and drops the worker) when its socket is closed or its unread bytes are too many. */
  #checkReading(): void {
    const socket = this.socket;
    if (socket.readyState !== WebSocket.OPEN) {
      throw new Error("Worker socket is not open");
    }
    const limit = this.#maxBufferedBytes;
    if (socket.bufferedAmount > limit) {
      log.warn("Dropping worker {id}: {bytes} bytes unread (limit {limit})", {
        id: this.id,
        bytes: socket.bufferedAmount,
        limit,
      });
      socket.close(1008, "Too slow: frames are not being read");
      // The close frame waits behind the unread bytes: forget the worker now.
      this.#onDropped();
      throw new Error(`Worker ${this.id} does not read its frames`);
    }
  }
}
