/**
 * Payloads shared by the bench helpers: a reply body of a requested size.
 *
 * @module
 */

const cache = new Map<number, string>();

/** A string of `size` ASCII characters (cached). */
export function payload(size: number): string {
  let text = cache.get(size);
  if (text === undefined) {
    text = "x".repeat(Math.max(0, Math.floor(size)));
    cache.set(size, text);
  }
  return text;
}

/** Reads `{size}` from an echo request's params; 0 when absent or invalid. */
export function requestedSize(params: unknown): number {
  const size = (params as { size?: unknown } | null)?.size;
  return typeof size === "number" && size >= 0 && size <= 1 << 20 ? size : 0;
}
