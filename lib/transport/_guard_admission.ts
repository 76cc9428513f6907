/**
 * Who the guard lets in: the open connections by address, the per-address and total limits,
 * eviction when the port is full, shedding when the process runs out of descriptors, and the
 * counters behind the refusal summary.
 *
 * @module
 */

import { logger } from "../log.ts";
import { plainAnswer } from "./_http.ts";

const log = logger("guard");

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

/** One admitted connection. */
export interface Tracked {
  conn: Deno.Conn;
  /** `host:port` of the peer. */
  address: string;
  host: string;
  /** Still sending its request head: the first to give way. */
  pending: boolean;
  timer?: ReturnType<typeof setTimeout>;
  /** The connection to the server behind, once relayed. */
  upstream?: Deno.Conn;
}

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

/** Closes `conn`, whether or not it still is open. */
export function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Closed already.
  }
}

/** Writes a short answer and closes, best effort, never awaited: a peer that does not read must not hold us. */
export function refuse(conn: Deno.Conn, status: string, text = status): void {
  conn.write(plainAnswer(status, text)).catch(() => {}).finally(() =>
    closeQuietly(conn)
  );
}

/** The open connections and the limits on them; see the module doc. */
export class Admission {
  /** Lowered when the process runs out of descriptors first. */
  maxConnections: number;
  readonly maxPerAddress: number;
  /** Counters; `open` and `pending` are filled in by {@linkcode stats}. */
  readonly counts: GuardStats = {
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
  #name: string;
  #open = new Set<Tracked>();
  /** Open connections by IP address, oldest first. */
  #perHost = new Map<string, Set<Tracked>>();
  #logged: GuardStats = { ...this.counts };
  #lastAcceptError = "";
  #shedAt = 0;

  constructor(name: string, maxConnections: number, maxPerAddress: number) {
    this.#name = name;
    this.maxConnections = maxConnections;
    this.maxPerAddress = maxPerAddress;
  }

  /** Counters since start. */
  stats(): GuardStats {
    let pending = 0;
    for (const t of this.#open) if (t.pending) pending++;
    return { ...this.counts, open: this.#open.size, pending };
  }

  /** Whether `tracked` is still open. */
  has(tracked: Tracked): boolean {
    return this.#open.has(tracked);
  }

  /** Every open connection, oldest first. */
  all(): Tracked[] {
    return [...this.#open];
  }

  /** Writes one line for the refusals since the last one, if there were any. */
  flushLog(): void {
    const now = this.counts;
    const before = this.#logged;
    const parts: string[] = [];
    const add = (k: keyof GuardStats, text: string) => {
      const n = now[k] - before[k];
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
      name: this.#name,
      detail: parts.join(", "),
    });
  }

  /** Counts a failed accept or connect; running out of descriptors sheds connections. */
  failed(error: unknown): void {
    this.counts.accept_errors++;
    this.#lastAcceptError = error instanceof Error
      ? error.message
      : String(error);
    if (/too many open files/i.test(this.#lastAcceptError)) this.#shed();
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
        { name: this.#name, open, cap },
      );
      this.maxConnections = cap;
    }
    while (this.#open.size > this.maxConnections) {
      const victim = this.#oldestPending() ?? this.#busiest(0);
      if (!victim) break;
      this.counts.evicted++;
      this.drop(
        victim,
        victim.pending ? "503 Service Unavailable" : undefined,
      );
    }
  }

  /** Takes `conn` in if the limits allow (making room if they can); else refuses it. */
  admit(conn: Deno.Conn): Tracked | undefined {
    const remote = conn.remoteAddr as Deno.NetAddr;
    const host = remote.hostname;
    const address = host.includes(":")
      ? `[${host}]:${remote.port}`
      : `${host}:${remote.port}`;
    const fromHost = this.#perHost.get(host)?.size ?? 0;
    if (fromHost >= this.maxPerAddress) {
      this.counts.refused_per_address++;
      refuse(
        conn,
        "429 Too Many Requests",
        `Too many connections from ${host} (limit ${this.maxPerAddress})`,
      );
      return undefined;
    }
    if (this.#open.size >= this.maxConnections) {
      // A connection still dribbling its head is the cheapest to give up: the oldest one goes.
      // Else the busiest address gives up its oldest connection to an address that holds fewer,
      // so that a few addresses cannot keep everyone else out.
      const oldest = this.#oldestPending() ?? this.#busiest(fromHost + 1);
      if (!oldest) {
        this.counts.refused_total++;
        refuse(
          conn,
          "503 Service Unavailable",
          `Too many connections (limit ${this.maxConnections})`,
        );
        return undefined;
      }
      this.counts.evicted++;
      this.drop(
        oldest,
        oldest.pending ? "503 Service Unavailable" : undefined,
      );
    }
    this.counts.accepted++;
    const tracked: Tracked = { conn, address, host, pending: true };
    this.#open.add(tracked);
    const mine = this.#perHost.get(host);
    if (mine) mine.add(tracked);
    else this.#perHost.set(host, new Set([tracked]));
    return tracked;
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

  /** Closes a connection (with a short answer when `status` is given) and forgets it. */
  drop(tracked: Tracked, status?: string): void {
    clearTimeout(tracked.timer);
    if (status) refuse(tracked.conn, status);
    else closeQuietly(tracked.conn);
    if (tracked.upstream) closeQuietly(tracked.upstream);
    this.forget(tracked);
  }

  /** Forgets a connection that has ended. */
  forget(tracked: Tracked): void {
    if (!this.#open.delete(tracked)) return;
    const mine = this.#perHost.get(tracked.host);
    mine?.delete(tracked);
    if (mine?.size === 0) this.#perHost.delete(tracked.host);
  }
}
