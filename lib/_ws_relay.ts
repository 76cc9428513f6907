/**
 * The guard's relay for an upgraded WebSocket connection. Deno closes a connection (1009) on a
 * message of {@linkcode RUNTIME_FRAME_CAP} bytes or more before any JS sees it, so the guard reads
 * frame headers on the way in, throws such a message away instead of relaying it, and answers it
 * itself with one text frame slipped in between the server's frames. Only headers are parsed:
 * payload bytes are copied through in whole chunks as before.
 *
 * @module
 */

import { RUNTIME_FRAME_CAP } from "./_frame_size.ts";

const CHUNK = 64 * 1024;

/** Shared between the two directions of one connection. */
class Downstream {
  /** Whatever was written to the client ends at a frame boundary outside a fragmented message. */
  boundary = true;
  /** The server→client pump is waiting for bytes (it writes nothing meanwhile). */
  idle = false;
  /** Our own frames waiting for the next boundary. */
  pending: Uint8Array[] = [];
  /** Writes of our own frames under way while the pump was idle. */
  injecting: Promise<void> | undefined;
  /** The server answered 101: frames flow. */
  upgraded = false;
  constructor(readonly conn: Deno.Conn) {}

  inject(frame: Uint8Array): void {
    if (this.idle && this.boundary && this.upgraded) {
      const before = this.injecting ?? Promise.resolve();
      this.injecting = before.then(() => writeAll(this.conn, frame)).catch(
        () => {},
      );
    } else {
      this.pending.push(frame);
    }
  }
}

async function writeAll(to: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) {
    done += await to.write(bytes.subarray(done));
  }
}

/** An unmasked text frame, as a server sends it. */
export function textFrame(text: string): Uint8Array {
  const payload = new TextEncoder().encode(text);
  const n = payload.length;
  const head = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const frame = new Uint8Array(head + n);
  frame[0] = 0x81;
  if (n < 126) frame[1] = n;
  else if (n < 65536) {
    frame[1] = 126;
    frame[2] = n >> 8;
    frame[3] = n & 255;
  } else {
    frame[1] = 127;
    new DataView(frame.buffer).setBigUint64(2, BigInt(n));
  }
  frame.set(payload, head);
  return frame;
}

/** Header length once its first two bytes are known. */
function headerLength(b1: number): number {
  const len7 = b1 & 0x7f;
  return 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) +
    (b1 & 0x80 ? 4 : 0);
}

function payloadLength(h: Uint8Array, at: number): number {
  const len7 = h[at + 1] & 0x7f;
  if (len7 < 126) return len7;
  if (len7 === 126) return (h[at + 2] << 8) | h[at + 3];
  let n = 0;
  for (let i = 2; i < 10; i++) n = n * 256 + h[at + i];
  return n;
}

/**
 * Walks one direction's frame headers across chunks. `onHeader` decides per frame whether its
 * bytes (header and payload) go on; `onEnd` runs when a frame's last payload byte has passed.
 */
class FrameWalker {
  #head = new Uint8Array(14);
  #headLen = 0;
  /** Payload bytes of the current frame still to come. */
  remaining = 0;
  /** The current frame's bytes are withheld. */
  withheld = false;

  /** Some bytes of a header have come, not all. */
  get partialHeader(): boolean {
    return this.#headLen > 0;
  }

  constructor(
    readonly onHeader: (
      fin: boolean,
      opcode: number,
      length: number,
    ) => boolean,
    readonly onEnd: () => Uint8Array[] | void,
    readonly onWithheld: (bytes: Uint8Array) => void = () => {},
  ) {}

  /**
   * Splits `buf` into the pieces to pass on. `boundaries` receives offsets into `buf` (after
   * passing) where a frame ends. Returns undefined when the whole chunk passes unchanged.
   */
  walk(
    buf: Uint8Array,
    boundaries?: (offset: number) => void,
  ): Uint8Array[] | undefined {
    let out: Uint8Array[] | undefined;
    let passStart = 0;
    let i = 0;
    const n = buf.length;
    const cut = (end: number) => {
      out ??= [];
      if (end > passStart) out.push(buf.subarray(passStart, end));
    };
    const done = (offset: number) => {
      const extra = this.onEnd();
      if (extra && extra.length > 0) {
        cut(offset);
        out!.push(...extra);
        passStart = offset;
      }
      boundaries?.(offset);
    };
    while (i < n) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, n - i);
        if (this.withheld) {
          cut(i);
          this.onWithheld(buf.subarray(i, i + take));
          passStart = i + take;
        }
        i += take;
        this.remaining -= take;
        if (this.remaining === 0) done(i);
        continue;
      }
      // At a header.
      let header: Uint8Array;
      let at: number;
      let size: number;
      if (
        this.#headLen === 0 && n - i >= 2 && n - i >= headerLength(buf[i + 1])
      ) {
        header = buf;
        at = i;
        size = headerLength(buf[i + 1]);
      } else {
        // A header split across reads: its bytes are held until it is whole.
        cut(i);
        const need = this.#headLen < 2 ? 2 : headerLength(this.#head[1]);
        const take = Math.min(need - this.#headLen, n - i);
        this.#head.set(buf.subarray(i, i + take), this.#headLen);
        this.#headLen += take;
        i += take;
        passStart = i;
        if (
          this.#headLen < 2 || this.#headLen < headerLength(this.#head[1])
        ) continue;
        header = this.#head;
        at = 0;
        size = this.#headLen;
        this.#headLen = 0;
        const pass = this.#header(header, at);
        const copy = header.slice(0, size);
        if (pass) {
          out ??= [];
          out.push(copy);
        } else this.onWithheld(copy);
        if (this.remaining === 0) done(i);
        continue;
      }
      const pass = this.#header(header, at);
      if (!pass) {
        cut(i);
        this.onWithheld(buf.subarray(i, i + size));
        passStart = i + size;
      }
      i += size;
      if (this.remaining === 0) done(i);
    }
    if (out === undefined) return undefined;
    if (n > passStart) out.push(buf.subarray(passStart, n));
    return out;
  }

  #header(h: Uint8Array, at: number): boolean {
    const fin = (h[at] & 0x80) !== 0;
    const opcode = h[at] & 0x0f;
    this.remaining = payloadLength(h, at);
    const pass = this.onHeader(fin, opcode, this.remaining);
    this.withheld = !pass;
    return pass;
  }
}

