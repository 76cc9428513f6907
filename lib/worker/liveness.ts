/**
 * How a worker tells that its server is gone though the TCP connection stays open (a frozen or
 * cut-off server): heartbeats and pings that go unanswered. Each counts sends, not wall time,
 * so a worker that was paused itself (SIGSTOP, a suspended VM, a long GC) does not take its own
 * silence for the server's.
 *
 * @module
 */

import { logger } from "../log.ts";

const log = logger("worker");

/** What the liveness checks need of the connection. */
export interface LivenessTarget {
  /** Ends the connection at once. */
  terminate(): void;
  /** Sends a WebSocket ping. */
  ping(): void;
}

/** One connection's heartbeats and pings; see the module doc. */
export class Liveness {
  #target: LivenessTarget;
  #heartbeat: () => void;
  #pingMs: number;
  #lastHeard = Date.now();
  /** Heartbeats sent since the server was last heard from. */
  #unanswered = 0;
  /** Pings sent since the server was last heard from. */
  #pinged = 0;
  #beat: ReturnType<typeof setInterval> | undefined;
  #pings: ReturnType<typeof setInterval> | undefined;

  /**
   * Pings `target` every `pingMs` (0: never) from now on; `heartbeat` sends one heartbeat once
   * {@linkcode beatEvery} set their interval.
   */
  constructor(target: LivenessTarget, pingMs: number, heartbeat: () => void) {
    this.#target = target;
    this.#heartbeat = heartbeat;
    this.#pingMs = pingMs;
    this.#pings = pingMs > 0
      ? setInterval(() => this.#ping(), pingMs)
      : undefined;
  }

  /** The server said something (a frame, a ping or a pong). */
  heard(): void {
    this.#lastHeard = Date.now();
    this.#unanswered = 0;
    this.#pinged = 0;
  }

  /** Sends a heartbeat every `intervalMs` from now on (the server names the interval). */
  beatEvery(intervalMs: number): void {
    clearInterval(this.#beat);
    this.#beat = setInterval(() => {
      // Three heartbeats in a row without a word back: the server is gone even if TCP has not
      // noticed.
      if (
        this.#unanswered >= 3 && Date.now() - this.#lastHeard > 3 * intervalMs
      ) {
        log.warn("No word from the server for {s} s: reconnecting", {
          s: Math.round((Date.now() - this.#lastHeard) / 1000),
        });
        this.#target.terminate();
        return;
      }
      this.#unanswered++;
      this.#heartbeat();
    }, intervalMs);
  }

  /** Stops both timers. */
  stop(): void {
    clearInterval(this.#beat);
    clearInterval(this.#pings);
  }

  #ping(): void {
    // A frozen server (SIGSTOP, a hung host) keeps its TCP connections open, and its workers
    // would wait for it instead of serving elsewhere.
    if (
      this.#pinged >= 3 && Date.now() - this.#lastHeard > 3 * this.#pingMs
    ) {
      log.warn("The server answers no ping for {s} s: moving on", {
        s: Math.round((Date.now() - this.#lastHeard) / 1000),
      });
      this.#target.terminate();
      return;
    }
    this.#pinged++;
    this.#target.ping();
  }
}
