/**
 * The reading half of RFC 6455: a parser fed the bytes each read brings, which finds frames,
 * unmasks them, joins fragments, throws away messages over the cap as they stream in, and hands
 * whole messages and control frames to its owner. It does no I/O: {@linkcode ConnSocket} reads
 * into {@linkcode FrameReader.space} and calls {@linkcode FrameReader.parse}.
 *
 * @module
 */

import {
  BINARY,
  CLOSE,
  CONTINUATION,
  CONTROL_MAX,
  mask,
  PING,
  PONG,
  TEXT,
  utf8Step,
} from "./_ws_frame.ts";

/**
 * Buffers start small and grow with use: an idle connection costs a few KiB (a flood of them
 * must not cost the server a read buffer each of the size a busy one wants).
 */
const READ_MIN = 4 * 1024;
/** A busy connection's read buffer: frames beyond it grow it for their time only. */
const CHUNK = 64 * 1024;

/** How much of a message thrown away for its size is kept, to say which message it was. */
export const OVERSIZE_HEAD = 64 * 1024;

/** Where a {@linkcode FrameReader} hands what it found. */
export interface FrameSink {
  /** False once nothing more is taken (the connection ended). */
  readonly reading: boolean;
  /**
   * A whole text or binary message; false when the socket failed instead. `checked`: the
   * text's UTF-8 was checked as it arrived (it came in pieces).
   */
  message(opcode: number, payload: Uint8Array, checked: boolean): boolean;
  /** A close, ping or pong frame (checked: final, at most 125 bytes). */
  control(opcode: number, payload: Uint8Array): void;
  /**
   * A message over the cap, `bytes` long, has been thrown away; `head` holds its first bytes
   * (up to {@linkcode OVERSIZE_HEAD}), enough to find what it was (a request's id, say).
   */
  oversize(bytes: number, head: Uint8Array): void;
  /** A protocol error: the connection is to fail with `code`. */
  fail(code: number, reason: string): void;
}

/** Options for {@linkcode FrameReader}. */
export interface FrameReaderOptions {
  /** The client end: frames must come unmasked. */
  client: boolean;
  /** Largest message taken, in bytes. */
  maxMessageBytes: number;
  /** A message over the cap is thrown away and reported, rather than failing with 1009. */
  skipOversize: boolean;
}

/** Finds frames in the bytes a connection brings; see the module doc. */
export class FrameReader {
  #o: FrameReaderOptions;
  #sink: FrameSink;
  #buf: Uint8Array;
  #start = 0;
  #end: number;
  /** Payload bytes of an oversize message still to throw away. */
  #skip = 0;
  /** The size so far of an oversize message being thrown away, 0 outside one. */
  #oversize = 0;
  /** The first bytes of the oversize message, unmasked; `#headLength` of them so far. */
  #head: Uint8Array | undefined;
  #headLength = 0;
  /** The mask key of the frame being skipped, and how far into its payload the skip is. */
  #skipKey: Uint8Array | undefined;
  #skipped = 0;
  /** The size to answer once the skipped bytes are gone (the message's last frame came). */
  #answer = 0;
  /** The last read filled the buffer to its end. */
  #filled = false;
  // One growing buffer for the fragments of a message, not a list of pieces: a message sent a
  // byte per fragment must cost its bytes, not an object per byte.
  #fragments = new Uint8Array(0);
  #fragmentBytes = 0;
  #fragmentOpcode = 0;
  /**
   * Payload bytes of the frame in progress already unmasked and, in a text message, checked:
   * text that comes in pieces (fragments, or a frame over several reads) is checked as each
   * piece arrives, so that invalid UTF-8 fails the connection then, not once the message is
   * whole. A text frame that arrives whole is checked when it is decoded.
   */
  #done = 0;
  /** The UTF-8 state ({@linkcode utf8Step}) of the text message in progress. */
  #utf8 = 0;

  constructor(
    options: FrameReaderOptions,
    sink: FrameSink,
    initial: Uint8Array,
  ) {
    this.#o = options;
    this.#sink = sink;
    this.#buf = new Uint8Array(Math.max(READ_MIN, initial.length));
    this.#buf.set(initial);
    this.#end = initial.length;
  }

