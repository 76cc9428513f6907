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

import { logger } from "../log.ts";
import { acceptKey, headEnd, offerUpgrade, writeAll } from "./_websocket.ts";
import { bodyFraming } from "./_body_framing.ts";

const log = logger("guard");

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
  oversizeAnswer?: (bytes: number) => string;
}

/** What the guard refused or closed, since it started. */
export interface GuardStats {
  /** Connections open now: waiting for their head, or relayed. */
  open: number;
  /** Connections waiting for their head now. */
  pending: number;
  /** Connections admitted past the limits. */
  accepted: number;
  /** Refused with 429: their address held `maxPerAddress` connections already. */
  refused_per_address: number;
  /** Refused with 503: the port was full and nobody could give way. */
  refused_total: number;
  /** Connections closed to make room for an address that held fewer. */
  evicted: number;
  /** Closed with 408: no complete request head within the header timeout. */
  header_timeouts: number;
  /** Closed, with 408 when the server had not answered: no whole body within the body timeout. */
  body_timeouts: number;
  /** Closed with 431: a request head over 16 KiB. */
  oversized_heads: number;
  /** Failed accepts (EMFILE and the like) and failed connects to the server behind. */
  accept_errors: number;
}

/** The header that carries `<secret> <address>` from the guard to the server. */
export const PEER_HEADER = "x-switchyard-peer";

const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

// Each relayed connection costs three descriptors (the peer's, ours to the server, the server's
// side); keep some for listeners, logs and outgoing work.
const FDS_PER_CONNECTION = 3;
const FD_RESERVE = 64;

/** The soft limit on open descriptors, when the system says (Linux); undefined otherwise. */
export function descriptorLimit(): number | undefined {
  try {
    const text = Deno.readTextFileSync("/proc/self/limits");
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(text);
    if (!m || m[1] === "unlimited") return undefined;
    return Number(m[1]);
  } catch {
    return undefined;
  }
}

/**
 * The connections one of the server's two ports may hold within the descriptor limit: half of
 * what the limit allows, capped at 10000.
 */
export function connectionBudget(limit: number | undefined): number {
  if (limit === undefined) return 10_000;
  const perPort = (limit - FD_RESERVE) / FDS_PER_CONNECTION / 2;
  return Math.max(8, Math.min(10_000, Math.floor(perPort)));
}

/**
 * Rewrites a request head for the server behind: drops any peer header the client sent, adds
 * ours, and asks for the connection to close after a plain HTTP answer, so that every request on
 * a connection passes the header timeout (keep-alive would let a second head dribble in).
 */
export function rewriteHead(
  head: string,
  secret: string,
  address: string,
): string {
  const lines = head.split("\r\n");
  const out = [lines[0]];
  let upgrade = false;
  for (const line of lines.slice(1)) {
    if (line === "") continue;
    const name = line.slice(0, line.indexOf(":")).trim().toLowerCase();
    if (name === PEER_HEADER || name === "connection") {
      if (name === "connection" && /\bupgrade\b/i.test(line)) upgrade = true;
      continue;
    }
    out.push(line);
  }
  // An upgrade that is refused (401, 503) ends the connection too.
  out.push(upgrade ? "Connection: Upgrade, close" : "Connection: close");
  out.push(`${PEER_HEADER}: ${secret} ${address}`);
  return out.join("\r\n") + "\r\n\r\n";
}

/** Reads the real peer address a relayed request carries, or undefined if it is not ours. */
export function relayedPeer(req: Request, secret: string): string | undefined {
  const value = req.headers.get(PEER_HEADER);
  if (!value) return undefined;
  const space = value.indexOf(" ");
  if (space < 0 || value.slice(0, space) !== secret) return undefined;
  return value.slice(space + 1);
}

interface Tracked {
  conn: Deno.Conn;
  address: string;
  host: string;
  pending: boolean;
  timer?: ReturnType<typeof setTimeout>;
  upstream?: Deno.Conn;
}

