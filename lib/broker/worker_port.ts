/**
 * The worker port: accepts worker connections, keeps one link per worker and reads their frames
 * (registration, heartbeats, answers, progress, their own requests for server actions).
 *
 * Its parts, one file each: `worker_link.ts` (writing to one worker, and dropping one that
 * stops reading), `worker_frames.ts` (frame validation) and `worker_envelopes.ts` (what each
 * envelope does).
 *
 * @module
 */

import { upgradeWebSocket } from "../transport/_websocket.ts";
import { Peer } from "./dispatcher.ts";
import { shortId } from "../_id.ts";
import { logger } from "../log.ts";
import { BATCH_ENVELOPES, encodeEnvelope, MessageType } from "../protocol.ts";
import { plainHttp, refuseUpgrade, remoteAddress } from "./http.ts";
import { type BrokerCore, type MessageHandler, VERSION } from "./options.ts";
import { WorkerEnvelopes } from "./worker_envelopes.ts";
import { oversizeFrame, readWorkerFrame } from "./worker_frames.ts";
import { WorkerLink } from "./worker_link.ts";

const log = logger("broker");

/** The worker port's handling; see the module doc. */
export class WorkerPort {
  #core: BrokerCore;
  #token?: string;
  #envelopes: WorkerEnvelopes;
  /** The open worker connections, by client id. */
  #links = new Map<string, WorkerLink>();

  constructor(
    core: BrokerCore,
    options: {
      token?: string;
      messageHandlers?: Record<string, MessageHandler>;
    },
  ) {
    this.#core = core;
    this.#token = options.token;
    this.#envelopes = new WorkerEnvelopes(core, options.messageHandlers);
    this.handle = this.handle.bind(this);
  }

  /** The open worker sockets. */
  sockets(): WebSocket[] {
    return [...this.#links.values()].map((link) => link.socket);
  }

  /** The worker port's request handler. */
  handle(
    req: Request,
    info?: Deno.ServeHandlerInfo,
  ): Response | Promise<Response> {
    const core = this.#core;
    const plain = plainHttp(core, req, "worker");
    if (plain) return plain;
    const refused = refuseUpgrade(
      core,
      req,
      this.#token,
      "worker",
      this.#links.size,
      remoteAddress(info),
    );
    if (refused) return refused;
    // Read before the upgrade: the request object is spent afterwards.
    const address = remoteAddress(info);
    const { socket, response } = upgradeWebSocket(req, {
      idleTimeout: core.options.idleTimeoutSeconds,
    });
    let id = shortId();
    // The registry holds the workers of other servers too, in a cluster.
    while (this.#links.has(id) || core.dispatcher.registry.get(id)) {
      id = shortId();
    }
    const link = new WorkerLink(id, socket, {
      maxBufferedBytes: core.options.maxBufferedBytes,
      onDropped: () => {
        this.#links.delete(id);
        queueMicrotask(() =>
          core.dispatcher.workerLost(worker, "frames are not being read")
        );
      },
    });
    const worker = new Peer(id, address, (frame) => link.send(frame), {
      clock: core.clock,
      defaultConcurrency: core.options.defaultConcurrency,
    });
    socket.onopen = () => {
      this.#links.set(id, link);
      core.metrics.accepted("worker");
      core.metrics.changed();
      core.dispatcher.registry.add(worker);
      socket.send(encodeEnvelope(MessageType.CONNECT, {
        client_id: id,
        status: "connected",
        server_version: VERSION,
        heartbeat_interval: core.options.heartbeatIntervalMs / 1000,
        max_frame_bytes: core.options.maxWorkerFrameBytes,
        [BATCH_ENVELOPES]: true,
        // Additive: lets a requester client that dialled this port by mistake say so.
        port: "worker",
        requester_port: core.ports.requester ?? null,
      }));
      log.info("Worker {id} connected from {address}", {
        id,
        address: worker.address,
      });
      core.dispatcher.pump();
    };
    socket.onmessage = (event) => this.#onWorkerFrame(worker, link, event.data);
    // The guard's framing reports a frame past the runtime's cap (Deno's own closes instead).
    const framed = socket as { onoversize?: unknown };
    if ("onoversize" in framed) {
      framed.onoversize = (bytes: number, head: Uint8Array) =>
        oversizeFrame(this.#envelopes, worker, link, bytes, headText(head));
    }
    let gone = false;
    socket.onclose = (event) => {
      // Deno can report one close twice (the idle timeout giving up, then the socket ending).
      if (gone) return;
      gone = true;
      this.#links.delete(id);
      // A worker that said goodbye sent `disconnect` or closed with 1000, or the server is the
      // one closing. Anything else is a loss an operator wants to see: no close frame at all (a
      // crash, a kill, a cable; Deno reports 0 or 1005, RFC 6455 calls it 1006), or the idle
      // timeout closing a peer that stopped answering pings (1001).
      const graceful = worker.draining || event.code === 1000 || core.closed;
      const fields = {
        id,
        name: worker.name,
        code: event.code === 0 || event.code === 1005 ? 1006 : event.code,
      };
      if (graceful) {
        log.info("Worker {id} ({name}) disconnected: code {code}", fields);
      } else {
        log.warn(
          "Worker {id} ({name}) lost: the connection ended without a goodbye (code {code})",
          fields,
        );
      }
      core.dispatcher.workerLost(
        worker,
        `connection closed (code ${event.code})`,
      );
      core.metrics.changed();
    };
    socket.onerror = () => {};
    return response;
  }

  /** Closes a worker's socket and forgets it (the sweep drops silent workers this way). */
  disconnect(id: string, code: number, reason: string): void {
    const link = this.#links.get(id);
    if (!link) return;
    link.unbatch();
    link.socket.close(code, reason);
    this.#links.delete(id);
  }

  /**
   * Sends an envelope of any type (a custom one too) to one worker, or to all when `clientId`
   * is omitted; returns how many got it.
   */
  sendMessage(type: string, data: unknown, clientId?: string): number {
    const frame = encodeEnvelope(type, data);
    let n = 0;
    for (const [id, link] of this.#links) {
      if (clientId !== undefined && id !== clientId) continue;
      if (link.socket.readyState === WebSocket.OPEN) {
        link.socket.send(frame);
        n++;
      }
    }
    return n;
  }

  #onWorkerFrame(worker: Peer, link: WorkerLink, raw: unknown): void {
    const core = this.#core;
    worker.lastSeen = core.clock.now();
    if (worker.silent) {
      worker.silent = false;
      core.dispatcher.pump();
    }
    readWorkerFrame(this.#envelopes, worker, link, raw);
  }
}

const lenient = new TextDecoder();

/** The start of a frame as text (cut anywhere: a broken last character is replaced). */
function headText(head: Uint8Array): string {
  return lenient.decode(head);
}
