/**
 * Frame sizes in bytes. A WebSocket text frame arrives as a JS string, whose `length` counts
 * UTF-16 units: a frame of 3-byte characters is three times its `length` on the wire. Limits are
 * in bytes, so they are measured here without encoding the frame.
 *
 * @module
 */

/**
 * The largest message Deno's WebSocket accepts (its own cap, 64 MiB): a bigger one closes the
 * connection before the server sees it, so a frame limit must stay below it to be answered.
 */
export const RUNTIME_FRAME_CAP = 64 * 1024 * 1024;

/** The UTF-8 size of `text` in bytes. */
export function utf8Bytes(text: string): number {
  let bytes = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) continue;
    // A surrogate pair is 2 units and 4 bytes: 1 extra byte per unit. Else 2 or 3 bytes per unit.
    bytes += c < 0x800 ? 1 : c >= 0xd800 && c <= 0xdfff ? 1 : 2;
  }
  return bytes;
}

/** Whether `text` is over `limit` bytes as UTF-8; cheap for frames far from the limit. */
export function overBytes(text: string, limit: number): boolean {
  if (text.length > limit) return true;
  if (text.length * 3 <= limit) return false;
  return utf8Bytes(text) > limit;
}
