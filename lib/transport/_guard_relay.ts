/**
 * Plain HTTP through the guard: a request that is not a WebSocket upgrade is relayed to the real
 * HTTP server on a loopback port, its head marked with the peer's address, its body timed.
 *
 * @module
 */

import { bodyFraming } from "./_body_framing.ts";
import { writeAll } from "./_http.ts";
import {
  type Admission,
  closeQuietly,
  type Tracked,
} from "./_guard_admission.ts";
import { plainAnswer } from "./_http.ts";
import { rewriteHead } from "./_guard_head.ts";

const encoder = new TextEncoder();

/** What {@linkcode relay} needs from the guard. */
export interface RelayOptions {
  /** The loopback port of the HTTP server to relay to. */
  target: () => number;
  /** The secret that marks relayed requests. */
  secret: string;
  /** @default 10000 */
  bodyTimeoutMs?: number;
  /** The guard has closed: give up. */
  closed: () => boolean;
}

/**
 * Relays one request (its head, and the bytes that came with it) and everything after, until
 * either side ends.
 */
export async function relay(
  tracked: Tracked,
  head: { head: string; rest: Uint8Array },
  admission: Admission,
  options: RelayOptions,
): Promise<void> {
  const { conn } = tracked;
  let upstream: Deno.TcpConn | undefined;
  // Out of descriptors here too (shed), or the server behind is starting again after its own
  // accept loop failed: try again a few times before giving up on a connection that did
  // everything right.
  for (let attempt = 0; upstream === undefined; attempt++) {
    try {
      upstream = await Deno.connect({
        hostname: "127.0.0.1",
        port: options.target(),
      });
    } catch (error) {
      admission.failed(error);
      if (attempt >= 4 || !admission.has(tracked) || options.closed()) {
        return admission.drop(tracked, "503 Service Unavailable");
      }
      await new Promise((resolve) => setTimeout(resolve, 20 << attempt));
    }
  }
  tracked.upstream = upstream;
  if (!admission.has(tracked)) return admission.drop(tracked);
  upstream.setNoDelay(true);
  try {
    const rewritten = rewriteHead(head.head, options.secret, tracked.address);
    await upstream.write(encoder.encode(rewritten));
    if (head.rest.length > 0) await upstream.write(head.rest);
  } catch {
    return admission.drop(tracked);
  }
  // The body must follow within the body timeout. It is timed here, in the guard, because only
  // the guard can close the connection: `Deno.serve` (2.9) keeps a connection whose request
  // body never completes open for good, even after its handler has answered with
  // `connection: close`, and every path would hold one (the HTTP API's `POST /v1/request` and
  // `/v1/markets` are the ones that wait for a body; the others answer and still hang on). The
  // cost is following `content-length` or chunked framing as the bytes pass; with `--no-guard`
  // there is no body timeout, as there is no header timeout.
  const bodyTimeoutMs = options.bodyTimeoutMs ?? 10_000;
  const body = bodyFraming(head.head);
  let answered = false;
  let expired: Promise<void> | undefined;
  if (body && !body.feed(head.rest)) {
    tracked.timer = setTimeout(() => {
      if (body.complete || !admission.has(tracked)) return;
      admission.counts.body_timeouts++;
      // Nothing more reaches the server; a 408 goes out unless its answer has begun (a
      // `100 Continue` counts as begun).
      closeQuietly(upstream);
      if (!answered) expired = answerBodyTimeout(conn, bodyTimeoutMs);
    }, bodyTimeoutMs);
  }
  // Plain read/write with one buffer per direction: web-streams pipeTo cost the broker ~50
  // to ~100 us of CPU per request at full load (bench: broker against broker-noguard).
  const up = pump(
    conn,
    upstream,
    body && !body.complete
      ? (bytes) => {
        if (body.feed(bytes)) clearTimeout(tracked.timer);
      }
      : undefined,
  );
  const down = pump(upstream, conn, () => answered = true);
  await Promise.race([up, down]);
  clearTimeout(tracked.timer);
  await expired;
  closeQuietly(conn);
  closeQuietly(upstream);
  await Promise.all([up, down]);
}

/** Writes the 408 for a body that did not arrive in time; the caller closes. */
async function answerBodyTimeout(
  conn: Deno.Conn,
  bodyTimeoutMs: number,
): Promise<void> {
  try {
    await writeAll(
      conn,
      plainAnswer(
        "408 Request Timeout",
        `Request body timeout: the body did not arrive whole within ${
          bodyTimeoutMs / 1000
        } s`,
      ),
    );
  } catch {
    // The peer is gone: nothing to tell.
  }
}

/** Copies `from` to `to` until `from` ends or either fails; `seen` sees each read first. */
async function pump(
  from: Deno.Conn,
  to: Deno.Conn,
  seen?: (bytes: Uint8Array) => void,
): Promise<void> {
  const buffer = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      const n = await from.read(buffer);
      if (n === null) return;
      seen?.(buffer.subarray(0, n));
      for (let done = 0; done < n;) {
        done += await to.write(buffer.subarray(done, n));
      }
    }
  } catch {
    // One side closed: the caller closes both.
  }
}
