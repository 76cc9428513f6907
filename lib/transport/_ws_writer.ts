/**
 * The writing half of RFC 6455: frames gather in one buffer and every frame sent in one turn of
 * the event loop leaves in one write, at the end of the turn.
 *
 * @module
 */

import { mask, TEXT, writeHeader } from "./_ws_frame.ts";
import { writeAll } from "./_http.ts";

const OUT_MIN = 4 * 1024;
/** Written buffers up to this size are kept for the next turn. */
const OUT_KEEP = 64 * 1024;
/** Texts up to this many characters are encoded straight into the outgoing buffer. */
const SHORT_TEXT = 16 * 1024;

const encoder = new TextEncoder();

/** What a {@linkcode FrameWriter} tells its owner. */
export interface WriterEvents {
  /** A write failed: the connection is gone. */
  broken(): void;
  /** The buffer is written out (or the connection broke). */
  drained(): void;
}

/** Frames messages into one outgoing buffer and writes it once per turn; see the module doc. */
export class FrameWriter {
  #conn: Deno.Conn;
  #client: boolean;
  #events: WriterEvents;
  /** Frames waiting for the next write, `#outLen` bytes of them. */
  #out = new Uint8Array(0);
  #outLen = 0;
  /** The buffer last written, kept for the next turn. */
  #spare: Uint8Array<ArrayBuffer> | undefined;
  #inFlight = 0;
  #flushing = false;

  constructor(conn: Deno.Conn, client: boolean, events: WriterEvents) {
    this.#conn = conn;
    this.#client = client;
    this.#events = events;
  }

  /** Bytes framed that the peer's connection has not taken yet. */
  get buffered(): number {
    return this.#outLen + this.#inFlight;
  }

  /** A write is under way or scheduled for the end of this turn. */
  get flushing(): boolean {
    return this.#flushing;
  }

  /** Forgets what waits unsent (the connection is ending). */
  clear(): void {
    this.#outLen = 0;
  }

  /**
   * Frames a text message into the outgoing buffer. A short string is encoded in place, behind
   * room for the longest header it could need; the header is then written and the text moved
   * up to meet it when the header came out shorter.
   */
  text(text: string): void {
    if (text.length > SHORT_TEXT) {
      return this.frame(TEXT, encoder.encode(text));
    }
    const most = text.length * 3;
    const key = this.#client ? 4 : 0;
    const room = (most < 126 ? 2 : 4) + key;
    this.#reserve(room + most);
    const at = this.#outLen;
    const { written } = encoder.encodeInto(
      text,
      this.#out.subarray(at + room, at + room + most),
    );
    const head = writeHeader(this.#out, at, TEXT, written, this.#client);
    if (head < room) {
      this.#out.copyWithin(at + head, at + room, at + room + written);
    }
    if (key) mask(this.#out, at + head, written, at + head - 4);
    this.#outLen = at + head + written;
    this.#schedule();
  }

  /** Frames a message for the next write; every frame sent in one turn leaves in one write. */
  frame(opcode: number, payload: Uint8Array): void {
    this.#reserve(14 + payload.length);
    const head = writeHeader(
      this.#out,
      this.#outLen,
      opcode,
      payload.length,
      this.#client,
    );
    const at = this.#outLen + head;
    this.#out.set(payload, at);
    if (this.#client) mask(this.#out, at, payload.length, at - 4);
    this.#outLen = at + payload.length;
    this.#schedule();
  }

  #reserve(bytes: number): void {
    const need = this.#outLen + bytes;
    if (need <= this.#out.length) return;
    const bigger = new Uint8Array(
      Math.max(need, this.#out.length * 2, OUT_MIN),
    );
    bigger.set(this.#out.subarray(0, this.#outLen));
    this.#out = bigger;
  }

  readonly #flushTask = () => void this.#flush();

  #schedule(): void {
    if (!this.#flushing) {
      this.#flushing = true;
      queueMicrotask(this.#flushTask);
    }
  }

  /**
   * Writes the outgoing buffer while it has bytes. Two buffers take turns: one is written while
   * the other fills, so a frame sent during a write joins the next one.
   */
  async #flush(): Promise<void> {
    try {
      while (this.#outLen > 0) {
        const full = this.#out;
        const length = this.#outLen;
        this.#inFlight = length;
        this.#out = this.#spare ?? new Uint8Array(0);
        this.#spare = undefined;
        this.#outLen = 0;
        // Most writes take every byte at once: no view and no loop until one does not.
        const n = await this.#conn.write(full.subarray(0, length));
        if (n < length) await writeAll(this.#conn, full.subarray(n, length));
        this.#inFlight = 0;
        // A buffer grown for one large message is let go rather than kept.
        if (full.length <= OUT_KEEP) this.#spare = full;
      }
    } catch {
      this.#inFlight = 0;
      this.#events.broken();
    } finally {
      this.#flushing = false;
    }
    this.#events.drained();
  }
}
