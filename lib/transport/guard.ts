/**
 * The front door of a port: its own accept loop in front of `Deno.serve`.
 *
 * `Deno.serve` (Deno 2.9) cannot time out request headers, offers no per-address limit, and its
 * accept loop ends for good on the first `EMFILE` (its `finished` promise rejects with "Too many
 * open files"), so a flood of half-sent requests stops a port. The guard accepts connections
 * itself with `Deno.listen`: an accept error is counted and retried after a short pause; each
 * connection must deliver a complete request head within the header timeout, then its whole body
 * within the body timeout; an address may hold only so many connections; the total is bounded by
 * the descriptors the process may open.
 *
 * A WebSocket upgrade that passes is handed to the port's handler in this process and framed by
 * `_websocket.ts` on the accepted connection itself: the hot path takes no second hop. Any other
 * request is relayed to the real HTTP server on a loopback port, with its head marked so that the
 * server knows the real peer address and that it came through the guard.
 *
 * Refusals are counted and written as one summary line per interval, never one line per
 * connection.
 *
 * @module
 */

import { offerUpgrade } from "./_websocket.ts";
import { acceptKey } from "./_ws_frame.ts";
import { plainAnswer, serializeResponse, writeAll } from "./_http.ts";
import {
  Admission,
  connectionBudget,
  descriptorLimit,
  type GuardStats,
  type Tracked,
} from "./_guard_admission.ts";
import {
  checkHead,
  checkUpgrade,
  parseAddress,
  parseHead,
  readHead,
  type Refusal,
} from "./_guard_head.ts";
import { relay } from "./_guard_relay.ts";

export {
  connectionBudget,
  descriptorLimit,
  type GuardStats,
} from "./_guard_admission.ts";
export {
  parseAddress,
  parseHead,
  PEER_HEADER,
  relayedPeer,
  rewriteHead,
} from "./_guard_head.ts";

const encoder = new TextEncoder();

/** Bytes behind an upgrade request, sent before its 101: refused, never framed. */
function early(): Refusal {
  return {
    status: "400 Bad Request",
    text:
      "Data sent before the WebSocket handshake completed: wait for the 101 before sending frames",
  };
}

/** Options for {@linkcode Guard}. */
export interface GuardOptions {
  /** Interface to listen on. */
  hostname: string;
  /** Port to listen on; 0 picks a free one. */
  port: number;
  /** PEM certificate and key: the guard terminates TLS. */
  cert?: string;
  key?: string;
  /** The loopback port of the HTTP server to relay to. */
  target: () => number;
  /** Value of the {@linkcode PEER_HEADER} secret that marks relayed requests. */
  secret: string;
  /** Time a connection has to send a complete request head, in ms. @default 5000 */
  headerTimeoutMs?: number;
  /**
   * Time a connection has to send the whole request body once its head is in, in ms; past it the
   * answer is 408 (unless the server has begun answering) and the connection closes.
   * @default 10000
   */
  bodyTimeoutMs?: number;
  /** Largest request head, in bytes. @default 16384 */
  maxHeadBytes?: number;
  /** Open connections in all, pending or relayed. @default {@linkcode connectionBudget} */
  maxConnections?: number;
  /** Open connections from one IP address. @default 256 */
  maxPerAddress?: number;
  /** How often refusals are summed up in one log line, in ms. @default 10000 */
  logIntervalMs?: number;
  /** A name for log lines ("worker", "requester"). */
  name?: string;
  /**
   * The port's handler for WebSocket upgrades, run in this process on the accepted connection
   * (see the module doc). Without it, upgrades are relayed like any other request.
   */
  handleUpgrade?: Deno.ServeHandler<Deno.NetAddr>;
  /**
   * The text of the answer to a WebSocket message too large to take (64 MiB or more), given
   * its size: such a message is thrown away as it arrives and answered instead of closing the
   * connection.
   */
  oversizeAnswer?: (bytes: number, head: Uint8Array) => string;
}

/** The front door; see the module doc. */
export class Guard {
  readonly port: number;
  #o: GuardOptions;
  #listener: Deno.Listener;
  #admission: Admission;
  #closed = false;
  #loop: Promise<void>;
  #tasks = new Set<Promise<void>>();
  #logTimer: ReturnType<typeof setInterval> | undefined;

