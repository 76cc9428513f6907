/**
 * The worker's built-in `get_time` and `get_system_info` actions.
 *
 * @module
 */

import type { ActionHandler } from "../action.ts";
import { formatLocalTime } from "../_local_time.ts";

const startedAt = Date.now();

function attempt<T>(read: () => T): T | null {
  try {
    return read();
  } catch {
    // Without --allow-sys a field is simply unknown.
    return null;
  }
}

/** Facts about this machine and process. */
export function systemInfo(): Record<string, unknown> {
  const memory = attempt(() => Deno.systemMemoryInfo());
  return {
    hostname: attempt(() => Deno.hostname()),
    os: Deno.build.os,
    arch: Deno.build.arch,
    os_release: attempt(() => Deno.osRelease()),
    cpu_count: navigator.hardwareConcurrency,
    memory_total: memory?.total ?? null,
    memory_available: memory?.available ?? null,
    load_average: attempt(() => Deno.loadavg()),
    runtime: `deno ${Deno.version.deno}`,
    pid: Deno.pid,
    os_uptime_s: attempt(() => Deno.osUptime()),
    uptime_s: Math.round((Date.now() - startedAt) / 1000),
  };
}

/**
 * What a worker says of its host when it registers (`host`); `instance` tells one Worker object
 * from another on the same host, so a server knows the same worker back on a new connection.
 */
export function hostInfo(instance: string): Record<string, unknown> {
  return {
    hostname: attempt(() => Deno.hostname()),
    pid: Deno.pid,
    instance,
    os: Deno.build.os,
    runtime: `deno ${Deno.version.deno}`,
  };
}

/** The actions every worker offers. */
export function builtinWorkerActions(): Record<string, ActionHandler> {
  return {
    get_time: () => formatLocalTime(),
    get_system_info: () => systemInfo(),
  };
}
