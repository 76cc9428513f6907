/**
 * Binds a broker's two handlers to two ports.
 *
 * @module
 */

import { Broker, type BrokerOptions } from "./broker.ts";
import {
  Guard,
  type GuardStats,
  parseAddress,
  relayedPeer,
} from "../transport/guard.ts";
import { logger } from "../log.ts";
import { resolveOptions } from "./options.ts";
import { encodeEnvelope, failureAnswer, MessageType } from "../protocol.ts";
import { peekRequestId } from "./requester_frames.ts";

const lenient = new TextDecoder();
import { ErrorCode } from "../errors.ts";
import type { ClusterLink, ClusterOptions } from "../cluster/link.ts";

const log = logger("server");

/** Options for {@linkcode startServer}. */
export interface ServerOptions extends BrokerOptions {
  /** Interface to listen on. @default "0.0.0.0" */
  host?: string;
  /** Worker port; 0 picks a free one. @default 8765 */
  port?: number;
  /** Requester port; 0 picks a free one. @default 8766 */
  requesterPort?: number;
  /** PEM certificate text: serve `wss://` and `https://`. */
  cert?: string;
  /** PEM private key text for `cert`. */
  key?: string;
  /** Join a cluster over NATS (see `docs/cluster.md`); without it, one server on its own. */
  cluster?: ClusterOptions;
  /**
   * Put a {@linkcode Guard} in front of each port: header timeout, per-address limit, a
   * connection budget from the descriptor limit, and an accept loop that survives `EMFILE`.
   * @default true
   */
  guard?: boolean;
  /** Time a connection has to send a complete request head, in ms. @default 5000 */
  headerTimeoutMs?: number;
  /**
   * Time a connection has to send the whole request body once its head is in, in ms (the HTTP
   * API's `POST` bodies); then 408 and closed. Needs the guard. @default 10000
   */
  bodyTimeoutMs?: number;
  /**
   * Open TCP connections per port, upgraded or not (`maxConnections` counts WebSockets).
   * @default from the descriptor limit, see `connectionBudget` in `guard.ts`
   */
  maxOpenConnections?: number;
  /** Open connections from one IP address, per port. @default 256 */
  maxPerAddress?: number;
  /** How often refused connections are summed up in one log line, in ms. @default 10000 */
  refusalLogIntervalMs?: number;
}

/** A running server. */
export interface RunningServer {
  /** The broker behind the ports. */
  broker: Broker;
  /** The bound worker port. */
  port: number;
  /** The bound requester port. */
  requesterPort: number;
  /** `ws://` or `wss://` URL of the worker port on `host`. */
  workerUrl: string;
  /** `ws://` or `wss://` URL of the requester port on `host`. */
  requesterUrl: string;
  /** Stops taking requests, finishes in-flight work for up to `graceMs`, then closes. */
  drain(graceMs: number): Promise<void>;
  /** Closes now: pending requests fail with a clear error. */
  close(): Promise<void>;
  /** Resolves once both listeners have closed; never rejects. */
  finished: Promise<void>;
  /** With `cluster`: the link, once set up (it connects in the background). */
  cluster?: Promise<ClusterLink>;
  /** What each port's guard refused; undefined without guards. */
  guardStats(): { worker: GuardStats; requester: GuardStats } | undefined;
}

/**
 * A `Deno.serve` on a loopback port that only the guard talks to. Its accept loop ends for good
 * on an accept error (`EMFILE`); then it starts again on a new port, which the guard follows.
 */
class InnerServer {
  #server!: Deno.HttpServer<Deno.NetAddr>;
  #closed = false;
  #handler: Deno.ServeHandler<Deno.NetAddr>;
  #restarting: Promise<void> | undefined;
  #done = Promise.withResolvers<void>();

  constructor(handler: Deno.ServeHandler<Deno.NetAddr>, readonly name: string) {
    this.#handler = handler;
    this.#start();
  }

  get port(): number {
    return this.#server.addr.port;
  }

  get finished(): Promise<void> {
    return this.#done.promise;
  }

