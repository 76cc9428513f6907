/**
 * `deno task start` — the Switchyard server: a worker port, a requester port, and an operator
 * console.
 *
 * @module
 */

import { RUNTIME_FRAME_CAP } from "./lib/transport/_frame_size.ts";
import { DEFAULT_WORKER_FRAME_BYTES } from "./lib/broker/options.ts";
import { STRATEGIES, type Strategy } from "./lib/broker/balancer.ts";
import { runStdinConsole, serverCommand } from "./lib/console.ts";
import {
  consoleMode,
  env,
  FlagError,
  logFormatFlag,
  logLevelFlag,
  numberFlag,
  onStopSignal,
  parseFlags,
  portFlag,
  PROCESS_FLAGS,
  readFlagFile,
  secretFlag,
} from "./lib/_flags.ts";
import { logger, setupLogging } from "./lib/log.ts";
import type { ClusterOptions } from "./lib/cluster/link.ts";
import { validClusterName } from "./lib/cluster/wire.ts";
import { type ServerOptions, startServer } from "./lib/broker/server.ts";
import { createStoreFront } from "./lib/store/front.ts";

const USAGE = `Usage: deno task start [options]

Options:
  --host HOST              interface to listen on (default 0.0.0.0)
  --port N                 worker port; 0 picks a free one (default 8765)
  --requester-port N       requester port; 0 picks a free one (default 8766)
  --strategy NAME          ${STRATEGIES.join(" | ")} (default least_loaded)
  --timeout S              default request deadline in seconds (default 30)
  --max-timeout S          largest deadline a requester may ask for (default 300)
  --heartbeat-interval S   heartbeat interval told to workers (default 10)
  --cleanup-interval S     drop a worker silent this long (default 60)
  --idle-timeout S         WebSocket ping after S/2 idle, close after S (default 30; 0 = off)
  --max-queue N            requests waiting for a free worker (default 1000)
  --queue-timeout S        longest wait for a free worker before "Server busy" (default: deadline)
  --max-attempts N         workers one request may try on failover (default 3)
  --no-worker-grace S      a request no worker offers waits this long for one (default 3)
  --max-in-flight N        requests in flight per requester connection (default 1000)
  --max-frame BYTES        largest requester frame, UTF-8 bytes (default 1048576)
  --max-worker-frame BYTES largest worker frame, UTF-8 bytes (default 66060288; both limits
                           must stay below Deno's 67108864-byte message cap)
  --max-batch N            items in one get_markets batch (default 10000)
  --max-connections N      WebSocket connections per port (default 10000)
  --max-open-connections N TCP connections per port, upgraded or not (default: from the
                           descriptor limit, (ulimit -n - 64) / 6, at most 10000)
  --max-per-address N      TCP connections from one IP address per port (default 256)
  --header-timeout S       time to send a complete request head (default 5)
  --body-timeout S         time to send a whole request body (POST /v1/...) once its head
                           is in (default 10)
  --silence-timeout S      a worker silent this long while holding work gets no new work
                           until it is heard from (default 2; judged every second)
  --stall-timeout S        ... and past this, its retriable requests move to other workers
                           (default 1.5 x heartbeat interval = 15; 0 never)
  --no-guard               bind Deno.serve directly: faster, but no header or body timeout, no
                           per-address limit and no recovery from EMFILE (trusted networks
                           only; see docs/operations.md)
  --max-auth-failures N    wrong tokens per address a minute before HTTP 429 (default 20)
  --non-retriable LIST     actions never re-run after a worker vanished (comma list)
  --worker-token T         token workers must present (or SWITCHYARD_WORKER_TOKEN)
  --requester-token T      token requesters must present (or SWITCHYARD_REQUESTER_TOKEN)
  --store PATH             answer get_market(s) and GET /v1/market from this market store
                           (requester.ts sync) when it holds the range up to the last close;
                           keep what workers bring back in it (docs/store.md; needs --allow-ffi)
  --cert FILE --key FILE   serve wss:// and https:// with this PEM certificate and key
  --cluster URLS           join a cluster over NATS (comma list, e.g. nats://h1:4222,nats://h2:4222);
                           see docs/cluster.md (or SWITCHYARD_CLUSTER)
  --cluster-name NAME      servers of one name are one broker (default switchyard)
  --server-name NAME       this server's name in cluster listings (default host:port)
  --nats-token T           NATS token (or SWITCHYARD_NATS_TOKEN)
  --nats-user U            NATS user (or SWITCHYARD_NATS_USER); password in SWITCHYARD_NATS_PASSWORD
  --nats-creds FILE        NATS credentials file (or SWITCHYARD_NATS_CREDS)
  --nats-ca FILE           PEM CA to trust for tls:// NATS servers (or SWITCHYARD_NATS_CA)
  --nats-cert FILE --nats-key FILE  client certificate for NATS servers that verify clients
  --grace S                on SIGTERM/SIGINT, let in-flight work finish this long (default 10)
  --console                read console commands from stdin even when it is not a terminal
  --no-console             never read stdin (for a server run with &, under systemd, in a container)
  --log-level LEVEL        trace | debug | info | warning | error (default info)
  --log-format FORMAT      text | json (default text)
  -h, --help               this text
`;

