/**
 * What travels between the servers of a cluster, over core NATS: subjects, headers and message
 * shapes. `docs/cluster.md` has the table.
 *
 * - `switchyard.<cluster>.hb` — every server, every `heartbeatMs`: a {@linkcode Heartbeat}: who
 *   it is, the version of its worker registry, and the load of the workers whose load changed.
 * - `switchyard.<cluster>.reg` — a server's worker registry changed: a {@linkcode RegistryDelta}.
 *   A server that misses one (the version skips) asks for a {@linkcode Snapshot} on
 *   `srv.<id>.workers`.
 * - `switchyard.<cluster>.srv.<id>.req` — a request for a worker of server `<id>`, with a reply
 *   subject `switchyard.<cluster>.r.<origin>.<msg_id>` (NATS request-reply: nobody listening
 *   answers "no responders" at once). Headers {@linkcode H_ORIGIN}, {@linkcode H_WORKER},
 *   {@linkcode H_LEFT}; the body is the worker-protocol `request` envelope. Progress reports and
 *   the answer go to the reply subject, told apart by {@linkcode H_KIND} and numbered by
 *   {@linkcode H_SEQ}.
 * - `switchyard.<cluster>.srv.<id>.cancel` — the origin gave up on a request (body: its msg_id).
 * - `switchyard.<cluster>.srv.<id>.held` — the origin's loss check: which of these requests do
 *   you still hold? ({@linkcode HeldReply})
 * - `switchyard.<cluster>.srv.<id>.replay` — the origin missed progress reports of a request:
 *   send them again ({@linkcode ReplayReply}).
 * - `switchyard.<cluster>.name.<hex of the server name>` — answered by the server of that name,
 *   so that a second one is refused at join.
 * - `switchyard.<cluster>.msg`, `.srv.<id>.msg` — console messages for workers
 *   ({@linkcode ClusterMessage}).
 *
 * @module
 */

import { headers, type MsgHdrs } from "npm:@nats-io/transport-node@3.4.0";

/** Header: the origin server's id. */
export const H_ORIGIN = "Sy-Origin";
/** Header: the worker's `client_id` on its server. */
export const H_WORKER = "Sy-Worker";
/** Header: ms the request's caller has left; the worker's server holds it no longer. */
export const H_LEFT = "Sy-Left";
/** Header on a reply: `p` a progress report, `a` the answer. */
export const H_KIND = "Sy-Kind";
/**
 * Header on a reply: on a progress report its number (1, 2, …); on the answer how many progress
 * reports came before it, so that the origin knows whether one was lost.
 */
export const H_SEQ = "Sy-Seq";

/** What a relayed request's headers tell the worker's server. */
export interface RequestHeaders {
  /** {@linkcode H_ORIGIN}; empty when missing. */
  origin: string;
  /** {@linkcode H_WORKER}; empty when missing. */
  worker: string;
  /** {@linkcode H_LEFT}; 0 when missing. */
  left: number;
}

/** The headers a relayed request travels with. */
export function requestHeaders(r: RequestHeaders): MsgHdrs {
  const h = originHeaders(r.origin);
  h.set(H_WORKER, r.worker);
  h.set(H_LEFT, String(r.left));
  return h;
}

/** Reads a relayed request's headers. */
export function readRequestHeaders(h: MsgHdrs | undefined): RequestHeaders {
  return {
    origin: readOrigin(h),
    worker: h?.get(H_WORKER) ?? "",
    left: Number(h?.get(H_LEFT) ?? 0),
  };
}

/** Headers naming the origin server alone: on a cancel, a loss check, a replay request. */
export function originHeaders(origin: string): MsgHdrs {
  const h = headers();
  h.set(H_ORIGIN, origin);
  return h;
}

/** The origin server's id in `h`; empty when missing. */
export function readOrigin(h: MsgHdrs | undefined): string {
  return h?.get(H_ORIGIN) ?? "";
}

/** The headers of a reply: a progress report (`p`, number `seq`) or the answer (`a`). */
export function replyHeaders(kind: "p" | "a", seq: number): MsgHdrs {
  const h = headers();
  h.set(H_KIND, kind);
  h.set(H_SEQ, String(seq));
  return h;
}

/** Reads a reply's headers: whether it is a progress report, and its number (0 when missing). */
export function readReplyHeaders(
  h: MsgHdrs | undefined,
): { progress: boolean; seq: number } {
  return { progress: h?.get(H_KIND) === "p", seq: Number(h?.get(H_SEQ) ?? 0) };
}

