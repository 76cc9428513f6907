/**
 * Shared test helpers: a seeded PRNG, bounded polling, a server on port 0, real workers, a
 * scripted raw WebSocket peer (for misbehaving workers and requesters), and disposables that
 * `await using` releases at the end of a test, failed or not.
 *
 * @module
 */

import type { ActionHandler } from "../lib/action.ts";
import {
  type RunningServer,
  type ServerOptions,
  startServer,
} from "../lib/broker/server.ts";
import {
  RequesterClient,
  type RequesterClientOptions,
} from "../lib/requester/requester_client.ts";
import { Worker, type WorkerOptions } from "../lib/worker/worker_client.ts";
import { WebSocket } from "../lib/transport/_ws.ts";

export { mulberry32 } from "../lib/_random.ts";

/**
 * Polls `condition` every `everyMs` until it holds; throws after `timeoutMs`. The limit is a
 * ceiling for a regression, never part of what a test checks: on a loaded machine a condition
 * that holds in milliseconds alone can take seconds, so the default is generous.
 */
export async function waitFor(
  condition: () => boolean,
  message = "condition",
  timeoutMs = 10_000,
  everyMs = 10,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until) {
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${message}`);
    }
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/**
 * Settles like `promise`, or rejects once `timeoutMs` has passed, so a regression fails rather
 * than hangs. Like {@linkcode waitFor}'s, the limit is a ceiling, not a check.
 */
export async function within<T>(
  promise: Promise<T>,
  what: string,
  timeoutMs = 15_000,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`),
            ),
          timeoutMs,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A request's outcome, bounded like {@linkcode within} and marked handled at once, so a
 * rejection that comes before the test awaits it is reported there instead of as uncaught.
 */
export function answerOf<T>(
  request: Promise<T>,
  what = "the answer",
  timeoutMs = 5000,
): Promise<T> {
  const bounded = within(request, what, timeoutMs);
  bounded.catch(() => {});
  return bounded;
}

/** A running server that closes itself at the end of an `await using` scope. */
export type TestServer = RunningServer & AsyncDisposable;

/** A server on 127.0.0.1 with both ports picked by the system and no background sweeper. */
export function startTestServer(options: ServerOptions = {}): TestServer {
  const server = startServer({
    host: "127.0.0.1",
    port: 0,
    requesterPort: 0,
    sweepIntervalMs: 0,
    // Tests of the grace period set their own; the others want NO_WORKERS at once.
    noWorkerGraceMs: 0,
    ...options,
  });
  return Object.assign(server, {
    [Symbol.asyncDispose]: () => server.close(),
  });
}

/** A started Worker that stops itself at the end of an `await using` scope. */
export type TestWorker = Worker & AsyncDisposable;

/** A connected RequesterClient that closes itself at the end of an `await using` scope. */
export type TestClient = RequesterClient & AsyncDisposable;

/** A `get_markets` answer of one empty success per item, for tests about placement, not bars. */
export function emptyBars(
  params: unknown,
): { success: true; code: string; data: never[] }[] {
  return (params as { code: string }[]).map((item) => ({
    success: true,
    code: item.code,
    data: [],
  }));
}

/** Options for {@linkcode startWorker}. */
export interface TestWorkerOptions extends Partial<WorkerOptions> {
  actions?: Record<string, ActionHandler>;
}

/**
 * Starts a real Worker and resolves once the server has its registration. `await using` stops
 * it at the end of the scope, failed or not.
 */
export async function startWorker(
  server: RunningServer,
  options: TestWorkerOptions = {},
): Promise<TestWorker> {
  const { actions = {}, ...rest } = options;
  const worker = Object.assign(
    new Worker({
      url: server.workerUrl,
      name: "test-worker",
      backoff: { initialMs: 10, maxMs: 50 },
      graceMs: 2000,
      ...rest,
    }),
    { [Symbol.asyncDispose]: () => worker.stop() },
  );
  for (const [name, handler] of Object.entries(actions)) {
    worker.registerAction(name, handler);
  }
  const ready = worker.ready();
  void worker.start();
  try {
    const id = await within(ready, `worker ${worker.name} to connect`, 10_000);
    await waitFor(
      () =>
        server.broker.workers().some((w) => w.client_id === id && w.registered),
      `worker ${id} to register`,
    );
  } catch (error) {
    await worker.stop();
    throw error;
  }
  return worker;
}

/**
 * A connected RequesterClient that `await using` closes at the end of the scope, failed or not.
 * Each request carries the server's default deadline (30 s) unless the test says otherwise, so
 * the client gives up after 35 s instead of its own 300 s default when a regression stalls.
 */
export async function connectClient(
  url: string,
  options?: RequesterClientOptions,
): Promise<TestClient> {
  const client = Object.assign(
    new RequesterClient(url, { timeout: 30, ...options }),
    {
      [Symbol.asyncDispose]: () => client.close(),
    },
  );
  try {
    await client.connect();
  } catch (error) {
    await client.close();
    throw error;
  }
  return client;
}

/**
 * `value` with `release` as its `[Symbol.asyncDispose]`, for `await using` on something that has
 * none: a Worker started by hand, a client that is not connected yet, a server of the library.
 */
export function releasing<T extends object>(
  value: T,
  release: (value: T) => unknown,
): T & AsyncDisposable {
  return Object.assign(value, {
    async [Symbol.asyncDispose]() {
      await release(value);
    },
  });
}

/**
 * `items` as an array that `await using` releases at the end of the scope, failed or not: every
 * item in it then (pushed later too) is disposed, all at once, even when one of them throws.
 */
