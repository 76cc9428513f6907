/**
 * The worker registry: who is connected, what each offers, and how each has been doing. The
 * broker talks to it through {@linkcode WorkerRegistry} so that a cluster-backed registry can
 * replace this in-process one.
 *
 * @module
 */

import type { WorkerLoad } from "./balancer.ts";
import { ErrorCode, ProtocolError } from "../errors.ts";
import type { UpstreamStatus } from "../upstream_status.ts";

/** A clock in ms; inject one in tests. */
export interface Clock {
  /** The current time, in ms. */
  now(): number;
}

/** The wall clock. */
export const systemClock: Clock = { now: () => Date.now() };

/**
 * Bounds on what a worker may say of itself in `connect`: past one, the registration is refused
 * with an `error` frame naming the field, and nothing of it is applied.
 */
export const REGISTRATION_LIMITS = {
  /** Characters of `name` and of `version`. */
  text: 200,
  /** Entries of `actions` and of `non_retriable`. */
  listEntries: 1000,
  /** Characters of one action name. */
  actionName: 200,
  /** Characters of `host` as JSON. */
  hostJson: 4096,
  /** The largest `weight`: a worker with more to give says so with `max_concurrency`. */
  weight: 100,
} as const;

/** What a worker says of itself in its `connect` frame. */
export interface WorkerRegistration {
  /** Its name in logs and listings; the server makes it unique. */
  name?: string;
  /** Relative capacity for the balancer. */
  weight?: number;
  /** Requests it takes at once. */
  max_concurrency?: number;
  /** The actions it offers; absent: all of them. */
  actions?: string[];
  /** Actions that must not run twice: never re-sent to another worker. */
  non_retriable?: string[];
  /** Its software's version. */
  version?: string;
  /** What it says of its host (hostname, pid, instance…). */
  host?: unknown;
}

/** A worker as `get_client_info`, `/health` and the console show it. */
export interface WorkerInfo {
  /** Its id on this server. */
  client_id: string;
  /** Its name, unique among the workers. */
  name: string;
  /** `host:port` it connected from. */
  address: string;
  /** Relative capacity for the balancer. */
  weight: number;
  /** Requests it takes at once. */
  max_concurrency: number;
  /** The actions it offers; null when it never said (all of them). */
  actions: string[] | null;
  /** Its software's version, if it said. */
  version: string | null;
  /** What it said of its host. */
  host: unknown;
  /** Requests it holds now. */
  in_flight: number;
  /** Requests it answered, failures included. */
  served: number;
  /** Requests that failed on it. */
  failures: number;
  /** Its smoothed response time, in ms; null before its first answer. */
  latency_ms: number | null;
  /** Whether it earns new work. */
  healthy: boolean;
  /** Whether it is leaving (sent `disconnect`). */
  draining: boolean;
  /** Whether it sent its `connect` registration. */
  registered: boolean;
  /** Market-data sources it reports blocked. */
  blocked_sources: string[];
  /**
   * Set while the worker is benched: one of its requests passed its deadline, and it gets no
   * new work until it answers a probe in time. `since` is ISO 8601; `reason` says which request.
   */
  benched: { since: string; reason: string } | null;
  /** What the worker last said of its market-data upstreams; absent when it never did. */
  upstream?: UpstreamStatus;
  /** When it connected, ISO 8601. */
  connected_since: string;
  /** When it was last heard from, ISO 8601. */
  last_seen: string;
  /** In a cluster: the name of the server the worker is attached to. */
  server?: string;
}

// The smoothing factors: a response-time average that follows a change within ~5 requests, and a
// failure rate that halves every 30 s without failures so that a recovered worker wins traffic back.
const LATENCY_ALPHA = 0.3;
const FAILURE_ALPHA = 0.25;
const FAILURE_HALF_LIFE_MS = 30_000;

/** How long a worker whose request timed out waits before it may take one request again, in ms. */
export const PROBE_AFTER_MS = 5000;

/**
 * The owner of the server's own probe requests: a benched worker that takes no work otherwise
 * is sent a `get_time` {@linkcode PROBE_AFTER_MS} after it was benched, so it comes back as soon
 * as it answers in time.
 */
export const PROBE_OWNER = "server-probe";

