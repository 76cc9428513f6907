// The one place that imports npm `ws`. Deno's built-in WebSocket client leaves Nagle's algorithm
// on, so every 1–16 KB message it sends waits ~40 ms for a delayed ACK; `ws` sets TCP_NODELAY.
// Its types come from lib/transport/_ws_types.d.ts, which says why.
// @ts-types="./_ws_types.d.ts"
import WebSocket from "npm:ws@8.18.3";

export { WebSocket };
export type { ClientOptions, RawData } from "./_ws_types.d.ts";