export function group<T extends AsyncDisposable>(
  items: T[] = [],
): T[] & AsyncDisposable {
  return Object.assign(items, {
    async [Symbol.asyncDispose]() {
      const failed = (await Promise.allSettled(
        items.map((item) => item[Symbol.asyncDispose]()),
      )).flatMap((r) => r.status === "rejected" ? [r.reason] : []);
      if (failed.length === 1) throw failed[0];
      if (failed.length > 1) {
        throw new AggregateError(failed, "Releasing a group failed");
      }
    },
  });
}

/** A fresh temporary directory that `await using` removes, contents and all, once done. */
export async function tempDir(
  prefix: string,
): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix });
  return {
    path,
    [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }),
  };
}

/** The server-side id of a started worker. */
export function idOf(worker: Worker): string {
  const id = worker.status().client_id;
  if (!id) throw new Error("Worker is not connected");
  return id;
}

// deno-lint-ignore no-explicit-any
export type Frame = any;

/** A scripted peer on a raw `ws` socket: sends anything, reads every frame it gets. */
export class RawPeer {
  readonly socket: WebSocket;
  /** Every frame received, parsed when it was JSON, in order. */
  readonly received: Frame[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  #unread: Frame[] = [];
  #waiters: { match: (f: Frame) => boolean; resolve: (f: Frame) => void }[] =
    [];

  private constructor(socket: WebSocket) {
    this.socket = socket;
    const closed = Promise.withResolvers<{ code: number; reason: string }>();
    this.closed = closed.promise;
    socket.on("message", (data: Uint8Array, isBinary: boolean) => {
      const text = new TextDecoder().decode(data);
      let frame: Frame = text;
      if (!isBinary) {
        try {
          frame = JSON.parse(text);
        } catch {
          // Kept as text.
        }
      }
      this.received.push(frame);
      const i = this.#waiters.findIndex((w) => w.match(frame));
      if (i >= 0) this.#waiters.splice(i, 1)[0].resolve(frame);
      else this.#unread.push(frame);
    });
    socket.on("error", () => {});
    socket.on("close", (code: number, reason: Uint8Array) => {
      closed.resolve({ code, reason: new TextDecoder().decode(reason) });
    });
  }

  /** Opens a connection; `headers` for tokens. */
  static open(url: string, headers?: Record<string, string>): Promise<RawPeer> {
    const socket = new WebSocket(url, { headers, perMessageDeflate: false });
    const peer = new RawPeer(socket);
    return new Promise((resolve, reject) => {
      socket.once("open", () => resolve(peer));
      socket.once("error", reject);
    });
  }

  /** Sends `frame` as JSON text, or as is when it is a string or bytes. */
  send(frame: unknown): void {
    if (typeof frame === "string" || frame instanceof Uint8Array) {
      this.socket.send(frame);
    } else this.socket.send(JSON.stringify(frame));
  }

  /** Sends a worker-protocol envelope. */
  sendEnvelope(type: string, data: unknown, msgId = crypto.randomUUID()): void {
    this.send({ type, msg_id: msgId, timestamp: Date.now() / 1000, data });
  }

  /** The first unread frame that matches, waiting up to `timeoutMs` for it. */
  next(
    match: (frame: Frame) => boolean = () => true,
    timeoutMs = 3000,
  ): Promise<Frame> {
    const i = this.#unread.findIndex(match);
    if (i >= 0) return Promise.resolve(this.#unread.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const waiter = {
        match,
        resolve: (frame: Frame) => {
          clearTimeout(timer);
          resolve(frame);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        reject(new Error(`No matching frame within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  /** The answer to requester request `id`. */
  answer(id: string | null): Promise<Frame> {
    return this.next((f) => f?.request_id === id && "success" in f);
  }

  /** The next envelope of `type`. */
  envelope(type: string): Promise<Frame> {
    return this.next((f) => f?.type === type);
  }

  /** Frames received but not yet taken by `next`. */
  get unread(): readonly Frame[] {
    return this.#unread;
  }

  /** For `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    if (this.socket.readyState <= 1) this.socket.close(1000, "test done");
    const t = setTimeout(() => this.socket.terminate(), 1000);
    await this.closed;
    clearTimeout(t);
  }
}

/**
 * A raw worker: connects, reads the server's `connect`, and registers with `registration`
 * unless it is `false`. Resolves once the server knows it.
 */
export async function openRawWorker(
  server: RunningServer,
  registration: Record<string, unknown> | false = {},
): Promise<{ peer: RawPeer; id: string }> {
  const peer = await RawPeer.open(server.workerUrl);
  try {
    const hello = await peer.envelope("connect");
    const id = hello.data.client_id as string;
    if (registration !== false) {
      peer.sendEnvelope("connect", { name: "raw", ...registration });
      await waitFor(
        () =>
          server.broker.workers().some((w) =>
            w.client_id === id && w.registered
          ),
        `raw worker ${id} to register`,
      );
    } else {
      await waitFor(
        () => server.broker.workers().some((w) => w.client_id === id),
        `raw worker ${id} to appear`,
      );
    }
    return { peer, id };
  } catch (error) {
    await peer.close();
    throw error;
  }
}

/** Answers a worker-protocol `request` envelope on a raw worker. */
export function respond(
  peer: RawPeer,
  request: Frame,
  result: unknown,
  extra: Record<string, unknown> = {},
): void {
  peer.sendEnvelope("response", {
    request_id: request.msg_id,
    success: true,
    result,
    error: null,
    ...extra,
  });
}
