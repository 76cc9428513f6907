/**
 * A worker with its own action and its own message type, added through the library's API.
 *
 * Run it against a server: `deno run -A examples/custom_handler.ts ws://localhost:8765`, then
 * `deno task requester word_count '{"text": "to be or not to be"}'`. Against a server with a
 * worker token and a private CA: `SWITCHYARD_WORKER_TOKEN=… deno run -A
 * examples/custom_handler.ts wss://server:8765 --ca ca.pem`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { setupLogging, Worker } from "../lib/mod.ts";

/** Options for {@linkcode customWorker}. */
export interface CustomWorkerOptions {
  /** Called with each `announce` message. @default print it */
  onAnnounce?: (message: string) => void;
  /** The worker token, when the server wants one. */
  token?: string;
  /** PEM text of a CA to trust for `wss://`. */
  ca?: string;
}

/** Builds the example worker: `word_count` action, and a handler for `announce` frames. */
export function customWorker(
  url: string,
  options: CustomWorkerOptions = {},
): Worker {
  const { onAnnounce, token, ca } = options;
  const worker = new Worker({ url, name: "custom-example", token, ca });

  // An action: params in, result out; throw to answer with an error.
  worker.registerAction("word_count", (params, ctx) => {
    const text = (params as { text?: unknown })?.text;
    if (typeof text !== "string") {
      throw new TypeError(`Param 'text' must be a string: got ${typeof text}`);
    }
    ctx.signal.throwIfAborted();
    const counts: Record<string, number> = {};
    for (const word of text.toLowerCase().match(/[\p{L}\p{N}']+/gu) ?? []) {
      counts[word] = (counts[word] ?? 0) + 1;
    }
    return { words: Object.values(counts).reduce((a, b) => a + b, 0), counts };
  });

  // A message type the protocol does not define: the server sends it with `type: "announce"`.
  worker.onMessage("announce", (envelope) => {
    const message = String(
      (envelope.data as { message?: unknown })?.message ?? "",
    );
    if (onAnnounce) onAnnounce(message);
    else console.log(`announce: ${message}`);
  });
  return worker;
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { ca: { type: "string" } },
  });
  setupLogging({ level: "info" });
  const worker = customWorker(positionals[0] ?? "ws://localhost:8765", {
    token: Deno.env.get("SWITCHYARD_WORKER_TOKEN"),
    ca: values.ca ? Deno.readTextFileSync(values.ca) : undefined,
  });
  Deno.addSignalListener(
    "SIGINT",
    () => void worker.stop().then(() => Deno.exit(0)),
  );
  await worker.start();
}
