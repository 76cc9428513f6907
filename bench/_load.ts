/**
 * The closed-loop load generator: C connections, each keeping W requests in flight, for T
 * seconds. Frames are requester-style (`{request_id, command, data}`) and answers are matched by
 * `request_id`, so the same harness loads the broker and the one-hop echo server.
 *
 * @module
 */

import { connect as natsConnect } from "npm:@nats-io/transport-node@3.4.0";
import { openSocket } from "../lib/transport/_connect.ts";
import { WebSocket } from "../lib/transport/_ws.ts";
import { NATS_SUBJECT } from "./_nats_worker.ts";
import { type LoadSummary, summarize } from "./_stats.ts";

/**
 * Which client sends the frames: npm `ws` (TCP_NODELAY), Deno's built-in WebSocket client, or
 * NATS request-reply on the `echo` subject (`url` is then `nats://…`).
 */
export type ClientKind = "ws" | "deno" | "nats" | "switchyard";

/** Options for {@linkcode runLoad}. */
export interface LoadOptions {
  /** Requester-port (or echo) URL. */
  url: string;
  /** Connections. */
  connections: number;
  /** Requests in flight per connection. */
  inFlight: number;
  /** Measured seconds (after the warm-up). */
  seconds: number;
  /** Seconds of load before measuring. @default min(1, seconds / 5) */
  warmupSeconds?: number;
  /** The command of every request. */
  command: string;
  /** The `data` of every request. */
  data: unknown;
  /**
   * npm `ws` (TCP_NODELAY), Deno's built-in client, NATS, or the client our workers and
   * `RequesterClient` use (`lib/transport/_connect.ts`). @default "ws"
   */
  client?: ClientKind;
}

/** The raw measurements of one load. */
export interface LoadRun {
  /** Latencies (ms) of the answers received in the measured window. */
  latencies: number[];
  /** Length of the measured window, ms. */
  measuredMs: number;
  /** Answers with `success: false` in the window. */
  errors: number;
  /** Answers received in all, warm-up included. */
  answers: number;
  /** Requests still unanswered 5 s after the load stopped. */
  unanswered: number;
  /** Bytes of the answers in the window. */
  replyBytes: number;
  /** Request frame size in bytes. */
  requestBytes: number;
}

/** What one or more loads of the same kind measured. */
export interface LoadResult extends LoadSummary {
  /** Answers with `success: false`. */
  errors: number;
  /** Answers received in all, warm-ups included. */
  answers: number;
  /** Requests left unanswered. */
  unanswered: number;
  /** Mean answer frame size in bytes. */
  replyBytes: number;
  /** Request frame size in bytes. */
  requestBytes: number;
}

/** Merges runs of the same load (time slices) into one result. */
export function mergeRuns(runs: LoadRun[]): LoadResult {
  const summary = summarize(
    runs.flatMap((r) => r.latencies),
    runs.reduce((s, r) => s + r.measuredMs, 0),
  );
  const sum = (f: (r: LoadRun) => number) => runs.reduce((s, r) => s + f(r), 0);
  return {
    ...summary,
    errors: sum((r) => r.errors),
    answers: sum((r) => r.answers),
    unanswered: sum((r) => r.unanswered),
    replyBytes: summary.count ? sum((r) => r.replyBytes) / summary.count : 0,
    requestBytes: runs[0]?.requestBytes ?? 0,
  };
}

interface Conn {
  send(text: string): void;
  onText(listener: (text: string) => void): void;
  close(): void;
}

const decoder = new TextDecoder();

async function openConn(url: string, kind: ClientKind): Promise<Conn> {
  if (kind === "nats") {
    const nc = await natsConnect({ servers: url });
    let listener = (_text: string) => {};
    return {
      // A failed request stays unanswered, which the run reports.
      send: (text) =>
        void nc.request(NATS_SUBJECT, text, { timeout: 60_000 }).then(
          (msg) => listener(msg.string()),
          () => {},
        ),
      onText: (l) => listener = l,
      close: () => void nc.close(),
    };
  }
  if (kind === "switchyard") {
    let listener = (_text: string) => {};
    const socket = await openSocket(url, {}, (text) => listener(text));
    return {
      send: (text) => socket.send(text),
      onText: (l) => listener = l,
      close: () => socket.close(),
    };
  }
  if (kind === "ws") {
    const socket = new WebSocket(url, { perMessageDeflate: false });
    await new Promise<void>((resolve, reject) => {
      socket.once("open", () => resolve());
      socket.once("error", reject);
    });
    return {
      send: (text) => socket.send(text),
      onText: (listener) =>
        socket.on(
          "message",
          (data: Uint8Array) => listener(decoder.decode(data)),
        ),
      close: () => socket.terminate(),
    };
  }
  const socket = new globalThis.WebSocket(url);
  await new Promise<void>((resolve, reject) => {
    socket.onopen = () => resolve();
    socket.onerror = () => reject(new Error(`Cannot connect to ${url}`));
  });
  return {
    send: (text) => socket.send(text),
    onText: (listener) => socket.onmessage = (e) => listener(String(e.data)),
    close: () => socket.close(),
  };
}

/** Runs one closed-loop load and records the answers received in the measured window. */
export async function runLoad(options: LoadOptions): Promise<LoadRun> {
  const warmupMs = 1000 *
    (options.warmupSeconds ?? Math.min(1, options.seconds / 5));
  const conns = await Promise.all(
    Array.from(
      { length: options.connections },
      () => openConn(options.url, options.client ?? "ws"),
    ),
  );
  const body = JSON.stringify({ command: options.command, data: options.data });
  const frameFor = (id: string) => `{"request_id":"${id}",${body.slice(1)}`;
  const latencies: number[] = [];
  let errors = 0;
  let replyBytes = 0;
  let outstanding = 0;
  let seq = 0;
  let answers = 0;
  let sending = true;
  const start = performance.now();
  const from = start + warmupMs;
  const until = from + options.seconds * 1000;
  const drained = Promise.withResolvers<void>();

  conns.forEach((conn, c) => {
    const sentAt = new Map<string, number>();
    const send = () => {
      const id = `${c}-${seq++}`;
      sentAt.set(id, performance.now());
      outstanding++;
      conn.send(frameFor(id));
    };
    conn.onText((text) => {
      const now = performance.now();
      const answer = JSON.parse(text) as {
        request_id: string;
        success?: boolean;
      };
      const t0 = sentAt.get(answer.request_id);
      if (t0 === undefined) return;
      sentAt.delete(answer.request_id);
      outstanding--;
      answers++;
      if (t0 >= from && now <= until) {
        latencies.push(now - t0);
        replyBytes += text.length;
        if (answer.success !== true) errors++;
      }
      if (sending && now < until) send();
      else if (outstanding === 0) drained.resolve();
    });
    for (let i = 0; i < options.inFlight; i++) send();
  });

  await new Promise((resolve) =>
    setTimeout(resolve, until - performance.now())
  );
  sending = false;
  if (outstanding > 0) {
    const t = setTimeout(drained.resolve, 5000);
    await drained.promise;
    clearTimeout(t);
  }
  for (const conn of conns) conn.close();
  return {
    latencies,
    measuredMs: until - from,
    errors,
    answers,
    unanswered: outstanding,
    replyBytes,
    requestBytes: frameFor(`${options.connections - 1}-${seq}`).length,
  };
}
