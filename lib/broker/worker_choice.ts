/**
 * Which worker a job goes to: the workers that offer its action (and are not excluded), market
 * work steered around blocked upstreams, the batch's preferred workers first, then the
 * balancer, and a probe when no worker is healthy. Also why a job has no worker at all.
 *
 * @module
 */

import { type Balancer, isCandidate, offers } from "./balancer.ts";
import { ErrorCode, NoWorkersError, SwitchyardError } from "../errors.ts";
import type { Job, Peer } from "./jobs.ts";
import type { WorkerRegistry } from "./registry.ts";

/** Actions that call an upstream market-data host, so a blocked upstream matters to them. */
export const UPSTREAM_ACTIONS: ReadonlySet<string> = new Set([
  "get_market",
  "get_markets",
]);

/** The workers `job` may run on: its one named worker, or every one that offers it. */
export function offering(registry: WorkerRegistry<Peer>, job: Job): Peer[] {
  if (job.only !== undefined) {
    const w = registry.get(job.only);
    return w && offers(w, job.command) ? [w] : [];
  }
  return registry.all().filter((w) =>
    offers(w, job.command) && !job.excluded?.has(w.id)
  );
}

/** Whether any worker could take a job now. */
export function anyRoom(registry: WorkerRegistry<Peer>): boolean {
  for (const w of registry.all()) {
    if (
      (w.healthy || (w.mayProbe && w.inFlight === 0)) &&
      !w.draining && w.inFlight < w.maxConcurrency
    ) {
      return true;
    }
  }
  return false;
}

/** The worker `job` goes to now, if any has room for it. */
export function chooseWorker(
  registry: WorkerRegistry<Peer>,
  balancer: Balancer,
  job: Job,
): Peer | undefined {
  let candidates = offering(registry, job);
  if (UPSTREAM_ACTIONS.has(job.command)) {
    // Steer market work around workers whose upstream pushes back: waiting for a free worker
    // with a working upstream beats a certain UPSTREAM_BLOCKED answer.
    const open = candidates.filter((w) => !w.blocked);
    if (open.length > 0) candidates = open;
  }
  if (job.preferred) {
    for (const id of job.preferred) {
      const w = candidates.find((o) => o.id === id);
      if (w && isCandidate(w, job.command)) return w;
    }
  }
  return balancer.pick(candidates, job.command) ??
    probeWhenNoneHealthy(candidates);
}

/** With no healthy worker to offer the action, one that only timed out gets one request. */
function probeWhenNoneHealthy(candidates: readonly Peer[]): Peer | undefined {
  let probe: Peer | undefined;
  for (const w of candidates) {
    if (w.healthy && !w.draining) return undefined;
    if (!probe && w.mayProbe && !w.draining && w.inFlight === 0) probe = w;
  }
  return probe;
}

/** Why `job` has no worker to run on: its last error, or who is missing. */
export function noWorkersError(
  registry: WorkerRegistry<Peer>,
  job: Job,
): SwitchyardError {
  if (job.lastError) return job.lastError;
  if (job.only !== undefined) {
    // Only the console names a worker: it deserves the specific reason.
    const w = registry.get(job.only);
    if (!w) {
      return new SwitchyardError(
        ErrorCode.NO_WORKERS,
        `No worker with client_id '${job.only}' is connected`,
      );
    }
    return new SwitchyardError(
      ErrorCode.UNKNOWN_ACTION,
      `Worker '${job.only}' does not offer '${job.command}': it offers ${
        [...(w.actions ?? [])].join(", ")
      }`,
    );
  }
  const anyOffers = registry.all().some((w) => offers(w, job.command));
  return new NoWorkersError(
    registry.size === 0 || anyOffers || job.only !== undefined
      ? ErrorCode.NO_WORKERS
      : ErrorCode.UNKNOWN_COMMAND,
  );
}
