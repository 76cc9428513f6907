/**
 * Request headers that look like a browser's, and number parsing shared by HTTP providers.
 *
 * @module
 */

/** A desktop browser's User-Agent; both hosts serve the same data to their own web pages. */
export const BROWSER_USER_AGENT =
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) " +
  "Chrome/126.0.0.0 Safari/537.36";

/** A number from an upstream text field, or `undefined` for `-`, empty or garbage. */
export function numberOf(text: unknown): number | undefined {
  if (typeof text === "number") return Number.isFinite(text) ? text : undefined;
  if (typeof text !== "string" || text.trim() === "" || text === "-") {
    return undefined;
  }
  const value = Number(text);
  return Number.isFinite(value) ? value : undefined;
}
