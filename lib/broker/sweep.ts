/**
 * The sweep: what runs on a timer rather than on a frame. It expires requests that waited too
 * long for a worker and judges workers by silence: a worker silent while it holds work gets no
 * new work, and past the stall timeout its retriable requests move to other workers; a worker
 * whose heartbeats stop gets no new work, and later is dropped.
 *
 * @module
 */

import { logger } from "../log.ts";
import type { BrokerCore } from "./options.ts";
import { pacedSilenceMs } from "./pacing.ts";
import { PROBE_AFTER_MS, PROBE_OWNER } from "./registry.ts";

/** What a probe asks: every worker offers it, and it answers at once. */
const PROBE_ACTION = "get_time";

const log = logger("broker");

/** When each broker's last sweep ran. */
const lastSweep = new WeakMap<BrokerCore, number>();

/**
 * One sweep over the queue and the workers. `disconnect` closes the socket of a worker that is
 * dropped for silence.
 */
export function sweep(
  core: BrokerCore,
  disconnect: (id: string, code: number, reason: string) => void,
): void {
  core.dispatcher.expireQueued();
  core.auth.tick();
  const now = core.clock.now();
  const { silenceMs, stallTimeoutMs, sweepIntervalMs } = core.options;
  // A sweep that comes late means this process was stalled (SIGSTOP, a suspended VM, a long GC):
  // its workers' frames wait unread in the sockets, so their silence is ours, not theirs.
  const last = lastSweep.get(core);
  lastSweep.set(core, now);
  const stalled = last === undefined ? 0 : now - last - sweepIntervalMs;
  if (sweepIntervalMs > 0 && stalled > Math.max(sweepIntervalMs, 1000)) {
    for (const worker of core.dispatcher.registry.all()) {
      if (!worker.remote) worker.lastSeen += stalled;
    }
  }
  for (const worker of core.dispatcher.registry.all()) {
    if (worker.inFlight > 0 && !worker.remote) {
      const quiet = now - worker.lastSeen;
      // A worker waiting for its next upstream slot has nothing to say until its heartbeat:
      // silence its announced pacing explains is not a sign of trouble.
      if (
        quiet > silenceMs + pacedSilenceMs(worker, now) && !worker.silent
      ) {
        log.warn(
          "Worker {id} holds {n} requests and has been silent for {ms} ms: no new work until it is heard from",
          { id: worker.id, n: worker.inFlight, ms: quiet },
        );
        worker.silent = true;
      }
      if (stallTimeoutMs > 0 && quiet > stallTimeoutMs) {
        const moved = core.dispatcher.resendStalled(
          worker,
          stallTimeoutMs,
          `silent for ${Math.round(quiet / 1000)} s while holding work`,
        );
        if (moved > 0) {
          log.warn(
            "Worker {id} stalled: {n} retriable requests re-sent to other workers",
            { id: worker.id, n: moved },
          );
        }
      }
    }
    if (
      worker.probe && worker.inFlight === 0 && !worker.probing &&
      !worker.remote && !worker.draining && worker.actions?.has(PROBE_ACTION)
    ) {
      // A benched worker may get no work at all while others are healthy (the balancer and the
      // batches prefer those): ask it something cheap, so it can show it answers in time.
      worker.probing = true;
      core.dispatcher.dispatch(PROBE_ACTION, {}, {
        deadline: now + PROBE_AFTER_MS,
        only: worker.id,
        retriable: false,
        owner: PROBE_OWNER,
      }, () => worker.probing = false);
    }
    if (!worker.heartbeats) continue;
    const silent = now - worker.lastSeen;
    if (silent > core.options.cleanupIntervalMs) {
      log.warn("Dropping worker {id}: no heartbeat for {s} s", {
        id: worker.id,
        s: Math.round(silent / 1000),
      });
      disconnect(worker.id, 4000, "Heartbeat timeout");
      core.dispatcher.workerLost(worker, "heartbeat timeout");
    } else if (silent > core.options.heartbeatTimeoutMs && !worker.unhealthy) {
      log.warn(
        "Worker {id} missed its heartbeats: no new work until it is heard from",
        {
          id: worker.id,
        },
      );
      worker.unhealthy = true;
    }
  }
}
