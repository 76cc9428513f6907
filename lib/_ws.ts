// The one place that imports npm `ws`. Deno's built-in WebSocket client leaves Nagle's algorithm
// on, so every 1–16 KB message it sends waits ~40 ms for a delayed ACK; `ws` sets TCP_NODELAY.
// @ts-types="@types/ws"
import WebSocket from "ws";

export { WebSocket };
export type { ClientOptions, RawData } from "ws";