/** The front door; see the module doc. */
export class Guard {
  readonly port: number;
  /** Lowered when the process runs out of descriptors first. */
  maxConnections: number;
  readonly maxPerAddress: number;
  #o: GuardOptions;
  #listener: Deno.Listener;
  #open = new Set<Tracked>();
  /** Open connections by IP address, oldest first. */
  #perHost = new Map<string, Set<Tracked>>();
  #stats: GuardStats = {
    open: 0,
    pending: 0,
    accepted: 0,
    refused_per_address: 0,
    refused_total: 0,
    evicted: 0,
    header_timeouts: 0,
    body_timeouts: 0,
    oversized_heads: 0,
    accept_errors: 0,
  };
  #logged: GuardStats = { ...this.#stats };
  #lastAcceptError = "";
  #shedAt = 0;
  #closed = false;
  #loop: Promise<void>;
  #tasks = new Set<Promise<void>>();
  #logTimer: ReturnType<typeof setInterval> | undefined;

  constructor(options: GuardOptions) {
    this.#o = options;
    this.maxConnections = options.maxConnections ??
      connectionBudget(descriptorLimit());
    this.maxPerAddress = options.maxPerAddress ?? 256;
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

  /** Counters since start. */
  stats(): GuardStats {
    let pending = 0;
    for (const t of this.#open) if (t.pending) pending++;
    return { ...this.#stats, open: this.#open.size, pending };
  }

  /** Writes one line for the refusals since the last one, if there were any. */
  flushLog(): void {
    const now = this.#stats;
    const before = this.#logged;
    const delta = (k: keyof GuardStats) => now[k] - before[k];
    const parts: string[] = [];
    const add = (k: keyof GuardStats, text: string) => {
      const n = delta(k);
      if (n > 0) parts.push(`${n} ${text}`);
    };
    add(
      "refused_per_address",
      `over the per-address limit (${this.maxPerAddress})`,
    );
    add("refused_total", `over the connection limit (${this.maxConnections})`);
    add("evicted", "closed to make room for other addresses");
    add("header_timeouts", "without a complete request head in time");
    add("body_timeouts", "without a complete request body in time");
    add("oversized_heads", "with an oversized request head");
    add("accept_errors", `failed accepts (${this.#lastAcceptError})`);
    this.#logged = { ...now };
    if (parts.length === 0) return;
    log.warn("{name} port refused or closed connections: {detail}", {
      name: this.#o.name ?? "A",
      detail: parts.join(", "),
    });
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
        this.#stats.accept_errors++;
        this.#lastAcceptError = error instanceof Error
          ? error.message
          : String(error);
        if (/too many open files/i.test(this.#lastAcceptError)) this.#shed();
        await new Promise((resolve) => setTimeout(resolve, pause));
        pause = Math.min(pause * 2, 200);
        continue;
      }
      pause = 10;
      this.#admit(conn);
    }
  }

  /**
   * The process ran out of descriptors before the guard's own limit did (the limit could not be
   * read, or the flags overstate it): hold at most 90% of what is open now from here on, and
   * free a tenth at once so that the waiting connections can be judged.
   */
  #shed(): void {
    const open = this.#open.size;
    const cap = Math.max(8, Math.floor(open * 0.9));
    // Closed descriptors come back a moment later: lower the limit at most once a second, so
    // that one burst of errors does not ratchet it down to nothing.
    const now = Date.now();
    if (cap < this.maxConnections && now - this.#shedAt >= 1000) {
      this.#shedAt = now;
      log.warn(
        "{name} port ran out of descriptors with {open} connections open: holding at most {cap} from now on",
        { name: this.#o.name ?? "A", open, cap },
      );
      this.maxConnections = cap;
    }
    while (this.#open.size > this.maxConnections) {
      const victim = this.#oldestPending() ?? this.#busiest(0);
      if (!victim) break;
      this.#stats.evicted++;
      this.#drop(
        victim,
        victim.pending ? "503 Service Unavailable" : undefined,
      );
    }
  }

  #refuse(conn: Deno.Conn, status: string, text = status): void {
    // Best effort, never awaited: a peer that does not read must not hold us.
    conn.write(plainAnswer(status, text)).catch(() => {}).finally(() => {
      try {
        conn.close();
      } catch {
        // Closed already.
      }
    });
  }

  #admit(conn: Deno.Conn): void {
    const remote = conn.remoteAddr as Deno.NetAddr;
    const host = remote.hostname;
    const address = host.includes(":")
      ? `[${host}]:${remote.port}`
      : `${host}:${remote.port}`;
    const fromHost = this.#perHost.get(host)?.size ?? 0;
    if (fromHost >= this.maxPerAddress) {
      this.#stats.refused_per_address++;
      return this.#refuse(
        conn,
        "429 Too Many Requests",
        `Too many connections from ${host} (limit ${this.maxPerAddress})`,
      );
    }
    if (this.#open.size >= this.maxConnections) {
      // A connection still dribbling its head is the cheapest to give up: the oldest one goes.
      // Else the busiest address gives up its oldest connection to an address that holds fewer,
      // so that a few addresses cannot keep everyone else out.
      const oldest = this.#oldestPending() ?? this.#busiest(fromHost + 1);
      if (!oldest) {
        this.#stats.refused_total++;
        return this.#refuse(
          conn,
          "503 Service Unavailable",
          `Too many connections (limit ${this.maxConnections})`,
        );
      }
      this.#stats.evicted++;
      this.#drop(
        oldest,
        oldest.pending ? "503 Service Unavailable" : undefined,
      );
    }
    this.#stats.accepted++;
    const tracked: Tracked = { conn, address, host, pending: true };
    this.#open.add(tracked);
    const mine = this.#perHost.get(host);
    if (mine) mine.add(tracked);
    else this.#perHost.set(host, new Set([tracked]));
    const task = this.#serve(tracked).finally(() => {
      this.#tasks.delete(task);
      this.#forget(tracked);
    });
    this.#tasks.add(task);
  }

  #oldestPending(): Tracked | undefined {
    for (const t of this.#open) if (t.pending) return t;
    return undefined;
  }

  /** The oldest connection of the address holding the most, if it holds more than `than`. */
  #busiest(than: number): Tracked | undefined {
    let most: Set<Tracked> | undefined;
    for (const set of this.#perHost.values()) {
      if (set.size > (most?.size ?? than)) most = set;
    }
    return most?.values().next().value;
  }

  #drop(tracked: Tracked, status?: string): void {
    clearTimeout(tracked.timer);
    if (status) this.#refuse(tracked.conn, status);
    else this.#closeConn(tracked.conn);
    if (tracked.upstream) this.#closeConn(tracked.upstream);
    this.#forget(tracked);
  }

  #forget(tracked: Tracked): void {
    if (!this.#open.delete(tracked)) return;
    const mine = this.#perHost.get(tracked.host);
    mine?.delete(tracked);
    if (mine?.size === 0) this.#perHost.delete(tracked.host);
  }

  #closeConn(conn: Deno.Conn): void {
    try {
      conn.close();
    } catch {
      // Closed already.
    }
  }

  async #readHead(
    tracked: Tracked,
  ): Promise<{ head: string; rest: Uint8Array } | undefined> {
    const max = this.#o.maxHeadBytes ?? 16_384;
    let buffer = new Uint8Array(4096);
    let length = 0;
    while (true) {
      if (length === buffer.length) {
        if (buffer.length >= max) {
          this.#stats.oversized_heads++;
          this.#drop(tracked, "431 Request Header Fields Too Large");
          return undefined;
        }
        const bigger = new Uint8Array(Math.min(buffer.length * 2, max));
        bigger.set(buffer);
        buffer = bigger;
      }
      const n = await tracked.conn.read(buffer.subarray(length));
      if (n === null) return undefined;
      const from = Math.max(0, length - 3);
      length += n;
      const end = headEnd(buffer, from, length);
      if (end >= 0) {
        return {
          head: latin1.decode(buffer.subarray(0, end)),
          rest: buffer.slice(end + 4, length),
        };
      }
    }
  }

  async #serve(tracked: Tracked): Promise<void> {
    const { conn } = tracked;
    tracked.timer = setTimeout(() => {
      if (!tracked.pending) return;
      this.#stats.header_timeouts++;
      this.#drop(tracked, "408 Request Timeout");
    }, this.#o.headerTimeoutMs ?? 5000);
    let head;
    try {
      head = await this.#readHead(tracked);
    } catch {
      head = undefined;
    }
    clearTimeout(tracked.timer);
    if (!head || !this.#open.has(tracked) || this.#closed) {
      return this.#drop(tracked);
    }
    // Its head is complete: from now on it is no longer the first to give way.
    tracked.pending = false;
    if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
    if (this.#o.handleUpgrade !== undefined && /^upgrade:/im.test(head.head)) {
      // The same test the ports make (`lib/broker/http.ts`): a request they would not take for
      // an upgrade (two Upgrade headers, say) is relayed like any other.
      const req = parseHead(head.head, this.#o.cert !== undefined);
      if (req?.headers.get("upgrade")?.toLowerCase() === "websocket") {
        return await this.#upgrade(tracked, req, head.rest);
      }
    }
    let upstream: Deno.TcpConn | undefined;
    // Out of descriptors here too (shed), or the server behind is starting again after its own
    // accept loop failed: try again a few times before giving up on a connection that did
    // everything right.
    for (let attempt = 0; upstream === undefined; attempt++) {
      try {
        upstream = await Deno.connect({
          hostname: "127.0.0.1",
          port: this.#o.target(),
        });
      } catch (error) {
        this.#stats.accept_errors++;
        this.#lastAcceptError = error instanceof Error
          ? error.message
          : String(error);
        if (attempt >= 4 || !this.#open.has(tracked) || this.#closed) {
          return this.#drop(tracked, "503 Service Unavailable");
        }
        if (/too many open files/i.test(this.#lastAcceptError)) this.#shed();
        await new Promise((resolve) => setTimeout(resolve, 20 << attempt));
      }
    }
    tracked.upstream = upstream;
    if (!this.#open.has(tracked)) return this.#drop(tracked);
    upstream.setNoDelay(true);
    try {
      const rewritten = rewriteHead(head.head, this.#o.secret, tracked.address);
      await upstream.write(encoder.encode(rewritten));
      if (head.rest.length > 0) await upstream.write(head.rest);
    } catch {
      return this.#drop(tracked);
    }
    // The body must follow within the body timeout. It is timed here, in the guard, because only
    // the guard can close the connection: `Deno.serve` (2.9) keeps a connection whose request
    // body never completes open for good, even after its handler has answered with
    // `connection: close`, and every path would hold one (the HTTP API's `POST /v1/request` and
    // `/v1/markets` are the ones that wait for a body; the others answer and still hang on). The
    // cost is following `content-length` or chunked framing as the bytes pass; with `--no-guard`
    // there is no body timeout, as there is no header timeout.
    const body = bodyFraming(head.head);
    let answered = false;
    let expired: Promise<void> | undefined;
    if (body && !body.feed(head.rest)) {
      tracked.timer = setTimeout(() => {
        if (body.complete || !this.#open.has(tracked)) return;
        this.#stats.body_timeouts++;
        // Nothing more reaches the server; a 408 goes out unless its answer has begun (a
        // `100 Continue` counts as begun).
        this.#closeConn(upstream);
        if (!answered) expired = this.#answerBodyTimeout(conn);
      }, this.#o.bodyTimeoutMs ?? 10_000);
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
    this.#closeConn(conn);
    this.#closeConn(upstream);
    await Promise.all([up, down]);
  }

  /**
   * Runs the port's handler for an upgrade request; when it accepts, answers 101 and frames the
   * connection here until it ends; else writes the handler's answer (401, 429, 503…) and closes.
   */
  async #upgrade(
    tracked: Tracked,
    req: Request,
    rest: Uint8Array,
  ): Promise<void> {
    const { conn } = tracked;
    const ended = Promise.withResolvers<void>();
    const offer = offerUpgrade(req, conn, {
      oversizeAnswer: this.#o.oversizeAnswer,
    });
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
          return this.#drop(tracked);
        }
        socket.start(rest);
        await socket.closed;
        return this.#drop(tracked);
      }
      socket?.terminate();
      // Refusals (401, 429, 503…) are short; anything that does not end soon is cut off.
      const bytes = await serializeResponse(response, 5000).catch(() =>
        undefined
      );
      if (bytes) await writeAll(conn, bytes).catch(() => {});
      this.#drop(tracked);
    } finally {
      ended.resolve();
    }
  }

  /** Writes the 408 for a body that did not arrive in time; the caller closes. */
  async #answerBodyTimeout(conn: Deno.Conn): Promise<void> {
    const seconds = (this.#o.bodyTimeoutMs ?? 10_000) / 1000;
    try {
      await writeAll(
        conn,
        plainAnswer(
          "408 Request Timeout",
          `Request body timeout: the body did not arrive whole within ${seconds} s`,
        ),
      );
    } catch {
      // The peer is gone: nothing to tell.
    }
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
    for (const t of [...this.#open]) this.#drop(t);
    await Promise.all([...this.#tasks]);
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

/** A request head as a `Request` (no body: only upgrades come this way); undefined if garbled. */
export function parseHead(head: string, tls: boolean): Request | undefined {
  const lines = head.split("\r\n");
  const [method, target, version] = lines[0].split(" ");
  if (!method || !target?.startsWith("/") || !version?.startsWith("HTTP/")) {
    return undefined;
  }
  try {
    const headers = new Headers();
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      if (colon <= 0) return undefined;
      headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
    }
    // The Host header only names the URL; anything odd in it must not refuse the upgrade.
    let url: URL;
    try {
      url = new URL(
        target,
        `${tls ? "https" : "http"}://${headers.get("host") ?? "localhost"}`,
      );
    } catch {
      url = new URL(target, "http://localhost");
    }
    return new Request(url, { method, headers });
  } catch {
    return undefined;
  }
}

/** `host:port` (or `[v6]:port`) as the address `Deno.ServeHandlerInfo` carries. */
export function parseAddress(address: string): Deno.NetAddr {
  const i = address.lastIndexOf(":");
  return {
    transport: "tcp",
    hostname: address.slice(0, i).replace(/^\[|\]$/g, ""),
    port: Number(address.slice(i + 1)),
  };
}

const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  426: "Upgrade Required",
  429: "Too Many Requests",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

/** A plain-text HTTP/1.1 answer (`status` as "408 Request Timeout") that ends the connection. */
function plainAnswer(status: string, text: string): Uint8Array {
  const body = encoder.encode(`${text}\n`);
  return concatBytes(
    encoder.encode(
      `HTTP/1.1 ${status}\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n`,
    ),
    body,
  );
}

function concatBytes(head: Uint8Array, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return out;
}

/** A whole HTTP/1.1 answer that ends the connection; rejects if its body takes over `limitMs`. */
async function serializeResponse(
  response: Response,
  limitMs: number,
): Promise<Uint8Array> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      response.body?.cancel().catch(() => {});
      reject(new Error("The answer did not end in time"));
    }, limitMs);
  });
  let body: Uint8Array;
  try {
    body = new Uint8Array(await Promise.race([response.arrayBuffer(), late]));
  } finally {
    clearTimeout(timer);
  }
  let head = `HTTP/1.1 ${response.status} ${
    response.statusText || STATUS_TEXT[response.status] || ""
  }\r\n`;
  for (const [name, value] of response.headers) {
    if (name === "content-length" || name === "connection") continue;
    head += `${name}: ${value}\r\n`;
  }
  head += `content-length: ${body.length}\r\nconnection: close\r\n\r\n`;
  return concatBytes(encoder.encode(head), body);
}