/** A worker's registration, as its server announces it. */
export interface WorkerState {
  id: string;
  name: string;
  address: string;
  weight: number;
  max: number;
  actions: string[] | null;
  version: string | null;
  host: unknown;
  healthy: boolean;
  draining: boolean;
  registered: boolean;
  blocked: string[];
  connected_since: string;
  /** Actions this worker said must not run twice: they cover its own requests only. */
  non_retriable?: string[];
}

/**
 * A worker's load, in a heartbeat: `[client_id, in_flight, per origin server how many of
 * in_flight it sent, latency_ms, served, failures, last_seen]`.
 */
export type WorkerLoad = [
  string,
  number,
  Record<string, number>,
  number | null,
  number,
  number,
  string,
];

/** A server's heartbeat. */
export interface Heartbeat {
  v: 2;
  id: string;
  name: string;
  urls: { worker?: string; requester?: string };
  requesters: number;
  /** The version of its worker registry: a receiver that holds another asks for a snapshot. */
  wv: number;
  /** The load of its workers whose load changed since the last heartbeat (all in a snapshot). */
  load: WorkerLoad[];
  /** Actions this server never runs twice: every server must treat them so. */
  non_retriable?: string[];
  /** The server's last word: it is shutting down. */
  leaving?: true;
}

/** A change of a server's worker registry. */
export interface RegistryDelta {
  v: 2;
  id: string;
  /** The registry's version after this change: one more than before. */
  wv: number;
  up: WorkerState[];
  down: string[];
}

/** A server's whole worker registry, with the load of each. */
export interface Snapshot {
  v: 2;
  id: string;
  name: string;
  wv: number;
  workers: WorkerState[];
  load: WorkerLoad[];
}

/** An answer, on a request's reply subject. */
export interface RelayAnswer {
  s: boolean;
  r?: unknown;
  e?: string | null;
  c?: string;
}

/** A progress report, on a request's reply subject. */
export interface RelayProgress {
  d: number;
  t?: number;
  i?: { index: number; result: unknown };
}

/**
 * The worker's server's reply to a loss check: of the requests asked about, the ones it holds
 * (with how many progress reports it has sent for each), and the answers of ones it finished
 * lately (with how many progress reports came before each).
 */
export interface HeldReply {
  held: Record<string, number>;
  done?: Record<string, [RelayAnswer, number]>;
}

/**
 * The worker's server's reply to a replay request (`srv.<id>.replay`, body `{m: msg_id, f:
 * first report wanted}`): whether it still knows the request, the reports from the one asked
 * for, and the answer with how many reports came before it, if it has finished.
 */
export interface ReplayReply {
  found: boolean;
  p: RelayProgress[];
  a?: [RelayAnswer, number];
}

/** A console message (notification or custom type) for other servers' workers. */
export interface ClusterMessage {
  /** The sending server's id. */
  o: string;
  /** The envelope type. */
  t: string;
  /** The envelope data. */
  d: unknown;
  /** The worker's `client_id`, when the message is for one worker. */
  w?: string;
}

/** The subjects of one cluster. */
export class Subjects {
  readonly prefix: string;
  readonly heartbeat: string;
  readonly registry: string;
  readonly message: string;

  constructor(cluster: string) {
    this.prefix = subjectPrefix(cluster);
    this.heartbeat = `${this.prefix}.hb`;
    this.registry = `${this.prefix}.reg`;
    this.message = `${this.prefix}.msg`;
  }

  /** A server's own subjects: `req`, `cancel`, `held`, `workers`, `msg`. */
  server(id: string, kind: string): string {
    return `${this.prefix}.srv.${id}.${kind}`;
  }

  /** Every reply subject of requests `origin` sends. */
  replies(origin: string): string {
    return `${this.prefix}.r.${origin}.>`;
  }

  /** The reply subject of one request. */
  reply(origin: string, msgId: string): string {
    return `${this.prefix}.r.${origin}.${msgId}`;
  }

  /** The subject the server named `name` answers on. */
  name(name: string): string {
    let hex = "";
    for (const b of new TextEncoder().encode(name)) {
      hex += b.toString(16).padStart(2, "0");
    }
    return `${this.prefix}.name.${hex}`;
  }
}

/** The subject prefix of one cluster. */
export function subjectPrefix(cluster: string): string {
  return `switchyard.${cluster}`;
}

/** Whether `name` may name a cluster: one NATS subject token. */
export function validClusterName(name: string): boolean {
  return /^[A-Za-z0-9_-]{1,64}$/.test(name);
}
