// WebSocket frames by hand, for tests that speak the wire format on bare TCP sockets.

export { writeAll } from "../lib/transport/_http.ts";

/** `parts` joined into one array. */
export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A frame header for a payload of `length` bytes, masked with `key` when given (client). */
export function frameHeader(
  fin: boolean,
  opcode: number,
  length: number,
  key?: readonly number[],
): Uint8Array {
  const size = length < 126 ? 2 : length < 65536 ? 4 : 10;
  const head = new Uint8Array(size + (key ? 4 : 0));
  head[0] = (fin ? 0x80 : 0) | opcode;
  const maskBit = key ? 0x80 : 0;
  if (length < 126) head[1] = maskBit | length;
  else if (length < 65536) {
    head[1] = maskBit | 126;
    head[2] = length >> 8;
    head[3] = length & 255;
  } else {
    head[1] = maskBit | 127;
    new DataView(head.buffer).setBigUint64(2, BigInt(length));
  }
  if (key) head.set(key, size);
  return head;
}
