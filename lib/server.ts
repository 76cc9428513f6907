/**
 * Binds a broker's two handlers to two ports.
 *
 * @module
 */

import { Broker, type BrokerOptions } from "./broker.ts";
import { logger } from "./log.ts";
import type { ClusterLink, ClusterOptions } from "./cluster/link.ts";

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
}

/** A running server. */
export interface RunningServer {
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
  /** Resolves once both listeners have closed. */
  finished: Promise<void>;
  /** With `cluster`: the link, once set up (it connects in the background). */
  cluster?: Promise<ClusterLink>;
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
  const tls = options.cert && options.key
    ? { cert: options.cert, key: options.key }
    : {};
  const listen = (port: number, handler: Deno.ServeHandler) =>
    Deno.serve({ hostname: host, port, onListen: () => {}, ...tls }, handler);
  const workerServer = listen(options.port ?? 8765, broker.handleWorker);
  let requesterServer: Deno.HttpServer<Deno.NetAddr>;
  try {
    requesterServer = listen(
      options.requesterPort ?? 8766,
      broker.handleRequester,
    );
  } catch (error) {
    void workerServer.shutdown();
    void broker.close();
    throw error;
  }
  const scheme = options.cert ? "wss" : "ws";
  const shown = host === "0.0.0.0" || host === "::" ? "localhost" : host;
  const port = workerServer.addr.port;
  const requesterPort = requesterServer.addr.port;
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
      await broker.close();
      await stopListening();
    },
    finished: Promise.all([workerServer.finished, requesterServer.finished])
      .then(() => {}),
  };
}
