/**
 * A worker with its own action and its own message type, added through the library's API.
 *
 * Run it against a server: `deno run -A examples/custom_handler.ts ws://localhost:8765`, then
 * `deno task requester word_count '{"text": "to be or not to be"}'`.
 *
 * @module
 */

import { Worker } from "../lib/mod.ts";

/** Builds the example worker: `word_count` action, and a handler for `announce` frames. */
export function customWorker(
  url: string,
  onAnnounce?: (message: string) => void,
): Worker {
  const worker = new Worker({ url, name: "custom-example" });

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
  const worker = customWorker(Deno.args[0] ?? "ws://localhost:8765");
  Deno.addSignalListener(
    "SIGINT",
    () => void worker.stop().then(() => Deno.exit(0)),
  );
  await worker.start();
}