  constructor(options: GuardOptions) {
    this.#o = options;
    this.#admission = new Admission(
      options.name ?? "A",
      options.maxConnections ?? connectionBudget(descriptorLimit()),
      options.maxPerAddress ?? 256,
    );
    this.#listener = options.cert && options.key
      ? Deno.listenTls({
        hostname: options.hostname,
        port: options.port,
        cert: options.cert,
        key: options.key,
      })
      : Deno.listen({ hostname: options.hostname, port: options.port });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#logTimer = setInterval(
      () => this.flushLog(),
      options.logIntervalMs ?? 10_000,
    );
    this.#loop = this.#acceptLoop();
  }

  /** Open connections in all; lowered when the process runs out of descriptors first. */
  get maxConnections(): number {
    return this.#admission.maxConnections;
  }

  /** Open connections from one IP address. */
  get maxPerAddress(): number {
    return this.#admission.maxPerAddress;
  }

  /** Counters since start. */
  stats(): GuardStats {
    return this.#admission.stats();
  }

  /** Writes one line for the refusals since the last one, if there were any. */
  flushLog(): void {
    this.#admission.flushLog();
  }

  async #acceptLoop(): Promise<void> {
    let pause = 10;
    while (!this.#closed) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (this.#closed) return;
        // EMFILE and friends: the connection waits in the kernel's backlog; try again soon,
        // once header timeouts and closes have given descriptors back.
        this.#admission.failed(error);
        await new Promise((resolve) => setTimeout(resolve, pause));
        pause = Math.min(pause * 2, 200);
        continue;
      }
      pause = 10;
      const tracked = this.#admission.admit(conn);
      if (tracked === undefined) continue;
      const task = this.#serve(tracked).finally(() => {
        this.#tasks.delete(task);
        this.#admission.forget(tracked);
      });
      this.#tasks.add(task);
    }
  }

  async #serve(tracked: Tracked): Promise<void> {
    const admission = this.#admission;
    const { conn } = tracked;
    tracked.timer = setTimeout(() => {
      if (!tracked.pending) return;
      admission.counts.header_timeouts++;
      admission.drop(tracked, "408 Request Timeout");
    }, this.#o.headerTimeoutMs ?? 5000);
    let head;
    try {
      head = await readHead(conn, this.#o.maxHeadBytes ?? 16_384);
    } catch {
      head = undefined;
    }
    clearTimeout(tracked.timer);
    if (head === "oversized") {
      admission.counts.oversized_heads++;
      return admission.drop(tracked, "431 Request Header Fields Too Large");
    }
    if (!head || !admission.has(tracked) || this.#closed) {
      return admission.drop(tracked);
    }
    // Its head is complete: from now on it is no longer the first to give way.
    tracked.pending = false;
    const refusal = head === "bare-lf"
      ? {
        status: "400 Bad Request",
        text: "Lines of a request head end in CRLF, not LF alone",
      }
      : checkHead(head.head);
    if (refusal !== undefined || head === "bare-lf") {
      return this.#refuseRequest(tracked, refusal!);
    }
    if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
    if (this.#o.handleUpgrade !== undefined && /^upgrade:/im.test(head.head)) {
      // The same test the ports make (`lib/broker/http.ts`): a request they would not take for
      // an upgrade (two Upgrade headers, say) is relayed like any other.
      const parsed = parseHead(head.head, this.#o.cert !== undefined);
      const { req, version } = parsed ?? {};
      if (req?.headers.get("upgrade")?.toLowerCase() === "websocket") {
        const refusal = checkUpgrade(req, version!) ??
          (head.rest.length > 0 ? early() : undefined);
        if (refusal) return this.#refuseRequest(tracked, refusal);
        return await this.#upgrade(tracked, req);
      }
    }
    await relay(tracked, head, admission, {
      target: this.#o.target,
      secret: this.#o.secret,
      bodyTimeoutMs: this.#o.bodyTimeoutMs,
      closed: () => this.#closed,
    });
  }

  /**
   * Runs the port's handler for an upgrade request; when it accepts, answers 101 and frames the
   * connection here until it ends; else writes the handler's answer (401, 429, 503…) and closes.
   */
  async #upgrade(tracked: Tracked, req: Request): Promise<void> {
    const { conn } = tracked;
    const admission = this.#admission;
    const ended = Promise.withResolvers<void>();
    const offer = offerUpgrade(req, conn, {
      oversizeAnswer: this.#o.oversizeAnswer,
    });
    // A read waits from now on: bytes it brings before the 101 is written were sent before the
    // client could know the upgrade was taken. They are refused, never framed; bytes it brings
    // later are the first frames.
    const buffer = new Uint8Array(4096);
    let arrived: number | null | undefined;
    const first = conn.read(buffer).then(
      (n) => arrived = n,
      () => arrived = null,
    );
    let response: Response;
    try {
      response = await this.#o.handleUpgrade!(req, {
        remoteAddr: parseAddress(tracked.address),
        completed: ended.promise,
      });
    } catch {
      // Deno.upgradeWebSocket's own answer to a malformed upgrade.
      response = new Response("Invalid WebSocket upgrade request\n", {
        status: 400,
      });
    }
    const socket = offer.socket;
    try {
      if (socket !== undefined && response === offer.response) {
        const accept = await acceptKey(req.headers.get("sec-websocket-key")!);
        if (arrived !== undefined) {
          if (arrived !== null) await this.#refuseRequest(tracked, early());
          socket.terminate();
          return admission.drop(tracked);
        }
        try {
          await writeAll(
            conn,
            encoder.encode(
              "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" +
                `Connection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
            ),
          );
        } catch {
          socket.terminate();
          return admission.drop(tracked);
        }
        socket.start(
          first.then((n) => n === null ? null : buffer.subarray(0, n)),
        );
        await socket.closed;
        return admission.drop(tracked);
      }
      socket?.terminate();
      // Refusals (401, 429, 503…) are short; anything that does not end soon is cut off.
      const bytes = await serializeResponse(response, 5000).catch(() =>
        undefined
      );
      if (bytes) await writeAll(conn, bytes).catch(() => {});
      admission.drop(tracked);
    } finally {
      ended.resolve();
    }
  }

  /** Answers a request the guard refuses on its own, and closes. */
  async #refuseRequest(tracked: Tracked, refusal: Refusal): Promise<void> {
    await writeAll(
      tracked.conn,
      plainAnswer(refusal.status, refusal.text, refusal.headers),
    ).catch(() => {});
    this.#admission.drop(tracked);
  }

  /** Stops accepting: the port is free again; open connections stay. */
  async stopAccepting(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#listener.close();
    }
    await this.#loop;
  }

  /** Stops accepting and closes every connection. */
  async close(): Promise<void> {
    if (this.#logTimer === undefined) return;
    clearInterval(this.#logTimer);
    this.#logTimer = undefined;
    this.flushLog();
    await this.stopAccepting();
    for (const t of this.#admission.all()) this.#admission.drop(t);
    await Promise.all([...this.#tasks]);
  }
}
