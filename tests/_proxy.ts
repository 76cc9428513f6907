/**
 * A TCP proxy on 127.0.0.1 that tests put between a client and a server to make network faults
 * on purpose: a cut (every connection closed, new ones refused for a while) or a black hole
 * (connections stay open, nothing gets through either way: a silent partition, or a frozen
 * peer as its clients see it).
 *
 * @module
 */

/** One proxy; see the module doc. `await using` closes it and every connection through it. */
export class FaultProxy {
  readonly port: number;
  #listener: Deno.TcpListener;
  #target: { hostname: string; port: number };
  #pairs = new Set<[Deno.TcpConn, Deno.TcpConn]>();
  #refusing = false;
  #blackholed = false;
  #accepting: Promise<void>;
  #tasks = new Set<Promise<void>>();

  constructor(target: { hostname?: string; port: number }) {
    this.#target = {
      hostname: target.hostname ?? "127.0.0.1",
      port: target.port,
    };
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#accepting = this.#accept();
  }

  /** The proxy's address, as a URL with `scheme`. */
  url(scheme: string): string {
    return `${scheme}://127.0.0.1:${this.port}`;
  }

  /** Connections open through the proxy. */
  get connections(): number {
    return this.#pairs.size;
  }

  async #accept(): Promise<void> {
    for await (const inbound of this.#listener) {
      if (this.#refusing) {
        inbound.close();
        continue;
      }
      let outbound: Deno.TcpConn;
      try {
        outbound = await Deno.connect(this.#target);
      } catch {
        inbound.close();
        continue;
      }
      const pair: [Deno.TcpConn, Deno.TcpConn] = [inbound, outbound];
      this.#pairs.add(pair);
      const done = Promise.all([
        this.#pipe(inbound, outbound),
        this.#pipe(outbound, inbound),
      ]).then(() => {
        this.#pairs.delete(pair);
        this.#tasks.delete(done);
      });
      this.#tasks.add(done);
    }
  }

  async #pipe(from: Deno.TcpConn, to: Deno.TcpConn): Promise<void> {
    const buffer = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await from.read(buffer);
        if (n === null) break;
        // Bytes read during a black hole are dropped, as a dead link drops them.
        if (this.#blackholed) continue;
        let off = 0;
        while (off < n) off += await to.write(buffer.subarray(off, n));
      }
    } catch {
      // One side went away: end both.
    }
    try {
      from.close();
    } catch {
      // Closed already.
    }
    // Behind a black hole the other side hears nothing, not even the close.
    if (this.#blackholed) return;
    try {
      to.close();
    } catch {
      // Closed already.
    }
  }

  /** Closes every connection through the proxy and refuses new ones for `ms`. */
  async cut(ms: number): Promise<void> {
    this.#refusing = true;
    this.#closeAll();
    await new Promise((r) => setTimeout(r, ms));
    this.#refusing = false;
  }

  /** From now on nothing gets through, either way, and connections stay open. */
  blackhole(): void {
    this.#blackholed = true;
  }

  /** Ends a black hole: new bytes get through again (what was dropped stays lost). */
  restore(): void {
    this.#blackholed = false;
  }

  #closeAll(): void {
    for (const [a, b] of this.#pairs) {
      for (const c of [a, b]) {
        try {
          c.close();
        } catch {
          // Closed already.
        }
      }
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#refusing = true;
    try {
      this.#listener.close();
    } catch {
      // Closed already.
    }
    this.#closeAll();
    await this.#accepting.catch(() => {});
    await Promise.all(this.#tasks);
  }
}