  #start(): void {
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      this.#handler,
    );
    this.#server = server;
    server.finished.then(
      () => {
        if (this.#closed) this.#done.resolve();
      },
      (error) => {
        if (this.#closed) return this.#done.resolve();
        log.error(
          "{name} port's HTTP server stopped: {error}; starting it again",
          {
            name: this.name,
            error: error instanceof Error ? error.message : String(error),
          },
        );
        this.#restarting = this.#restart();
      },
    );
  }

  async #restart(): Promise<void> {
    let pause = 50;
    while (!this.#closed) {
      try {
        return this.#start();
      } catch {
        await new Promise((resolve) => setTimeout(resolve, pause));
        pause = Math.min(pause * 2, 1000);
      }
    }
  }

  async shutdown(): Promise<void> {
    this.#closed = true;
    await this.#restarting;
    await this.#server.shutdown().catch(() => {});
    this.#done.resolve();
  }
}

interface Port {
  port: number;
  /** Frees the port for a new server; open connections stay until `shutdown`. */
  stopAccepting(): Promise<void>;
  shutdown(): Promise<void>;
  finished: Promise<void>;
  stats?: () => GuardStats;
}

function listenGuarded(
  name: string,
  host: string,
  port: number,
  handler: Deno.ServeHandler<Deno.NetAddr>,
  options: ServerOptions,
  tls: { cert?: string; key?: string },
  oversizeAnswer: (bytes: number, head: Uint8Array) => string,
): Port {
  const secret = crypto.randomUUID();
  const inner = new InnerServer((req, info) => {
    const peer = relayedPeer(req, secret);
    if (peer === undefined) {
      return new Response("Forbidden: connect through the public port\n", {
        status: 403,
      });
    }
    return handler(req, {
      remoteAddr: parseAddress(peer),
      get completed() {
        return info.completed;
      },
    });
  }, name);
  let guard: Guard;
  try {
    guard = new Guard({
      name,
      hostname: host,
      port,
      ...tls,
      target: () => inner.port,
      secret,
      headerTimeoutMs: options.headerTimeoutMs,
      bodyTimeoutMs: options.bodyTimeoutMs,
      maxPerAddress: options.maxPerAddress,
      maxConnections: options.maxOpenConnections,
      logIntervalMs: options.refusalLogIntervalMs,
      oversizeAnswer,
      handleUpgrade: handler,
    });
  } catch (error) {
    void inner.shutdown();
    throw error;
  }
  return {
    port: guard.port,
    finished: inner.finished,
    stats: () => guard.stats(),
    stopAccepting: () => guard.stopAccepting(),
    async shutdown() {
      await guard.close();
      await inner.shutdown();
    },
  };
}

function listenPlain(
  host: string,
  port: number,
  handler: Deno.ServeHandler<Deno.NetAddr>,
  tls: { cert?: string; key?: string },
): Port {
  const server = Deno.serve(
    { hostname: host, port, onListen: () => {}, ...tls },
    handler,
  );
  return {
    port: server.addr.port,
    finished: server.finished.catch((error) => {
      log.error("HTTP server stopped: {error}", { error });
    }),
    shutdown: () => server.shutdown(),
    stopAccepting: () => Promise.resolve(),
  };
}

