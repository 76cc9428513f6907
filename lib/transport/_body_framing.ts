/**
 * Follows the framing of an HTTP/1.1 request body as its bytes pass, to tell when it is complete:
 * `content-length` bytes, or chunks up to the last chunk and its trailer (RFC 9112 §6, §7.1).
 * The connection guard uses it to time out request bodies; it never changes a byte.
 *
 * @module
 */

const CR = 13;
const LF = 10;
/** Longest chunk-size line or trailer line followed; past it the body counts as never complete. */
const MAX_LINE = 4096;

/** Where a chunked body's reader stands. */
type ChunkState = "size" | "data" | "data-end" | "trailer" | "done" | "broken";

/** Counts a request body's bytes until its framing says it is complete. */
export class BodyFraming {
  #remaining = 0;
  #chunked: boolean;
  #state: ChunkState;
  /** The chunk-size line so far (hex digits and any extension). */
  #line = "";
  /** Bytes of the current trailer line, without its CR. */
  #lineBytes = 0;

  /** A body of `length` bytes, or chunked when `length` is "chunked". */
  constructor(length: number | "chunked") {
    this.#chunked = length === "chunked";
    if (length === "chunked") {
      this.#state = "size";
    } else {
      this.#remaining = length;
      this.#state = length === 0 ? "done" : "data";
    }
  }

  /** Whether the whole body has passed. */
  get complete(): boolean {
    return this.#state === "done";
  }

  /**
   * Takes the next bytes of the connection; returns whether the body is complete. Bytes past its
   * end (a pipelined request) are ignored. A malformed chunked body never completes: the server
   * behind refuses it, and the body timeout closes the connection if that server does not.
   */
  feed(bytes: Uint8Array): boolean {
    if (!this.#chunked) {
      this.#remaining = Math.max(0, this.#remaining - bytes.length);
      if (this.#remaining === 0) this.#state = "done";
      return this.complete;
    }
    for (let i = 0; i < bytes.length;) {
      switch (this.#state) {
        case "done":
        case "broken":
          return this.complete;
        case "data": {
          const n = Math.min(this.#remaining, bytes.length - i);
          this.#remaining -= n;
          i += n;
          if (this.#remaining === 0) this.#state = "data-end";
          break;
        }
        case "data-end":
          // The CRLF after a chunk's data; a bare LF is taken too.
          if (bytes[i] === LF) this.#state = "size";
          else if (bytes[i] !== CR) this.#state = "broken";
          i++;
          break;
        case "size":
          i = this.#sizeLine(bytes, i);
          break;
        case "trailer": {
          const b = bytes[i++];
          if (b === LF) {
            if (this.#lineBytes === 0) this.#state = "done";
            this.#lineBytes = 0;
          } else if (b !== CR && ++this.#lineBytes > MAX_LINE) {
            this.#state = "broken";
          }
          break;
        }
      }
    }
    return this.complete;
  }

  /** Reads the chunk-size line from `i`; returns where it stopped. */
  #sizeLine(bytes: Uint8Array, i: number): number {
    for (; i < bytes.length; i++) {
      const b = bytes[i];
      if (b !== LF) {
        if (b !== CR) this.#line += String.fromCharCode(b);
        if (this.#line.length > MAX_LINE) {
          this.#state = "broken";
          return i + 1;
        }
        continue;
      }
      const hex = this.#line.split(";")[0].trim();
      this.#line = "";
      if (!/^[0-9a-fA-F]{1,12}$/.test(hex)) {
        this.#state = "broken";
        return i + 1;
      }
      this.#remaining = parseInt(hex, 16);
      this.#state = this.#remaining === 0 ? "trailer" : "data";
      return i + 1;
    }
    return i;
  }
}

/**
 * How the body of a request with this head is framed: `transfer-encoding: chunked` wins over
 * `content-length` (RFC 9112 §6.3); undefined when the request has no body, or framing the server
 * behind will refuse anyway (another transfer coding, a malformed length).
 */
export function bodyFraming(head: string): BodyFraming | undefined {
  let length: string | undefined;
  let coding: string | undefined;
  for (const line of head.split("\r\n").slice(1)) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === "content-length") length = value;
    else if (name === "transfer-encoding") {
      coding = coding === undefined ? value : `${coding}, ${value}`;
    }
  }
  if (coding !== undefined) {
    const last = coding.split(",").at(-1)!.trim().toLowerCase();
    return last === "chunked" ? new BodyFraming("chunked") : undefined;
  }
  if (length === undefined || !/^\d{1,15}$/.test(length)) return undefined;
  const n = Number(length);
  return n > 0 ? new BodyFraming(n) : undefined;
}
