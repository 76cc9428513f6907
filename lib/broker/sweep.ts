/**
 * The sweep: what runs on a timer rather than on a frame. It expires requests that waited too
 * long for a worker and judges workers by heartbeat silence: first no new work, later dropped.
 *
 * @module
 */

import { logger } from "../log.ts";
import type { BrokerCore } from "./options.ts";

const log = logger("broker");

/**
 * One sweep over the queue and the workers. `disconnect` closes the socket of a worker that is
 * dropped for silence.
 */
export function sweep(
  core: BrokerCore,
  disconnect: (id: string, code: number, reason: string) => void,
): void {
  core.dispatcher.expireQueued();
  const now = core.clock.now();
  for (const worker of core.dispatcher.registry.all()) {
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