/** One connected worker: its registration, its live load and its record. */
export class WorkerRecord implements WorkerLoad {
  /** Its `client_id`. */
  readonly id: string;
  /** `host:port` it connected from. */
  readonly address: string;
  /** When it connected, in ms on the clock. */
  readonly connectedAt: number;
  /** Its name, unique among the workers. */
  name: string;
  weight = 1;
  /** Requests it takes at once. */
  maxConcurrency: number;
  actions: ReadonlySet<string> | null = null;
  /** Its software's version, if it said. */
  version: string | null = null;
  /** What it said of its host. */
  host: unknown = null;
  /** Whether it sent its `connect` registration. */
  registered = false;
  /** Whether it is leaving (sent `disconnect`). */
  draining = false;
  /** Its heartbeats stopped: no new work until the next one. */
  unhealthy = false;
  /** Sources whose upstream the worker reported blocked, or that answered blocked recently. */
  blockedSources: string[] = [];
  /** Until when (clock ms) market work avoids it because an upstream answered it blocked. */
  blockedUntil = 0;
  /** The `upstream` field of the worker's last heartbeat that had one. */
  upstream: UpstreamStatus | undefined;
  /** Requests it holds now. */
  inFlight = 0;
  /** Requests it answered, failures included. */
  served = 0;
  /** Requests that failed on it. */
  failures = 0;
  ewmaMs: number | undefined;
  /** When it was last heard from, in ms on the clock. */
  lastSeen: number;
  /** Whether the worker ever sent a heartbeat; only those are judged by heartbeat silence. */
  heartbeats = false;
  /** Attached to another server of a cluster, which judges its silence. */
  readonly remote: boolean = false;
  /** Silent past the silence limit while holding work: no new work until its next frame. */
  silent = false;
  /** When one of its requests last passed its deadline; 0 once it answered in time since. */
  timedOutAt = 0;
  /** Why it was benched (the first request that passed its deadline); "" when it is not. */
  benchedReason = "";
  /** A probe request is on its way to it. */
  probing = false;
  /** Actions this worker said must not run twice; they apply to its own requests only. */
  nonRetriable: ReadonlySet<string> = new Set();
  #failureRate = 0;
  #failureAt = 0;
  #clock: Clock;

  /** A worker `id` that connected from `address`, known from now on the clock. */
  constructor(
    id: string,
    address: string,
    options: { clock: Clock; defaultConcurrency: number },
  ) {
    this.id = id;
    this.address = address;
    this.name = id;
    this.#clock = options.clock;
    this.connectedAt = this.lastSeen = options.clock.now();
    this.maxConcurrency = options.defaultConcurrency;
  }

  /**
   * Whether the worker earns new work: heard from (heartbeats), not silent while holding work,
   * and no request of its timed out since it last answered one in time.
   */
  get healthy(): boolean {
    return !this.unhealthy && !this.silent && this.timedOutAt === 0;
  }

  /**
   * A worker whose requests timed out gets one request at a time again after
   * {@linkcode PROBE_AFTER_MS}: answering it in time makes it healthy again.
   */
  get probe(): boolean {
    return this.mayProbe &&
      this.#clock.now() - this.timedOutAt >= PROBE_AFTER_MS;
  }

  /**
   * Unhealthy only for a timeout (still heard from, not silent): when no healthy worker offers
   * an action, such a worker takes one request at a time of it rather than none.
   */
  get mayProbe(): boolean {
    return this.timedOutAt !== 0 && !this.unhealthy && !this.silent;
  }

