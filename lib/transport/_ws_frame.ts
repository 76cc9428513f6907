/**
 * RFC 6455 on the wire: frame headers, masking, close codes and the handshake's accept key. No
 * state and no I/O; the reader, the writer and both handshakes build on these.
 *
 * @module
 */

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const encoder = new TextEncoder();

/** Opcodes (RFC 6455 §5.2). */
export const CONTINUATION = 0x0;
export const TEXT = 0x1;
export const BINARY = 0x2;
export const CLOSE = 0x8;
export const PING = 0x9;
export const PONG = 0xa;

/** The largest payload of a control frame (RFC 6455 §5.5). */
export const CONTROL_MAX = 125;

/** The `Sec-WebSocket-Accept` value for a client's key. */
export async function acceptKey(key: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-1",
    encoder.encode(key + GUID),
  );
  let binary = "";
  for (const byte of new Uint8Array(digest)) {
    binary += String.fromCharCode(byte);
  }
  return btoa(binary);
}

/**
 * Writes the header of a final frame of `n` payload bytes at `out[at]` (room for 14 bytes
 * needed), with a fresh mask key when `masked` (the client end); returns its length.
 */
export function writeHeader(
  out: Uint8Array,
  at: number,
  opcode: number,
  n: number,
  masked: boolean,
): number {
  const maskBit = masked ? 0x80 : 0;
  out[at] = 0x80 | opcode;
  let length: number;
  if (n < 126) {
    out[at + 1] = maskBit | n;
    length = 2;
  } else if (n < 65536) {
    out[at + 1] = maskBit | 126;
    out[at + 2] = n >> 8;
    out[at + 3] = n & 0xff;
    length = 4;
  } else {
    out[at + 1] = maskBit | 127;
    new DataView(out.buffer, out.byteOffset + at + 2, 8).setBigUint64(
      0,
      BigInt(n),
    );
    length = 10;
  }
  if (!masked) return length;
  maskKey(out, at + length);
  return length + 4;
}

/** The payload of a close frame: the code, then as much of `reason` as fits whole characters. */
export function closePayload(code: number, reason: string): Uint8Array {
  let text = encoder.encode(reason);
  if (text.length > CONTROL_MAX - 2) {
    // Cut at a character boundary: a continuation byte starts with the bits 10.
    let end = CONTROL_MAX - 2;
    while (end > 0 && (text[end] & 0xc0) === 0x80) end--;
    text = text.subarray(0, end);
  }
  const payload = new Uint8Array(2 + text.length);
  payload[0] = code >> 8;
  payload[1] = code & 0xff;
  payload.set(text, 2);
  return payload;
}

/** Close codes a peer may send (RFC 6455 §7.4): defined ones, and 3000–4999. */
export function validCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
    (code >= 3000 && code <= 4999);
}

/** Random mask keys come from a pool filled by the system's generator, 4 KiB at a time. */
const keys = new Uint8Array(4096);
let keyAt = keys.length;

function maskKey(out: Uint8Array, at: number): void {
  if (keyAt === keys.length) {
    crypto.getRandomValues(keys);
    keyAt = 0;
  }
  out[at] = keys[keyAt];
  out[at + 1] = keys[keyAt + 1];
  out[at + 2] = keys[keyAt + 2];
  out[at + 3] = keys[keyAt + 3];
  keyAt += 4;
}

/**
 * XORs `length` bytes at `at` with the 4-byte key at `keyAt` (masking and unmasking alike),
 * starting `phase` bytes into the key (a payload unmasked in pieces as it arrives):
 * bytewise up to a 4-byte boundary, then a word at a time with the key turned to match.
 */
export function mask(
  buf: Uint8Array,
  at: number,
  length: number,
  keyAt: number,
  phase = 0,
): void {
  let k0 = buf[keyAt], k1 = buf[keyAt + 1], k2 = buf[keyAt + 2];
  let k3 = buf[keyAt + 3];
  if (phase & 3) {
    const key = [k0, k1, k2, k3];
    k0 = key[phase & 3];
    k1 = key[(phase + 1) & 3];
    k2 = key[(phase + 2) & 3];
    k3 = key[(phase + 3) & 3];
  }
  const end = at + length;
  let i = at;
  if (length >= 64) {
    // Long payloads go a word at a time from the first aligned byte; short ones (most
    // requests and answers) are not worth the view this needs.
    const key = [k0, k1, k2, k3];
    let k = 0;
    for (; (buf.byteOffset + i) % 4 !== 0; i++, k++) buf[i] ^= key[k & 3];
    // Little-endian words: the byte at the lowest address is the word's low byte.
    const word = key[k & 3] | key[(k + 1) & 3] << 8 | key[(k + 2) & 3] << 16 |
      key[(k + 3) & 3] << 24;
    const words = (end - i) >> 2;
    const view = new Uint32Array(buf.buffer, buf.byteOffset + i, words);
    for (let w = 0; w < words; w++) view[w] ^= word;
    i += words * 4;
    k += words * 4;
    for (; i < end; i++, k++) buf[i] ^= key[k & 3];
    return;
  }
  for (; i + 3 < end; i += 4) {
    buf[i] ^= k0;
    buf[i + 1] ^= k1;
    buf[i + 2] ^= k2;
    buf[i + 3] ^= k3;
  }
  if (i < end) buf[i++] ^= k0;
  if (i < end) buf[i++] ^= k1;
  if (i < end) buf[i] ^= k2;
}

/**
 * Checks UTF-8 in `buf[from, to)` as it arrives, carrying the state of a sequence cut at a
 * chunk's end: 0 between characters, otherwise the continuation bytes still wanted and the
 * range the next one must fall in (RFC 3629 §4: no overlongs, no surrogates, nothing past
 * U+10FFFF). Returns the state after the bytes, or -1 at the first byte no valid text could
 * hold. ASCII runs cost a comparison a byte.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { utf8Step } from "./_ws_frame.ts";
 * const bytes = new Uint8Array([0xce, 0xba, 0xf4, 0x90]);
 * assert.notEqual(utf8Step(bytes, 0, 3, 0), -1); // a valid start, cut mid-character
 * assert.equal(utf8Step(bytes, 0, 4, 0), -1); // F4 90 can start no character
 * ```
 */
export function utf8Step(
  buf: Uint8Array,
  from: number,
  to: number,
  state: number,
): number {
  let need = state & 3;
  let lo = (state >> 8) & 0xff;
  let hi = (state >> 16) & 0xff;
  let i = from;
  while (i < to) {
    if (need === 0) {
      while (i < to && buf[i] < 0x80) i++;
      if (i === to) break;
      const b = buf[i++];
      lo = 0x80;
      hi = 0xbf;
      if (b >= 0xc2 && b <= 0xdf) need = 1;
      else if (b >= 0xe0 && b <= 0xef) {
        need = 2;
        if (b === 0xe0) lo = 0xa0;
        else if (b === 0xed) hi = 0x9f;
      } else if (b >= 0xf0 && b <= 0xf4) {
        need = 3;
        if (b === 0xf0) lo = 0x90;
        else if (b === 0xf4) hi = 0x8f;
      } else return -1;
      continue;
    }
    const b = buf[i++];
    if (b < lo || b > hi) return -1;
    need--;
    lo = 0x80;
    hi = 0xbf;
  }
  return need === 0 ? 0 : need | lo << 8 | hi << 16;
}
