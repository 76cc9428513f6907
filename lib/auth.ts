/**
 * Shared-secret tokens for each port: from an `Authorization: Bearer` header, or a `token` query
 * parameter for browsers that cannot set headers on a WebSocket. Compared in constant time.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";

function digest(text: string): Uint8Array {
  return createHash("sha256").update(text).digest();
}

/** Reads the token a request presents, or undefined. */
export function presentedToken(req: Request): string | undefined {
  const header = req.headers.get("authorization");
  if (header) {
    const match = /^Bearer\s+(.+)$/i.exec(header.trim());
    if (match) return match[1].trim();
  }
  const query = new URL(req.url).searchParams.get("token");
  return query ?? undefined;
}

/**
 * Whether `req` carries `expected`. Hashing both sides first makes the comparison constant-time
 * regardless of the presented token's length.
 */
export function authorized(
  req: Request,
  expected: string | undefined,
): boolean {
  if (expected === undefined || expected === "") return true;
  const token = presentedToken(req);
  if (token === undefined) return false;
  return timingSafeEqual(digest(token), digest(expected));
}