  /** Where the next read goes. */
  space(): Uint8Array {
    return this.#buf.subarray(this.#end);
  }

  /** `n` bytes were read into {@linkcode space}. */
  received(n: number): void {
    this.#end += n;
    this.#filled = this.#end === this.#buf.length;
  }

  /**
   * Handles every complete frame the buffer holds and makes room for the next read; false once
   * the connection failed or ended.
   */
  parse(): boolean {
    const o = this.#o;
    const sink = this.#sink;
    const max = o.maxMessageBytes;
    const buf = this.#buf;
    while (sink.reading) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, this.#end - this.#start);
        this.#keepHead(buf, this.#start, n);
        this.#skip -= n;
        this.#start += n;
        if (this.#skip > 0) break;
        if (this.#answer > 0) this.#answered();
        continue;
      }
      const start = this.#start;
      const available = this.#end - start;
      if (available < 2) break;
      const b0 = buf[start];
      const b1 = buf[start + 1];
      if ((b0 & 0x70) !== 0) return this.#fail(1002, "Reserved bits set");
      const masked = (b1 & 0x80) !== 0;
      if (masked === o.client) {
        return this.#fail(
          1002,
          o.client
            ? "Frames from a server must not be masked"
            : "Frames from a client must be masked",
        );
      }
      const len7 = b1 & 0x7f;
      const headLen = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) +
        (masked ? 4 : 0);
      if (available < headLen) break;
      const fin = (b0 & 0x80) !== 0;
      const opcode = b0 & 0x0f;
      let length = len7;
      if (len7 === 126) length = (buf[start + 2] << 8) | buf[start + 3];
      else if (len7 === 127) {
        length = 0;
        if (buf[start + 2] & 0x80) {
          return this.#fail(1002, "Payload length over 2^63");
        }
        for (let i = 2; i < 10; i++) length = length * 256 + buf[start + i];
      }
      const control = opcode >= CLOSE;
      if (control && (!fin || length > CONTROL_MAX)) {
        return this.#fail(1002, "Invalid control frame");
      }
      if (!control) {
        const continuing = opcode === CONTINUATION;
        if (continuing !== (this.#fragmentOpcode !== 0 || this.#oversize > 0)) {
          return this.#fail(1002, "Unexpected continuation frame");
        }
        if (!continuing && opcode !== TEXT && opcode !== BINARY) {
          return this.#fail(1002, `Unknown opcode ${opcode}`);
        }
        const sofar = continuing ? this.#oversize || this.#fragmentBytes : 0;
        if (this.#oversize > 0 || sofar + length > max) {
          // Thrown away as it streams in, never held; answered once its last frame is in.
          if (this.#oversize === 0) {
            if (!o.skipOversize) return this.#fail(1009, "Message too big");
            // What came in earlier fragments starts the head.
            this.#head = new Uint8Array(OVERSIZE_HEAD);
            this.#headLength = Math.min(this.#fragmentBytes, OVERSIZE_HEAD);
            this.#head.set(this.#fragments.subarray(0, this.#headLength));
            this.#fragments = new Uint8Array(0);
            this.#fragmentBytes = 0;
            this.#fragmentOpcode = 0;
            this.#utf8 = 0;
          }
          this.#oversize = sofar + length;
          this.#skipKey = masked
            ? buf.slice(start + headLen - 4, start + headLen)
            : undefined;
          this.#skipped = 0;
          this.#start += headLen;
          this.#skip = length;
          if (fin) {
            this.#answer = this.#oversize;
            this.#oversize = 0;
            if (length === 0) this.#answered();
          }
          continue;
        }
      } else if (opcode !== CLOSE && opcode !== PING && opcode !== PONG) {
        return this.#fail(1002, `Unknown opcode ${opcode}`);
      }
      const text = opcode === TEXT ||
        (opcode === CONTINUATION && this.#fragmentOpcode === TEXT);
      if (available < headLen + length) {
        if (text && available - headLen > this.#done) {
          const at = start + headLen;
          const got = available - headLen;
          if (masked) {
            mask(buf, at + this.#done, got - this.#done, at - 4, this.#done);
          }
          this.#utf8 = utf8Step(buf, at + this.#done, at + got, this.#utf8);
          if (this.#utf8 < 0) return this.#invalidText();
          this.#done = got;
        }
        // Wait for the rest. The buffer grows as the bytes come, never ahead of them: a header
        // alone must not make the server set aside the length it claims.
        if (start > 0 && headLen + length > buf.length - start) {
          buf.copyWithin(0, start, this.#end);
          this.#end -= start;
          this.#start = 0;
        }
        break;
      }
      const at = start + headLen;
      const done = this.#done;
      if (masked) mask(buf, at + done, length - done, at - 4, done);
      this.#start = at + length;
      this.#done = 0;
      const payload = buf.subarray(at, at + length);
      if (control) {
        sink.control(opcode, payload);
        continue;
      }
      const pieces = done > 0 || !fin || this.#fragmentOpcode !== 0;
      if (text && pieces) {
        this.#utf8 = utf8Step(buf, at + done, at + length, this.#utf8);
        if (this.#utf8 < 0 || (fin && this.#utf8 !== 0)) {
          return this.#invalidText();
        }
      }
      if (!fin || this.#fragmentOpcode !== 0) {
        if (this.#fragmentOpcode === 0) this.#fragmentOpcode = opcode;
        const bytes = this.#fragmentBytes;
        if (bytes + length > this.#fragments.length) {
          const bigger = new Uint8Array(
            Math.max(bytes + length, this.#fragments.length * 2, 1024),
          );
          bigger.set(this.#fragments.subarray(0, bytes));
          this.#fragments = bigger;
        }
        this.#fragments.set(payload, bytes);
        this.#fragmentBytes = bytes + length;
        if (!fin) continue;
        const whole = this.#fragments.subarray(0, this.#fragmentBytes);
        const kind = this.#fragmentOpcode;
        this.#fragments = new Uint8Array(0);
        this.#fragmentBytes = 0;
        this.#fragmentOpcode = 0;
        if (!sink.message(kind, whole, kind === TEXT)) return false;
      } else if (!sink.message(opcode, payload, pieces)) return false;
    }
    if (!sink.reading) return false;
    this.#makeRoom();
    return true;
  }

  #makeRoom(): void {
    let buf = this.#buf;
    if (this.#start === this.#end) {
      this.#start = this.#end = 0;
      // A large frame's buffer goes once it is handled; a read that filled a small buffer says
      // the peer is busy: the next reads get more room, up to CHUNK.
      if (buf.length > CHUNK) buf = new Uint8Array(CHUNK);
      else if (this.#filled && buf.length < CHUNK) {
        buf = new Uint8Array(buf.length * 2);
      }
    } else if (this.#start > 0 && buf.length - this.#end < CHUNK / 4) {
      buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    if (this.#end === buf.length) {
      const bigger = new Uint8Array(buf.length * 2);
      bigger.set(buf.subarray(0, this.#end));
      buf = bigger;
    }
    this.#buf = buf;
  }

  /** Keeps what fits of `n` skipped payload bytes at `at` in the head, unmasked. */
  #keepHead(buf: Uint8Array, at: number, n: number): void {
    const head = this.#head!;
    const take = Math.min(n, OVERSIZE_HEAD - this.#headLength);
    const key = this.#skipKey;
    for (let i = 0; i < take; i++) {
      head[this.#headLength + i] = key
        ? buf[at + i] ^ key[(this.#skipped + i) & 3]
        : buf[at + i];
    }
    this.#headLength += take;
    this.#skipped += n;
  }

  #answered(): void {
    const head = this.#head!.subarray(0, this.#headLength);
    this.#head = undefined;
    this.#headLength = 0;
    const bytes = this.#answer;
    this.#answer = 0;
    this.#sink.oversize(bytes, head);
  }

  #invalidText(): false {
    return this.#fail(1007, "Text frame is not valid UTF-8");
  }

  #fail(code: number, reason: string): false {
    this.#sink.fail(code, reason);
    return false;
  }
}
