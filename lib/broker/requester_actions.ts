/**
 * Server actions on the requester port: which commands the server runs itself (those no
 * connected worker offers), running one, and the list of what a requester may ask for.
 *
 * @module
 */

import type { CancelSignal } from "../_cancel.ts";
import { ErrorCode, SwitchyardError } from "../errors.ts";
import {
  failureAnswer,
  type RequesterAnswer,
  type RequesterRequest,
} from "../protocol.ts";
import { offers } from "./balancer.ts";
import { BATCH_COMMAND } from "./batch.ts";
import type { BrokerCore } from "./options.ts";
import { requestDeadline } from "./requester_frames.ts";

/**
 * Whether the server runs `command` itself: a server action no connected worker offers
 * (`calculate` next to market workers, or any server action while no worker is connected at
 * all). Any other command with no worker still answers "No available workers";
 * `GET /health/ready` is the probe for workers.
 */
export function runsHere(core: BrokerCore, command: string): boolean {
  return Object.hasOwn(core.actions, command) &&
    !core.dispatcher.registry.all().some((w) => offers(w, command));
}

/**
 * What a requester may ask for now: the server's own actions, and every action a connected
 * worker declared. Workers that declared no list (original ones) serve anything and add
 * nothing here.
 */
export function availableCommands(core: BrokerCore): string[] {
  // The server's own actions are always served, by a worker that offers them or else here
  // (see `runsHere`).
  const names = new Set(Object.keys(core.actions));
  for (const worker of core.dispatcher.registry.all()) {
    for (const action of worker.actions ?? []) names.add(action);
  }
  if (names.has("get_market")) names.add(BATCH_COMMAND);
  return [...names].sort();
}

/** Runs a server action here, because no connected worker offers it (see `runsHere`). */
export async function runServerAction(
  core: BrokerCore,
  request: RequesterRequest,
  started: number,
  signal: CancelSignal,
): Promise<RequesterAnswer> {
  const id = request.request_id;
  const handler = core.actions[request.command];
  const deadline = requestDeadline(request, started, core.options) - started;
  // The requester going away cancels it, as it would a worker's request.
  const cancelled = new AbortController();
  const onCancel = () => cancelled.abort(new Error("Requester disconnected"));
  signal.addEventListener("abort", onCancel, { once: true });
  try {
    const result = await handler(request.data, {
      signal: AbortSignal.any([
        AbortSignal.timeout(Math.max(1, deadline)),
        cancelled.signal,
      ]),
      requestId: id,
    });
    return {
      request_id: id,
      success: true,
      data: result,
      error: null,
      processed_by: "server",
      elapsed_ms: core.clock.now() - started,
    };
  } catch (error) {
    return failureAnswer(
      id,
      error instanceof Error ? error.message : String(error),
      error instanceof SwitchyardError ? error.code : ErrorCode.INVALID_DATA,
      {
        processed_by: "server",
        elapsed_ms: core.clock.now() - started,
      },
    );
  } finally {
    signal.removeEventListener("abort", onCancel);
  }
}