function frameFlag(name: string, bytes: number): number {
  if (bytes >= RUNTIME_FRAME_CAP) {
    throw new FlagError(
      `Invalid --${name} ${bytes}: Deno closes a connection on a message of ${RUNTIME_FRAME_CAP} bytes or more before the server sees it, so the limit must be at most ${
        RUNTIME_FRAME_CAP - 1
      }`,
    );
  }
  return bytes;
}

function options(
  args: string[],
): ServerOptions & {
  console: ReturnType<typeof consoleMode>;
  grace: number;
} {
  const { values, positionals } = parseFlags({
    args,
    allowPositionals: true,
    options: {
      host: { type: "string" },
      port: { type: "string" },
      "requester-port": { type: "string" },
      strategy: { type: "string" },
      timeout: { type: "string" },
      "max-timeout": { type: "string" },
      "heartbeat-interval": { type: "string" },
      "cleanup-interval": { type: "string" },
      "idle-timeout": { type: "string" },
      "max-queue": { type: "string" },
      "queue-timeout": { type: "string" },
      "max-attempts": { type: "string" },
      "no-worker-grace": { type: "string" },
      "max-in-flight": { type: "string" },
      "max-frame": { type: "string" },
      "max-worker-frame": { type: "string" },
      "max-batch": { type: "string" },
      "max-connections": { type: "string" },
      "max-open-connections": { type: "string" },
      "max-per-address": { type: "string" },
      "header-timeout": { type: "string" },
      "body-timeout": { type: "string" },
      "no-guard": { type: "boolean" },
      "silence-timeout": { type: "string" },
      "stall-timeout": { type: "string" },
      "max-auth-failures": { type: "string" },
      "non-retriable": { type: "string" },
      "worker-token": { type: "string" },
      "requester-token": { type: "string" },
      cert: { type: "string" },
      key: { type: "string" },
      store: { type: "string" },
      cluster: { type: "string" },
      "cluster-name": { type: "string" },
      "server-name": { type: "string" },
      "nats-token": { type: "string" },
      "nats-user": { type: "string" },
      "nats-creds": { type: "string" },
      "nats-ca": { type: "string" },
      "nats-cert": { type: "string" },
      "nats-key": { type: "string" },
      ...PROCESS_FLAGS,
    },
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  if (positionals.length > 0) {
    throw new FlagError(`Unexpected argument '${positionals[0]}': see --help`);
  }
  const strategy = values.strategy ?? "least_loaded";
  if (!STRATEGIES.includes(strategy as Strategy)) {
    throw new FlagError(
      `Invalid --strategy '${strategy}': expected one of ${
        STRATEGIES.join(", ")
      }`,
    );
  }
  const format = logFormatFlag(values["log-format"]);
  if (Boolean(values.cert) !== Boolean(values.key)) {
    throw new FlagError("--cert and --key go together: give both or neither");
  }
  setupLogging({ level: logLevelFlag(values["log-level"]), format });
  const warn = (message: string) => logger("server").warn(message);
  const seconds = (name: string, fallback: number) =>
    numberFlag(
      name,
      values[name as keyof typeof values] as string | undefined,
      fallback,
      {
        min: 0.001,
      },
    ) * 1000;
  const count = (name: string, fallback: number) =>
    numberFlag(
      name,
      values[name as keyof typeof values] as string | undefined,
      fallback,
      {
        min: 1,
        integer: true,
      },
    );
  const heartbeatIntervalMs = seconds("heartbeat-interval", 10);
  return {
    host: values.host ?? "0.0.0.0",
    port: portFlag("port", values.port, 8765),
    requesterPort: portFlag("requester-port", values["requester-port"], 8766),
    strategy: strategy as Strategy,
    timeoutMs: seconds("timeout", 30),
    maxTimeoutMs: seconds("max-timeout", 300),
    heartbeatIntervalMs,
    cleanupIntervalMs: seconds("cleanup-interval", 60),
    idleTimeoutSeconds: numberFlag("idle-timeout", values["idle-timeout"], 30, {
      integer: true,
    }),
    maxQueue: count("max-queue", 1000),
    queueTimeoutMs: values["queue-timeout"] === undefined
      ? undefined
      : seconds("queue-timeout", 0),
    maxAttempts: count("max-attempts", 3),
    noWorkerGraceMs: numberFlag(
      "no-worker-grace",
      values["no-worker-grace"],
      3,
      { min: 0 },
    ) * 1000,
    maxInFlightPerConnection: count("max-in-flight", 1000),
    maxRequesterFrameBytes: frameFlag(
      "max-frame",
      count("max-frame", 1024 * 1024),
    ),
    maxWorkerFrameBytes: frameFlag(
      "max-worker-frame",
      count("max-worker-frame", DEFAULT_WORKER_FRAME_BYTES),
    ),
    maxBatchItems: count("max-batch", 10_000),
    maxConnections: count("max-connections", 10_000),
    maxOpenConnections: values["max-open-connections"] === undefined
      ? undefined
      : count("max-open-connections", 0),
    maxPerAddress: count("max-per-address", 256),
    headerTimeoutMs: seconds("header-timeout", 5),
    bodyTimeoutMs: seconds("body-timeout", 10),
    guard: !values["no-guard"],
    silenceMs: seconds("silence-timeout", 2),
    stallTimeoutMs: values["stall-timeout"] === "0"
      ? 0
      : seconds("stall-timeout", 1.5 * heartbeatIntervalMs / 1000),
    maxAuthFailures: count("max-auth-failures", 20),
    nonRetriableActions: values["non-retriable"]?.split(",").map((s) =>
      s.trim()
    ).filter(Boolean),
    workerToken: secretFlag(
      "worker-token",
      values["worker-token"],
      "SWITCHYARD_WORKER_TOKEN",
      warn,
    ),
    requesterToken: secretFlag(
      "requester-token",
      values["requester-token"],
      "SWITCHYARD_REQUESTER_TOKEN",
      warn,
    ),
    cert: readFlagFile("cert", values.cert),
    key: readFlagFile("key", values.key),
    marketFront: values.store === undefined
      ? undefined
      : createStoreFront(values.store),
    grace: seconds("grace", 10),
    console: consoleMode(values),
    cluster: clusterOptions(values, warn),
  };
}

function clusterOptions(
  values: Record<string, string | boolean | undefined>,
  warn: (message: string) => void,
): ClusterOptions | undefined {
  const flag = (name: string) => values[name] as string | undefined;
  const urls = flag("cluster") ?? env("SWITCHYARD_CLUSTER");
  if (urls === undefined) {
    for (
      const name of ["cluster-name", "server-name", "nats-token", "nats-user"]
    ) {
      if (flag(name) !== undefined) {
        throw new FlagError(`--${name} needs --cluster`);
      }
    }
    return undefined;
  }
  const servers = urls.split(",").map((s) => s.trim()).filter(Boolean);
  for (const url of servers) {
    if (!/^(nats|tls):\/\/[^\s/]+$/.test(url)) {
      throw new FlagError(
        `Invalid --cluster URL '${url}': expected nats://host:port or tls://host:port`,
      );
    }
  }
  if (servers.length === 0) {
    throw new FlagError("--cluster needs at least one NATS URL");
  }
  const name = flag("cluster-name") ?? "switchyard";
  if (!validClusterName(name)) {
    throw new FlagError(
      `Invalid --cluster-name '${name}': use 1 to 64 letters, digits, '-' or '_'`,
    );
  }
  if (Boolean(flag("nats-cert")) !== Boolean(flag("nats-key"))) {
    throw new FlagError("--nats-cert and --nats-key go together");
  }
  const creds = flag("nats-creds") ?? env("SWITCHYARD_NATS_CREDS");
  const ca = flag("nats-ca") ?? env("SWITCHYARD_NATS_CA");
  return {
    servers,
    name,
    serverName: flag("server-name"),
    token: secretFlag(
      "nats-token",
      flag("nats-token"),
      "SWITCHYARD_NATS_TOKEN",
      warn,
    ),
    user: flag("nats-user") ?? env("SWITCHYARD_NATS_USER"),
    password: env("SWITCHYARD_NATS_PASSWORD"),
    credentials: readFlagFile("nats-creds", creds),
    tlsCa: readFlagFile("nats-ca", ca),
    tlsCert: readFlagFile("nats-cert", flag("nats-cert")),
    tlsKey: readFlagFile("nats-key", flag("nats-key")),
  };
}

async function main(): Promise<void> {
  let opts;
  try {
    opts = options(Deno.args);
  } catch (error) {
    console.error(`server: ${(error as Error).message}`);
    Deno.exit(2);
  }
  const log = logger("server");
  let server;
  try {
    server = startServer(opts);
  } catch (error) {
    console.error(`server: ${(error as Error).message}`);
    Deno.exit(1);
  }
  const stop = async (why: string) => {
    log.info("{why}: draining for up to {s} s", { why, s: opts.grace / 1000 });
    await server.drain(opts.grace);
    log.info("Stopped");
    Deno.exit(0);
  };
  onStopSignal(stop);
  if (opts.console === "background") {
    log.info(
      "Started in the background: no console (--no-console says so and silences this line)",
    );
  }
  if (opts.console === "on") {
    await runStdinConsole(
      (line, write) => serverCommand(server.broker, line, write),
      { prompt: "server> " },
    );
    // stdin ended or `quit`: a console user is done with the server.
    await stop("Console quit");
  }
  try {
    await server.finished;
  } catch (error) {
    // Not expected (the ports restart their own listeners), but never an unexplained exit.
    log.error("Server stopped: {error}", { error });
    Deno.exit(1);
  }
}

if (import.meta.main) await main();
