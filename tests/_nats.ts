/**
 * Real `nats-server` processes for the cluster tests: one node, or a cluster of nodes, each
 * listening on 127.0.0.1 only, on free ports.
 *
 * @module
 */

/** The `nats-server` binary, or undefined when it is not installed. */
export function natsServerPath(): string | undefined {
  for (
    const dir of (Deno.env.get("PATH") ?? "").split(":").concat([
      "/usr/sbin",
      "/usr/bin",
    ])
  ) {
    const path = `${dir}/nats-server`;
    try {
      if (Deno.statSync(path).isFile) return path;
    } catch {
      // Not here.
    }
  }
  return undefined;
}

/** Why the cluster tests are skipped, or undefined when they can run. */
export const NATS_MISSING = natsServerPath()
  ? undefined
  : "nats-server is not installed (apt-get install nats-server): cluster tests skipped";

if (NATS_MISSING) console.warn(NATS_MISSING);

/** A free TCP port on 127.0.0.1 (the system picks it; it is free when this returns). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** One running NATS node. */
export class NatsNode {
  readonly port: number;
  readonly clusterPort: number;
  readonly url: string;
  #config: string;
  #child: Deno.ChildProcess | undefined;

  constructor(
    port: number,
    clusterPort: number,
    routes: number[],
    extra = "",
  ) {
    this.port = port;
    this.clusterPort = clusterPort;
    this.url = `nats://127.0.0.1:${port}`;
    // Loopback only, for clients and for routes; no monitoring port.
    const cluster = routes.length === 0 ? "" : `
cluster {
  name: "test"
  listen: "127.0.0.1:${clusterPort}"
  no_advertise: true
  routes: [${routes.map((p) => `"nats-route://127.0.0.1:${p}"`).join(", ")}]
}`;
    this.#config = Deno.makeTempFileSync({ suffix: ".conf" });
    Deno.writeTextFileSync(
      this.#config,
      `listen: "127.0.0.1:${port}"\nmax_payload: 8MB\n${extra}\n${cluster}\n`,
    );
  }

  /** Starts the node and resolves once it accepts connections. */
  async start(): Promise<void> {
    this.#child = new Deno.Command(natsServerPath()!, {
      args: ["-c", this.#config],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const until = Date.now() + 10_000;
    while (true) {
      try {
        const conn = await Deno.connect({
          hostname: "127.0.0.1",
          port: this.port,
        });
        conn.close();
        return;
      } catch (error) {
        if (Date.now() > until) {
          throw new Error(
            `nats-server on port ${this.port} did not start: ${error}`,
          );
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  /** Stops the node (SIGKILL by default, as a crash) and waits for it to exit. */
  async stop(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    if (!child) return;
    try {
      child.kill(signal);
    } catch {
      // Already gone.
    }
    await child.status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
    try {
      Deno.removeSync(this.#config);
    } catch {
      // Already gone.
    }
  }
}

/** A set of NATS nodes: one alone, or `n` routed into one NATS cluster. */
export class NatsCluster {
  readonly nodes: NatsNode[];

  /** `extra`: more nats-server configuration, such as an `authorization` block. */
  constructor(n = 1, extra = "") {
    const ports = Array.from({ length: n }, () => freePort());
    const clusterPorts = Array.from({ length: n }, () => freePort());
    this.nodes = ports.map((port, i) =>
      new NatsNode(
        port,
        clusterPorts[i],
        n === 1 ? [] : clusterPorts.filter((_, j) => j !== i),
        extra,
      )
    );
  }

  get urls(): string[] {
    return this.nodes.map((n) => n.url);
  }

  /** Starts every node; when one does not come up, stops them all and throws. */
  async start(): Promise<this> {
    const started = await Promise.allSettled(this.nodes.map((n) => n.start()));
    const failed = started.find((s) => s.status === "rejected");
    if (failed) {
      await this[Symbol.asyncDispose]();
      throw failed.reason;
    }
    return this;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.nodes.map((n) => n[Symbol.asyncDispose]()));
  }
}