/**
 * Relays an upgraded connection both ways. `initial` is what the client sent after its head,
 * already read. `oversize(bytes)` gives the text of the answer to a message of `bytes` bytes that
 * is not relayed.
 */
export async function relayWebSocket(
  client: Deno.Conn,
  server: Deno.Conn,
  initial: Uint8Array,
  oversize: (bytes: number) => string,
  cap: number = RUNTIME_FRAME_CAP,
): Promise<void> {
  const down = new Downstream(client);
  const up = pumpUp(client, server, initial, down, oversize, cap);
  const back = pumpDown(server, down);
  await Promise.race([up, back]);
  try {
    client.close();
  } catch { /* closed */ }
  try {
    server.close();
  } catch { /* closed */ }
  await Promise.all([up, back]);
}

async function pumpUp(
  from: Deno.Conn,
  to: Deno.Conn,
  initial: Uint8Array,
  down: Downstream,
  oversize: (bytes: number) => string,
  cap: number,
): Promise<void> {
  // A fragmented message is held until its last fragment: once the runtime has a first fragment
  // it must get the rest, so the decision waits for the total.
  let held: Uint8Array[] = [];
  let inMessage = false;
  let total = 0;
  let dropping = false;
  let holding = false;
  const walker = new FrameWalker(
    (fin, opcode, length) => {
      if (opcode & 0x08) return true; // control frames interleave freely
      if (opcode !== 0) {
        inMessage = !fin;
        total = length;
        dropping = length >= cap;
        holding = !fin && !dropping;
        if (holding) held = [];
        return !dropping && !holding;
      }
      if (!inMessage) return true; // a stray continuation: the runtime says what is wrong
      total += length;
      if (inMessage && fin) inMessage = false;
      if (!dropping && total >= cap) {
        dropping = true;
        holding = false;
        held = [];
      }
      return false;
    },
    () => {
      if (inMessage) return;
      if (dropping) {
        dropping = false;
        down.inject(textFrame(oversize(total)));
      } else if (holding) {
        holding = false;
        const whole = held;
        held = [];
        return whole;
      }
    },
    (bytes) => {
      if (holding) {
        held.push(bytes.slice());
      }
    },
  );
  const forward = async (chunk: Uint8Array) => {
    const pieces = walker.walk(chunk);
    if (pieces === undefined) return await writeAll(to, chunk);
    for (const piece of pieces) await writeAll(to, piece);
  };
  const buffer = new Uint8Array(CHUNK);
  try {
    if (initial.length > 0) await forward(initial);
    for (;;) {
      const n = await from.read(buffer);
      if (n === null) return;
      await forward(buffer.subarray(0, n));
    }
  } catch {
    // One side closed: the caller closes both.
  }
}

async function pumpDown(from: Deno.Conn, down: Downstream): Promise<void> {
  let fragmented = false;
  const walker = new FrameWalker(
    (fin, opcode) => {
      if (opcode & 0x08) return true;
      if (opcode !== 0) fragmented = !fin;
      else if (fin) fragmented = false;
      return true;
    },
    () => {},
  );
  const buffer = new Uint8Array(CHUNK);
  let head = "";
  try {
    for (;;) {
      down.idle = true;
      const n = await from.read(buffer);
      down.idle = false;
      if (n === null) return;
      if (down.injecting) await down.injecting;
      let chunk = buffer.subarray(0, n);
      if (!down.upgraded) {
        // The response head passes as it is; frames follow a 101 only.
        head += new TextDecoder("latin1").decode(chunk);
        const end = head.indexOf("\r\n\r\n");
        if (end < 0) {
          await writeAll(down.conn, chunk);
          continue;
        }
        if (!/^HTTP\/1\.1 101/.test(head)) {
          // Not upgraded (401, 503): the body and whatever else comes passes as it is.
          await writeAll(down.conn, chunk);
          for (;;) {
            const m = await from.read(buffer);
            if (m === null) return;
            await writeAll(down.conn, buffer.subarray(0, m));
          }
        }
        const restAt = chunk.length - (head.length - (end + 4));
        await writeAll(down.conn, chunk.subarray(0, restAt));
        down.upgraded = true;
        chunk = chunk.subarray(restAt);
        head = "";
      }
      let last = -1;
      walker.walk(
        chunk,
        down.pending.length > 0
          ? (offset) => {
            if (!fragmented) last = offset;
          }
          : undefined,
      );
      if (last >= 0) {
        await writeAll(down.conn, chunk.subarray(0, last));
        while (down.pending.length > 0) {
          await writeAll(down.conn, down.pending.shift()!);
        }
        chunk = chunk.subarray(last);
      }
      if (chunk.length > 0) await writeAll(down.conn, chunk);
      down.boundary = walker.remaining === 0 && !walker.partialHeader &&
        !fragmented;
      if (down.boundary && down.pending.length > 0) {
        while (down.pending.length > 0) {
          await writeAll(down.conn, down.pending.shift()!);
        }
      }
    }
  } catch {
    // One side closed: the caller closes both.
  }
}