  get failureRate(): number {
    if (this.#failureRate === 0) return 0;
    const elapsed = this.#clock.now() - this.#failureAt;
    return this.#failureRate * 0.5 ** (elapsed / FAILURE_HALF_LIFE_MS);
  }

  /** Whether the worker should be steered around for market work now. */
  get blocked(): boolean {
    return this.blockedSources.length > 0 ||
      this.blockedUntil > this.#clock.now();
  }

  /**
   * Applies a `connect` frame's data, ignoring fields of the wrong type. Throws a
   * {@linkcode ProtocolError} (and applies nothing) when a field passes its
   * {@linkcode REGISTRATION_LIMITS} bound; `weight` and `max_concurrency` are capped instead.
   */
  register(data: WorkerRegistration, maxConcurrencyCap: number): void {
    const limits = REGISTRATION_LIMITS;
    const tooLarge = (field: string, detail: string) =>
      new ProtocolError(
        ErrorCode.INVALID_FIELD,
        `Field '${field}' of connect is too large: ${detail}`,
      );
    for (const field of ["name", "version"] as const) {
      const value = data[field];
      if (typeof value === "string" && value.length > limits.text) {
        throw tooLarge(
          field,
          `${value.length} characters (limit ${limits.text})`,
        );
      }
    }
    const lists: Record<string, string[] | undefined> = {};
    for (const field of ["actions", "non_retriable"] as const) {
      const value = data[field];
      if (!Array.isArray(value)) continue;
      if (value.length > limits.listEntries) {
        throw tooLarge(
          field,
          `${value.length} entries (limit ${limits.listEntries})`,
        );
      }
      const names = value.filter((a): a is string => typeof a === "string");
      const long = names.find((a) => a.length > limits.actionName);
      if (long !== undefined) {
        throw tooLarge(
          field,
          `an entry of ${long.length} characters (limit ${limits.actionName})`,
        );
      }
      lists[field] = names;
    }
    let host: unknown = undefined;
    if (data.host !== undefined) {
      const json = JSON.stringify(data.host) ?? "";
      if (json.length > limits.hostJson) {
        throw tooLarge(
          "host",
          `${json.length} characters of JSON (limit ${limits.hostJson})`,
        );
      }
      host = JSON.parse(json || "null");
    }
    this.registered = true;
    if (typeof data.name === "string" && data.name.trim() !== "") {
      this.name = data.name.trim();
    }
    if (
      typeof data.weight === "number" && data.weight > 0 &&
      Number.isFinite(data.weight)
    ) {
      this.weight = Math.min(data.weight, limits.weight);
    }
    if (Number.isInteger(data.max_concurrency) && data.max_concurrency! > 0) {
      this.maxConcurrency = Math.min(data.max_concurrency!, maxConcurrencyCap);
    }
    if (lists.actions) this.actions = new Set(lists.actions);
    if (lists.non_retriable) this.nonRetriable = new Set(lists.non_retriable);
    if (typeof data.version === "string") this.version = data.version;
    if (data.host !== undefined) this.host = host;
  }

  /**
   * One of its requests passed its deadline: it is benched (see {@linkcode healthy}). Returns
   * true when it was not benched before, so that benching is logged once.
   */
  bench(reason: string): boolean {
    const fresh = this.timedOutAt === 0;
    this.timedOutAt = this.#clock.now() || 1;
    if (fresh) this.benchedReason = reason;
    return fresh;
  }

  /**
   * The worker answered a request in time: it earns new work again. Returns why it had been
   * benched when it was, so that coming back is logged once; else undefined.
   */
  answered(): string | undefined {
    const was = this.timedOutAt !== 0 ? this.benchedReason : undefined;
    this.timedOutAt = 0;
    this.benchedReason = "";
    this.silent = false;
    return was;
  }

  /** Counts an answer of `units` requests (a batch chunk's items) that went well. */
  recordSuccess(elapsedMs: number, units = 1): void {
    this.served += units;
    this.ewmaMs = this.ewmaMs === undefined
      ? elapsedMs
      : this.ewmaMs + LATENCY_ALPHA * (elapsedMs - this.ewmaMs);
    if (this.#failureRate > 0) this.#decayInto(0);
  }

  /** Counts a failed answer of `units` requests (a batch chunk's items). */
  recordFailure(units = 1): void {
    this.served += units;
    this.failures += units;
    this.#decayInto(1);
  }

  #decayInto(sample: number): void {
    const current = this.failureRate;
    this.#failureRate = current + FAILURE_ALPHA * (sample - current);
    this.#failureAt = this.#clock.now();
  }

  /** The worker as `get_client_info`, `/health` and the console show it. */
  info(): WorkerInfo {
    return {
      client_id: this.id,
      name: this.name,
      address: this.address,
      weight: this.weight,
      max_concurrency: this.maxConcurrency,
      actions: this.actions === null ? null : [...this.actions],
      version: this.version,
      host: this.host,
      in_flight: this.inFlight,
      served: this.served,
      failures: this.failures,
      latency_ms: this.ewmaMs === undefined
        ? null
        : Math.round(this.ewmaMs * 10) / 10,
      healthy: this.healthy,
      draining: this.draining,
      registered: this.registered,
      blocked_sources: this.blockedSources,
      benched: this.timedOutAt === 0 ? null : {
        since: new Date(this.timedOutAt).toISOString(),
        reason: this.benchedReason,
      },
      ...(this.upstream ? { upstream: this.upstream } : {}),
      connected_since: new Date(this.connectedAt).toISOString(),
      last_seen: new Date(this.lastSeen).toISOString(),
    };
  }
}

/** The seam between the broker and where workers are kept. */
export interface WorkerRegistry<W extends WorkerRecord = WorkerRecord> {
  /** Adds a worker. */
  add(worker: W): void;
  /** Removes a worker; false when it was not there. */
  remove(id: string): boolean;
  /** The worker with `id`, if any. */
  get(id: string): W | undefined;
  /** Every worker; treat the array as read-only. */
  all(): readonly W[];
  /** How many workers there are. */
  readonly size: number;
}

/** The in-process registry. */
export class LocalRegistry<W extends WorkerRecord = WorkerRecord>
  implements WorkerRegistry<W> {
  #workers = new Map<string, W>();
  // Read on every request, changed only when workers come and go: keep one array.
  #snapshot: W[] | undefined;

  /** Adds a worker. */
  add(worker: W): void {
    this.#workers.set(worker.id, worker);
    this.#snapshot = undefined;
  }

  /** Removes a worker; false when it was not there. */
  remove(id: string): boolean {
    this.#snapshot = undefined;
    return this.#workers.delete(id);
  }

  /** The worker with `id`, if any. */
  get(id: string): W | undefined {
    return this.#workers.get(id);
  }

  /** The workers; the array is shared, so treat it as read-only. */
  all(): readonly W[] {
    return this.#snapshot ??= [...this.#workers.values()];
  }

  /** How many workers there are. */
  get size(): number {
    return this.#workers.size;
  }
}
