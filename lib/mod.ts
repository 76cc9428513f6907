/**
 * Switchyard: a WebSocket broker that routes requests to a pool of workers, with Chinese market
 * data (ETF, stock and index K-lines) as its flagship workload.
 *
 * The pieces: {@linkcode startServer} (or {@linkcode Broker} for your own listeners), a
 * {@linkcode Worker} that serves actions, a {@linkcode RequesterClient} that sends commands, and
 * {@linkcode createMarketService} for the market-data actions.
 *
 * @example A server, a worker with a custom action, and a requester, all in one process
 * ```ts
 * import { RequesterClient, startServer, Worker } from "./mod.ts";
 *
 * const server = startServer({ host: "127.0.0.1", port: 0, requesterPort: 0, sweepIntervalMs: 0 });
 * const worker = new Worker({ url: server.workerUrl, name: "doc" });
 * worker.registerAction("double", (params) => (params as { n: number }).n * 2);
 * const running = worker.start();
 * await worker.ready();
 *
 * const client = new RequesterClient(server.requesterUrl);
 * await client.connect();
 * const answer = await client.request("double", { n: 21 });
 * if (answer.data !== 42) throw new Error("unexpected answer");
 *
 * await client.close();
 * await worker.stop();
 * await running;
 * await server.close();
 * ```
 *
 * @module
 */

export { startServer } from "./broker/server.ts";
export { Broker, VERSION } from "./broker/broker.ts";
export { Worker, WORKER_VERSION } from "./worker/worker_client.ts";
export { RequesterClient } from "./requester/requester_client.ts";
export {
  Balancer,
  loadScore,
  rendezvousOrder,
  STRATEGIES,
} from "./broker/balancer.ts";
export { Backoff } from "./backoff.ts";
export { Dispatcher } from "./broker/dispatcher.ts";
export { LocalRegistry } from "./broker/registry.ts";
export { calculate } from "./broker/server_actions.ts";
export {
  ConnectionClosedError,
  ErrorCode,
  InvalidParamsError,
  NO_WORKERS_TEXT,
  NoWorkersError,
  ProtocolError,
  RequestTimeoutError,
  ServerBusyError,
  SwitchyardError,
  TIMEOUT_TEXT,
  UnauthorizedError,
  WorkerError,
  WrongPortError,
} from "./errors.ts";
export {
  decodeEnvelope,
  encodeEnvelope,
  MessageType,
  parseRequesterFrame,
} from "./protocol.ts";
export { setupLogging } from "./log.ts";
export { Metrics } from "./broker/metrics.ts";
export { createMarketService, parseProviderList } from "./market/mod.ts";

export type { ActionContext, ActionHandler } from "./action.ts";
export type { RunningServer, ServerOptions } from "./broker/server.ts";
export type { GuardStats } from "./transport/guard.ts";
export type {
  BrokerOptions,
  BrokerStats,
  MessageHandler,
} from "./broker/broker.ts";
export type { ClusterLink, ClusterOptions } from "./cluster/link.ts";
export type {
  ClusterServer,
  ClusterStatus,
  ClusterWorker,
} from "./cluster/status.ts";
export type {
  WorkerMessageHandler,
  WorkerOptions,
  WorkerStatus,
} from "./worker/worker_client.ts";
export type {
  BatchStream,
  RequesterClientOptions,
  RequestOptions,
  StreamedItem,
} from "./requester/requester_client.ts";
export type {
  BalancerOptions,
  Strategy,
  WorkerLoad,
} from "./broker/balancer.ts";
export type { BackoffOptions } from "./backoff.ts";
export type {
  DispatcherOptions,
  Outcome,
  Peer,
  Progress,
  SubmitOptions,
} from "./broker/dispatcher.ts";
export type { CancelSignal } from "./_cancel.ts";
export type { MarketFront } from "./broker/market_front.ts";
export type {
  Clock,
  WorkerInfo,
  WorkerRecord,
  WorkerRegistration,
  WorkerRegistry,
} from "./broker/registry.ts";
export type {
  Envelope,
  RequesterAnswer,
  RequesterLimits,
  RequesterRequest,
  ResponseData,
} from "./protocol.ts";
export type { LoggingOptions } from "./log.ts";
export type {
  AnswerCounts,
  BatchTracker,
  BatchView,
  MetricsOptions,
  MetricsSource,
  PortName,
  RecentError,
  RefusalReason,
  Timeline,
} from "./broker/metrics.ts";
export type {
  UpstreamHost as WorkerUpstreamHost,
  UpstreamStatus as WorkerUpstreamStatus,
} from "./upstream_status.ts";
export type { ConnectOptions } from "./transport/_connect.ts";
export type {
  Adjust,
  Bar,
  BreakerOptions,
  Clock as MarketClock,
  CookieJar,
  DayPeriod,
  HostStatus,
  ListedSymbol,
  MarketErrorCode,
  MarketFailure,
  MarketParams,
  MarketResult,
  MarketService,
  MarketServiceOptions,
  MarketStats,
  MarketSuccess,
  MinutePeriod,
  Period,
  SnapshotPage,
  SnapshotResult,
  SnapshotRow,
  SymbolListResult,
  SymbolType,
  UpstreamStatus,
} from "./market/mod.ts";
