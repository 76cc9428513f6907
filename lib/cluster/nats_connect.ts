/**
 * Connects to NATS like `@nats-io/transport-node`'s `connect`, with one repair: every socket the
 * transport opens keeps an `"error"` listener for its whole life.
 *
 * The stock transport calls `removeAllListeners()` on its socket between phases (after the TCP
 * connect, after reading `INFO`, on close), and the raw socket under a TLS upgrade keeps none at
 * all. A connection reset that lands in one of those gaps is an `"error"` event nobody hears,
 * which Node semantics turn into an uncaught exception: it would take the whole server down. The
 * transport learns of the failure anyway from the socket's `"close"`, so the kept listener only
 * has to hear the error.
 *
 * @module
 */

import {
  NatsConnectionImpl,
  setTransportFactory,
} from "npm:@nats-io/transport-node@3.4.0";
import type {
  NatsConnection,
  NodeConnectionOptions,
} from "npm:@nats-io/transport-node@3.4.0";
import {
  nodeResolveHost,
  NodeTransport,
} from "npm:@nats-io/transport-node@3.4.0/lib/node_transport.js";

interface Emitter {
  on(event: string, listener: (...args: unknown[]) => void): unknown;
  removeAllListeners(event?: string): unknown;
}

const heard = () => {};
const kept = new WeakSet<Emitter>();

/**
 * Gives `socket` an `"error"` listener that survives `removeAllListeners()`. Returns `socket`.
 */
export function keepErrorsHeard<T extends Emitter>(socket: T): T {
  if (kept.has(socket)) return socket;
  kept.add(socket);
  socket.on("error", heard);
  const removeAll = socket.removeAllListeners;
  socket.removeAllListeners = function (this: T, event?: string) {
    const result = event === undefined
      ? removeAll.call(this)
      : removeAll.call(this, event);
    if (event === undefined || event === "error") this.on("error", heard);
    return result;
  };
  return socket;
}

class HeardTransport extends NodeTransport {
  override dial(hp: { hostname: string; port: number }) {
    return super.dial(hp).then(keepErrorsHeard);
  }

  override tlsFirst(hp: { hostname: string; port: number }) {
    return super.tlsFirst(hp).then(keepErrorsHeard);
  }

  override startTLS() {
    return super.startTLS().then(keepErrorsHeard);
  }
}

/** `connect` of `@nats-io/transport-node`, over sockets whose errors are always heard. */
export function connectNats(
  options: NodeConnectionOptions,
): Promise<NatsConnection> {
  setTransportFactory({
    factory: () => new HeardTransport(),
    dnsResolveFn: nodeResolveHost,
  });
  return NatsConnectionImpl.connect(options);
}
