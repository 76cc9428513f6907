/**
 * What travels between the servers of a cluster, over NATS: subjects and message shapes.
 *
 * - `switchyard.<cluster>.state` — every server, every `stateIntervalMs`: its workers and their
 *   load, and the ledger of requests it is running for each other server. Silence for
 *   `deadAfterMs` means the server is gone.
 * - `switchyard.<cluster>.srv.<server>.req` — to the server that holds the worker: one line
 *   `<origin server> <worker client_id> <ms left until the deadline> <sequence number>`, then the
 *   worker-protocol envelope (`request` or `cancel`) as the dispatcher wrote it.
 * - `switchyard.<cluster>.srv.<server>.res` / `.prog` — back to the origin: the answer, or a
 *   progress report (streamed batch items included).
 * - `switchyard.<cluster>.msg` — a console `broadcast` or custom message for every worker of
 *   every server; `switchyard.<cluster>.srv.<server>.msg` — one for one worker of that server.
 *
 * @module
 */

/** A worker as its server announces it. */
export interface WorkerState {
  id: string;
  name: string;
  address: string;
  weight: number;
  max: number;
  actions: string[] | null;
  version: string | null;
  host: unknown;
  in_flight: number;
  healthy: boolean;
  draining: boolean;
  registered: boolean;
  blocked: string[];
  latency_ms: number | null;
  served: number;
  failures: number;
  connected_since: string;
  last_seen: string;
  /** Of `in_flight`, how many each origin server sent. */
  by: Record<string, number>;
  /** Actions this worker said must not run twice: they cover its own requests only. */
  non_retriable?: string[];
}

/** One server's announcement on the state subject. */
export interface ServerState {
  v: 1;
  id: string;
  name: string;
  at: number;
  urls: { worker?: string; requester?: string };
  requesters: number;
  workers: WorkerState[];
  /** Actions this server never runs twice: every server must treat them so. */
  non_retriable?: string[];
  /** Per origin server: the `msg_id`s of its requests this server holds now. */
  ledger: Record<string, string[]>;
  /** Per origin server: the highest sequence number of its requests this server has read. */
  seen?: Record<string, number>;
  /** The server's last word: it is shutting down. */
  leaving?: true;
}

/** An answer from the worker's server to the origin. */
export interface RelayAnswer {
  /** The origin's `msg_id`. */
  m: string;
  /** The worker's `client_id`. */
  w: string;
  s: boolean;
  r?: unknown;
  e?: string | null;
  c?: string;
}

/** A progress report from the worker's server to the origin. */
export interface RelayProgress {
  m: string;
  w: string;
  d: number;
  t?: number;
  i?: { index: number; result: unknown };
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

/** The subject prefix of one cluster. */
export function subjectPrefix(cluster: string): string {
  return `switchyard.${cluster}`;
}

/** Whether `name` may name a cluster: one NATS subject token. */
export function validClusterName(name: string): boolean {
  return /^[A-Za-z0-9_-]{1,64}$/.test(name);
}
