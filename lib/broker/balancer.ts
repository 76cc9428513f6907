/**
 * Worker selection: pure functions over a snapshot of worker loads, no I/O and no clock of its
 * own. `docs/balancing.md` explains the `least_loaded` score.
 *
 * @module
 */

/** The balancing strategies the server accepts for `--strategy`. */
export const STRATEGIES = [
  "least_loaded",
  "round_robin",
  "random",
  "weighted_random",
] as const;

/** One of {@linkcode STRATEGIES}. */
export type Strategy = typeof STRATEGIES[number];

/** What the balancer knows of a worker at the moment of choosing. */
export interface WorkerLoad {
  /** The worker's id. */
  id: string;
  /** Relative capacity; a weight-2 worker should carry twice the load of a weight-1 worker. */
  weight: number;
  /** Requests it holds now. */
  inFlight: number;
  /** Requests it takes at once. */
  maxConcurrency: number;
  /** Smoothed response time of successful requests, in ms; undefined before the first one. */
  ewmaMs?: number;
  /** Smoothed failure rate in [0, 1], already decayed for the time since the last failure. */
  failureRate: number;
  /** Earns new work: heard from, not silent while holding work, no recent timeout. */
  healthy: boolean;
  /** Unhealthy for a timeout only, and due one request to show that it answers again. */
  probe?: boolean;
  /** Whether it is leaving. */
  draining: boolean;
  /** The actions the worker offers; `null` when it never said, meaning all of them. */
  actions: ReadonlySet<string> | null;
}

/** Whether a worker offers `action` at all, regardless of its state. */
export function offers(worker: WorkerLoad, action: string): boolean {
  return worker.actions === null || worker.actions.has(action);
}

/**
 * The health predicate every placement uses (single requests, batches): whether the worker earns
 * new work now. A worker loses it when its heartbeats stop, when it holds work and stays silent,
 * or when a request of its times out; it gets it back by being heard from, or by answering.
 */
export function isHealthy(worker: WorkerLoad): boolean {
  return worker.healthy;
}

/** Whether a worker may take one more `action` request now. */
export function isCandidate(worker: WorkerLoad, action: string): boolean {
  return (worker.healthy || (worker.probe === true && worker.inFlight === 0)) &&
    !worker.draining &&
    worker.inFlight < worker.maxConcurrency &&
    offers(worker, action);
}

// A floor under the response time so that a worker with no history, or a sub-millisecond one,
// is still compared on load rather than winning every tie.
const LATENCY_FLOOR_MS = 5;
// How much a failure rate of 1 multiplies the score: a worker that fails every request looks
// eleven times as loaded as an identical healthy one, so fast failures cannot attract traffic.
const FAILURE_PENALTY = 10;

/**
 * The `least_loaded` score; lower is better. Load relative to weight, times the expected
 * response time, times a penalty for recent failures.
 */
export function loadScore(worker: WorkerLoad): number {
  const load = (worker.inFlight + 1) / Math.max(worker.weight, 0.001);
  const latency = Math.max(worker.ewmaMs ?? LATENCY_FLOOR_MS, LATENCY_FLOOR_MS);
  return load * latency * (1 + FAILURE_PENALTY * worker.failureRate);
}

/** Options for {@linkcode Balancer}. */
export interface BalancerOptions {
  /** Random source in [0, 1); inject a seeded one for reproducible tests. @default Math.random */
  random?: () => number;
}

/** Chooses a worker for each request according to a strategy. */
export class Balancer {
  /** The strategy in use. */
  readonly strategy: Strategy;
  #random: () => number;
  #cursor = 0;

  /** A balancer using `strategy`. */
  constructor(
    strategy: Strategy = "least_loaded",
    options: BalancerOptions = {},
  ) {
    if (!STRATEGIES.includes(strategy)) {
      throw new RangeError(
        `Unknown strategy '${strategy}': expected one of ${
          STRATEGIES.join(", ")
        }`,
      );
    }
    this.strategy = strategy;
    this.#random = options.random ?? Math.random;
  }

  /** Picks among the workers that may take `action` now; undefined when none may. */
  pick<W extends WorkerLoad>(
    workers: readonly W[],
    action: string,
  ): W | undefined {
    // The default strategy runs on every request: it scans in place instead of filtering.
    if (this.strategy === "least_loaded") {
      return this.#leastLoaded(workers, action);
    }
    const candidates = workers.filter((w) => isCandidate(w, action));
    if (candidates.length === 0) return undefined;
    if (candidates.length === 1) return candidates[0];
    switch (this.strategy) {
      case "round_robin":
        return candidates[this.#cursor++ % candidates.length];
      case "random":
        return candidates[Math.floor(this.#random() * candidates.length)];
      default:
        return this.#weighted(candidates);
    }
  }

  #weighted<W extends WorkerLoad>(candidates: W[]): W {
    const total = candidates.reduce((sum, w) => sum + Math.max(w.weight, 0), 0);
    if (total <= 0) {
      return candidates[Math.floor(this.#random() * candidates.length)];
    }
    let r = this.#random() * total;
    for (const w of candidates) {
      r -= Math.max(w.weight, 0);
      if (r < 0) return w;
    }
    return candidates[candidates.length - 1];
  }

  #leastLoaded<W extends WorkerLoad>(
    workers: readonly W[],
    action: string,
  ): W | undefined {
    let bestScore = Infinity;
    let ties = 0;
    let count = 0;
    let only: W | undefined;
    for (const w of workers) {
      if (!isCandidate(w, action)) continue;
      count++;
      only = w;
      const score = loadScore(w);
      if (score < bestScore - 1e-9) {
        bestScore = score;
        ties = 1;
      } else if (Math.abs(score - bestScore) <= 1e-9) ties++;
    }
    if (count <= 1) return only;
    // Rotate among exact ties so idle equal workers share the load instead of one taking all.
    let k = this.#cursor++ % ties;
    for (const w of workers) {
      if (!isCandidate(w, action)) continue;
      if (Math.abs(loadScore(w) - bestScore) <= 1e-9 && k-- === 0) return w;
    }
    return only;
  }
}

/** FNV-1a, 32 bits: small, fast, and stable across processes and releases. */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  // A final avalanche (murmur3 fmix) so that keys differing in one character spread well.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Rendezvous (highest random weight) order of `workers` for `key`: the first is the key's home.
 * Adding or removing a worker moves only the keys whose home it is or becomes. Weighted by the
 * logarithmic method, so a weight-2 worker is home to twice as many keys.
 */
export function rendezvousOrder<W extends { id: string; weight: number }>(
  key: string,
  workers: readonly W[],
): W[] {
  const scored = workers.map((w) => {
    const u = (hash32(`${key}\u0000${w.id}`) + 0.5) / 4294967296;
    return { w, score: -Math.max(w.weight, 0.001) / Math.log(u) };
  });
  scored.sort((a, b) => b.score - a.score || (a.w.id < b.w.id ? -1 : 1));
  return scored.map((s) => s.w);
}
