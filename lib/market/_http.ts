/**
 * Request headers that look like a browser's, an upstream's base URL and gate, and number
 * parsing, shared by HTTP providers.
 *
 * @module
 */

import type { HostGate } from "./host_gate.ts";

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

/** An upstream's base URL (without a trailing slash), its host, and the gate for that host. */
export function upstream(
  baseUrl: string,
  gateFor: (host: string) => HostGate,
): { baseUrl: string; host: string; gate: HostGate } {
  const url = baseUrl.replace(/\/+$/, "");
  const host = new URL(url).host;
  return { baseUrl: url, host, gate: gateFor(host) };
}
