/**
 * The broker's options, its stats, and the core every part of it (the two ports, the sweep)
 * reads: resolved options, the dispatcher, the clock and whether it is still taking work.
 *
 * @module
 */

import { RUNTIME_FRAME_CAP } from "../transport/_frame_size.ts";
import type { MarketFront } from "./market_front.ts";
import type { ActionHandler } from "../action.ts";
import type { Strategy } from "./balancer.ts";
import type { Dispatcher } from "./dispatcher.ts";
import type { Metrics } from "./metrics.ts";
import type { AuthLimiter } from "./auth.ts";
import type { Envelope } from "../protocol.ts";
import type { Clock, WorkerInfo } from "./registry.ts";
import type { ClusterStatus } from "../cluster/status.ts";

/** The version the server reports in `connect` and `/health`. */
export const VERSION = "0.1.0";

/** A handler for a custom worker-port message type. */
export type MessageHandler = (
  envelope: Envelope,
  worker: WorkerInfo,
) => void | Promise<void>;

/** Options for {@linkcode Broker}. */
export interface BrokerOptions {
  /** How the balancer picks a worker. @default "least_loaded" */
  strategy?: Strategy;
  /** Deadline of a request that names none, in ms. @default 30000 */
  timeoutMs?: number;
  /** The largest deadline a requester may ask for, in ms. @default 300000 */
  maxTimeoutMs?: number;
  /** How often workers should send heartbeats, in ms (told to them in `connect`). @default 10000 */
  heartbeatIntervalMs?: number;
  /** Heartbeat silence after which a worker stops getting work, in ms. @default 3 × heartbeatIntervalMs */
  heartbeatTimeoutMs?: number;
  /** Heartbeat silence after which a worker is dropped, in ms. @default 60000 */
  cleanupIntervalMs?: number;
  /**
   * Silence of a worker that holds work after which it gets no new work until its next frame,
   * in ms. Judged on each sweep, so the worker stops getting work within this plus
   * `sweepIntervalMs`. @default 2000
   */
  silenceMs?: number;
  /**
   * Silence of a worker that holds work after which its retriable requests are re-sent to other
   * workers, in ms (see `docs/delivery.md` for the duplicate-execution trade-off); 0 never.
   * @default 1.5 × heartbeatIntervalMs (15000)
   */
  stallTimeoutMs?: number;
  /** WebSocket idle timeout in seconds: pings after half, closes after all. @default 30 */
  idleTimeoutSeconds?: number;
  /** Requests waiting for a free worker before `Server busy`. @default 1000 */
  maxQueue?: number;
  /** Workers one request may try when workers vanish under it. @default 3 */
  maxAttempts?: number;
  /** The longest a request may wait for a free worker before `Server busy`, in ms. @default its deadline */
  queueTimeoutMs?: number;
  /**
   * How long a request whose action no worker offers waits for one to register before
   * `NO_WORKERS` (at most half the time its deadline leaves), in ms; 0 fails at once. After a
   * restart, resubmitted requests arrive before the workers are back. @default 3000
   */
  noWorkerGraceMs?: number;
  /** Requests in flight on one requester connection. @default 1000 */
  maxInFlightPerConnection?: number;
  /**
   * Largest requester frame, in bytes of UTF-8; must be below Deno's own 64 MiB message cap
   * ({@linkcode RUNTIME_FRAME_CAP}) so that a larger frame is answered `FRAME_TOO_LARGE`.
   * @default 1048576
   */
  maxRequesterFrameBytes?: number;
  /**
   * Largest worker frame, in bytes of UTF-8 (market answers are large); below Deno's cap too.
   * @default 66060288 (63 MiB)
   */
  maxWorkerFrameBytes?: number;
  /** Items in one `get_markets` batch. @default 10000 */
  maxBatchItems?: number;
  /**
   * Largest answer sent to a requester, in characters of JSON. A one-frame batch answer that
   * would pass it stops early and fails with `ANSWER_TOO_LARGE`, naming `stream: true`.
   * @default 209715200 (200 MiB, under the requester client's 256 MiB frame limit)
   */
  maxAnswerBytes?: number;
  /** Bytes queued to a requester that does not read before it is dropped. @default 16777216 */
  maxBufferedBytes?: number;
  /** Connections per port. @default 10000 */
  maxConnections?: number;
  /** `max_concurrency` of a worker that never registered. @default 16 */
  defaultConcurrency?: number;
  /**
   * Failed token tries one IP address may make in `authWindowMs` before it is answered 429
   * without its token being looked at. @default 20
   */
  maxAuthFailures?: number;
  /** The window of `maxAuthFailures`, in ms. @default 60000 */
  authWindowMs?: number;
  /** How often failed tries are summed up in one log line, in ms. @default 10000 */
  authLogIntervalMs?: number;
  /** Token workers must present. @default none */
  workerToken?: string;
  /** Token requesters must present. @default none */
  requesterToken?: string;
  /** Actions never re-run on another worker after their worker vanished. @default [] */
  nonRetriableActions?: string[];
  /** More server actions (or replacements), requested by workers and the console. */
  actions?: Record<string, ActionHandler>;
  /** Answers `get_market`/`get_markets` before the workers when it holds them (a store). */
  marketFront?: MarketFront;
  /** Handlers for custom worker-port message types. */
  messageHandlers?: Record<string, MessageHandler>;
  /** How often to judge worker health, in ms; 0 leaves it to explicit `sweep()` calls. @default 1000 */
  sweepIntervalMs?: number;
  /** How often the dashboard's event stream sends a snapshot besides on changes, in ms. @default 1000 */
  dashboardIntervalMs?: number;
  /** The clock deadlines and health are judged by. @default the wall clock */
  clock?: Clock;
  /** Random source for the balancer. @default Math.random */
  random?: () => number;
}