/** Whether `host` keeps the server to this machine. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" ||
    host.startsWith("127.");
}

/** Starts a broker on two ports. */
export function startServer(options: ServerOptions = {}): RunningServer {
  const host = options.host ?? "0.0.0.0";
  const broker = new Broker(options);
  const frames = resolveOptions(options);
  const tls = options.cert && options.key
    ? { cert: options.cert, key: options.key }
    : {};
  const listen = (
    name: string,
    port: number,
    handler: Deno.ServeHandler<Deno.NetAddr>,
    oversizeAnswer: (bytes: number, head: Uint8Array) => string,
  ) => {
    try {
      return options.guard === false
        ? listenPlain(host, port, handler, tls)
        : listenGuarded(
          name,
          host,
          port,
          handler,
          options,
          tls,
          oversizeAnswer,
        );
    } catch (error) {
      // Deno's "Address already in use" names no port, and there are two.
      throw new Error(
        `Cannot listen on ${host}:${port} (${name.toLowerCase()} port): ${
          (error as Error).message
        }`,
        { cause: error },
      );
    }
  };
  let workerServer: Port;
  try {
    // A message the runtime would refuse is answered by the guard, in each port's own words.
    const limit = frames.maxWorkerFrameBytes;
    workerServer = listen(
      "Worker",
      options.port ?? 8765,
      broker.handleWorker,
      (bytes) =>
        encodeEnvelope(MessageType.ERROR, {
          error: `Frame too large: ${bytes} bytes (limit ${limit})`,
          code: ErrorCode.FRAME_TOO_LARGE,
          msg_id: null,
        }),
    );
  } catch (error) {
    void broker.close();
    throw error;
  }
  let requesterServer: Port;
  try {
    requesterServer = listen(
      "Requester",
      options.requesterPort ?? 8766,
      broker.handleRequester,
      (bytes, head) =>
        JSON.stringify(failureAnswer(
          peekRequestId(lenient.decode(head)),
          `Frame too large: ${bytes} bytes (limit ${frames.maxRequesterFrameBytes})`,
          ErrorCode.FRAME_TOO_LARGE,
        )),
    );
  } catch (error) {
    void workerServer.shutdown();
    void broker.close();
    throw error;
  }
  const scheme = options.cert ? "wss" : "ws";
  const shown = host === "0.0.0.0" || host === "::" ? "localhost" : host;
  const port = workerServer.port;
  const requesterPort = requesterServer.port;
  broker.listening({ worker: port, requester: requesterPort });
  log.info("Worker port listening on {scheme}://{host}:{port}", {
    scheme,
    host,
    port,
  });
  log.info("Requester port listening on {scheme}://{host}:{port}", {
    scheme,
    host,
    port: requesterPort,
  });
  log.info(
    "Dashboard and HTTP API on {web}://{host}:{port}/ (GET /metrics on both ports)",
    { web: scheme === "wss" ? "https" : "http", host, port: requesterPort },
  );
  if (!isLoopback(host) && (!options.workerToken || !options.requesterToken)) {
    log.warn(
      "Listening on {host} without {which}: anyone who can reach this machine can connect. " +
        "Set --worker-token and --requester-token (or SWITCHYARD_WORKER_TOKEN / " +
        "SWITCHYARD_REQUESTER_TOKEN), or listen on 127.0.0.1",
      {
        host,
        which: !options.workerToken && !options.requesterToken
          ? "tokens"
          : !options.workerToken
          ? "a worker token"
          : "a requester token",
      },
    );
  }
  const workerUrl = `${scheme}://${shown}:${port}`;
  const requesterUrl = `${scheme}://${shown}:${requesterPort}`;
  const cluster = options.cluster
    ? broker.joinCluster({
      serverName: `${shown}:${port}`,
      urls: { worker: workerUrl, requester: requesterUrl },
      ...options.cluster,
    })
    : undefined;
  // A failure to join shows in the log and /health; the server keeps serving its own workers.
  cluster?.catch((error) => log.error("{error}", { error: error.message }));
  const stopListening = async () => {
    await Promise.all([workerServer.shutdown(), requesterServer.shutdown()]);
  };
  if (workerServer.stats && requesterServer.stats) {
    const [w, r] = [workerServer.stats, requesterServer.stats];
    broker.metrics.attachGuard(() => ({ worker: w(), requester: r() }));
  }
  return {
    broker,
    port,
    requesterPort,
    workerUrl,
    requesterUrl,
    cluster,
    async drain(graceMs: number) {
      await broker.drain(graceMs);
      await stopListening();
    },
    async close() {
      // New connections are refused at once (so clients back off and the port is free for a
      // restart) while the open ones are closed in order.
      await Promise.all([
        workerServer.stopAccepting(),
        requesterServer.stopAccepting(),
      ]);
      await broker.close();
      await stopListening();
    },
    finished: Promise.all([workerServer.finished, requesterServer.finished])
      .then(() => {}),
    guardStats() {
      if (!workerServer.stats || !requesterServer.stats) return undefined;
      return {
        worker: workerServer.stats(),
        requester: requesterServer.stats(),
      };
    },
  };
}
