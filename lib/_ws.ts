// The one place that imports npm `ws`. Deno's built-in WebSocket client leaves Nagle's algorithm
// on, so every 1–16 KB message it sends waits ~40 ms for a delayed ACK; `ws` sets TCP_NODELAY.
// @ts-types="npm:@types/ws@8.18.1"
import WebSocket from "npm:ws@8.18.3";

export { WebSocket };
export type { ClientOptions, RawData } from "npm:ws@8.18.3";