/** Live counters for `/health`, `stats` and tests. */
export interface BrokerStats {
  /** `draining` once a shutdown began. */
  status: "ok" | "draining";
  /** Connected workers (in a cluster: of every server). */
  workers: number;
  /** Of those, the ones heard from recently. */
  healthy_workers: number;
  /**
   * Of those, the ones benched because a request passed its deadline: probed, and back as soon
   * as one answers in time (each worker's `benched` in `get_client_info` says since when, why).
   */
  benched_workers: number;
  /** Connected requesters. */
  requesters: number;
  /** Requests being served. */
  in_flight: number;
  /** Requests waiting for a free worker. */
  queued: number;
  /** Requests answered with success. */
  answered: number;
  /** Requests answered with failure, and rejected frames. */
  failed: number;
  /** Seconds since the broker started. */
  uptime_s: number;
  /** In a cluster: the NATS link and every server. */
  cluster?: ClusterStatus;
}

/** The numeric and boolean options, defaults filled in. */
export type ResolvedOptions = Required<
  Omit<
    BrokerOptions,
    | "workerToken"
    | "requesterToken"
    | "actions"
    | "marketFront"
    | "messageHandlers"
    | "clock"
    | "random"
    | "strategy"
    | "nonRetriableActions"
    | "queueTimeoutMs"
  >
>;

/** The default largest worker frame: 63 MiB, under the runtime's 64 MiB cap. */
export const DEFAULT_WORKER_FRAME_BYTES = 63 * 1024 * 1024;

function frameLimit(name: string, bytes: number): number {
  if (!(bytes > 0) || bytes >= RUNTIME_FRAME_CAP) {
    throw new RangeError(
      `Invalid ${name} ${bytes}: it must be between 1 and ${
        RUNTIME_FRAME_CAP - 1
      } bytes, as Deno closes a connection on a message of ${RUNTIME_FRAME_CAP} bytes or more before the server sees it`,
    );
  }
  return bytes;
}

/** Fills in the defaults. */
export function resolveOptions(options: BrokerOptions): ResolvedOptions {
  const heartbeatIntervalMs = options.heartbeatIntervalMs ?? 10_000;
  return {
    timeoutMs: options.timeoutMs ?? 30_000,
    maxTimeoutMs: options.maxTimeoutMs ?? 300_000,
    heartbeatIntervalMs,
    heartbeatTimeoutMs: options.heartbeatTimeoutMs ?? 3 * heartbeatIntervalMs,
    cleanupIntervalMs: options.cleanupIntervalMs ?? 60_000,
    silenceMs: options.silenceMs ?? 2000,
    stallTimeoutMs: options.stallTimeoutMs ?? 1.5 * heartbeatIntervalMs,
    idleTimeoutSeconds: options.idleTimeoutSeconds ?? 30,
    maxQueue: options.maxQueue ?? 1000,
    maxAttempts: options.maxAttempts ?? 3,
    noWorkerGraceMs: options.noWorkerGraceMs ?? 3000,
    maxInFlightPerConnection: options.maxInFlightPerConnection ?? 1000,
    maxRequesterFrameBytes: frameLimit(
      "maxRequesterFrameBytes",
      options.maxRequesterFrameBytes ?? 1024 * 1024,
    ),
    maxWorkerFrameBytes: frameLimit(
      "maxWorkerFrameBytes",
      options.maxWorkerFrameBytes ?? DEFAULT_WORKER_FRAME_BYTES,
    ),
    maxBatchItems: options.maxBatchItems ?? 10_000,
    maxAnswerBytes: options.maxAnswerBytes ?? 200 * 1024 * 1024,
    maxBufferedBytes: options.maxBufferedBytes ?? 16 * 1024 * 1024,
    maxConnections: options.maxConnections ?? 10_000,
    defaultConcurrency: options.defaultConcurrency ?? 16,
    sweepIntervalMs: options.sweepIntervalMs ?? 1000,
    maxAuthFailures: options.maxAuthFailures ?? 20,
    authWindowMs: options.authWindowMs ?? 60_000,
    authLogIntervalMs: options.authLogIntervalMs ?? 10_000,
    dashboardIntervalMs: options.dashboardIntervalMs ?? 1000,
  };
}

/** What the ports and the sweep share: the broker as its parts see it. */
export interface BrokerCore {
  readonly options: ResolvedOptions;
  readonly clock: Clock;
  readonly dispatcher: Dispatcher;
  /** Server actions, requested by workers and the console. */
  readonly actions: Record<string, ActionHandler>;
  /** Answers market requests before the workers when it can. */
  readonly marketFront?: MarketFront;
  /** Not taking new requests (draining or closed). */
  readonly draining: boolean;
  /** Closed: not taking new connections either. */
  readonly closed: boolean;
  /** The bound ports, once known ({@linkcode Broker.listening}), for "wrong port" messages. */
  readonly ports: { worker?: number; requester?: number };
  stats(): BrokerStats;
  /** Live counters for `/metrics` and the dashboard. */
  readonly metrics: Metrics;
  /** Failed token tries by address: 429 past the limit, one log line per interval. */
  readonly auth: AuthLimiter;
}
