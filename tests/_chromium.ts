/**
 * A headless Chromium driven over the DevTools protocol on a WebSocket, just enough for the
 * dashboard test: open a page, evaluate expressions, wait for a condition, take a screenshot,
 * collect page errors. (playwright-core and puppeteer-core run on Deno only with --allow-all:
 * they read /proc paths at import time that the test task's permissions do not cover.)
 *
 * @module
 */

import { WebSocket } from "../lib/transport/_ws.ts";

/** Flags for a quiet, sandbox-free headless browser with a fresh profile. */
export const CHROMIUM_FLAGS: readonly string[] = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

// deno-lint-ignore no-explicit-any
type Json = any;

/** A Chromium process and the DevTools connection to it. */
export class Chromium {
  #child: Deno.ChildProcess;
  #socket: WebSocket;
  #profile: string;
  #nextId = 1;
  #pending = new Map<
    number,
    { resolve: (v: Json) => void; reject: (e: Error) => void }
  >();
  #listeners = new Map<string, ((params: Json) => void)[]>();
  #closed: Promise<void>;

  private constructor(
    child: Deno.ChildProcess,
    socket: WebSocket,
    profile: string,
  ) {
    this.#child = child;
    this.#socket = socket;
    this.#profile = profile;
    const closed = Promise.withResolvers<void>();
    this.#closed = closed.promise;
    socket.on("message", (data: Uint8Array) => {
      const message = JSON.parse(new TextDecoder().decode(data));
      if (message.id !== undefined) {
        const waiter = this.#pending.get(message.id);
        this.#pending.delete(message.id);
        if (message.error) {
          waiter?.reject(new Error(`DevTools: ${message.error.message}`));
        } else waiter?.resolve(message.result);
        return;
      }
      const key = `${message.sessionId ?? ""} ${message.method}`;
      for (const listener of this.#listeners.get(key) ?? []) {
        listener(message.params);
      }
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      for (const waiter of this.#pending.values()) {
        waiter.reject(new Error("DevTools connection closed"));
      }
      this.#pending.clear();
      closed.resolve();
    });
  }

  /** Starts `executable` with a fresh profile and connects to it; throws after `timeoutMs`. */
  static async launch(
    executable: string,
    timeoutMs = 20_000,
  ): Promise<Chromium> {
    const profile = await Deno.makeTempDir({ prefix: "switchyard-chromium-" });
    const child = new Deno.Command(executable, {
      args: [
        ...CHROMIUM_FLAGS,
        `--user-data-dir=${profile}`,
        "--remote-debugging-port=0",
        "about:blank",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      // Chromium writes the port it picked (and the browser target's path) into the profile.
      const until = Date.now() + timeoutMs;
      let endpoint: string | undefined;
      while (!endpoint) {
        try {
          const [port, path] = (await Deno.readTextFile(
            `${profile}/DevToolsActivePort`,
          )).split("\n");
          if (port && path) endpoint = `ws://127.0.0.1:${port}${path}`;
        } catch {
          // Not written yet.
        }
        if (!endpoint) {
          if (Date.now() > until) {
            throw new Error(`Chromium did not start within ${timeoutMs} ms`);
          }
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      }
      const socket = new WebSocket(endpoint, { perMessageDeflate: false });
      await new Promise<void>((resolve, reject) => {
        socket.once("open", () => resolve());
        socket.once("error", reject);
      });
      return new Chromium(child, socket, profile);
    } catch (error) {
      child.kill("SIGKILL");
      await child.status;
      await Deno.remove(profile, { recursive: true }).catch(() => {});
      throw error;
    }
  }

  /** Sends a DevTools command, to a page's session when `sessionId` is given. */
  send(method: string, params: Json = {}, sessionId?: string): Promise<Json> {
    const id = this.#nextId++;
    const { promise, resolve, reject } = Promise.withResolvers<Json>();
    this.#pending.set(id, { resolve, reject });
    this.#socket.send(JSON.stringify({ id, method, params, sessionId }));
    return promise;
  }

  /** Calls `listener` on every `method` event (of a page's session when given). */
  on(method: string, listener: (params: Json) => void, sessionId = ""): void {
    const key = `${sessionId} ${method}`;
    this.#listeners.set(key, [...(this.#listeners.get(key) ?? []), listener]);
  }

  /** Opens a new tab of `width` × `height` CSS pixels. */
  async newPage(width = 1280, height = 1000): Promise<Page> {
    const { targetId } = await this.send("Target.createTarget", {
      url: "about:blank",
    });
    const { sessionId } = await this.send("Target.attachToTarget", {
      targetId,
      flatten: true,
    });
    const page = new Page(this, sessionId);
    await page.init(width, height);
    return page;
  }

  /** Closes the browser, its connection and its profile. */
  async close(): Promise<void> {
    await this.send("Browser.close").catch(() => {});
    const exited = await Promise.race([
      this.#child.status.then(() => true),
      new Promise<false>((resolve) => {
        const t = setTimeout(() => resolve(false), 5000);
        this.#child.status.finally(() => clearTimeout(t));
      }),
    ]);
    if (!exited) {
      this.#child.kill("SIGKILL");
      await this.#child.status;
    }
    this.#socket.terminate();
    await this.#closed;
    await Deno.remove(this.#profile, { recursive: true }).catch(() => {});
  }

  /** Same as `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** One tab. */
export class Page {
  #browser: Chromium;
  #session: string;
  /** Uncaught exceptions in the page, as text. */
  readonly errors: string[] = [];

  constructor(browser: Chromium, sessionId: string) {
    this.#browser = browser;
    this.#session = sessionId;
  }

  #send(method: string, params: Json = {}): Promise<Json> {
    return this.#browser.send(method, params, this.#session);
  }

  /** Sets the viewport and starts listening for page errors. */
  async init(width: number, height: number): Promise<void> {
    this.#browser.on("Runtime.exceptionThrown", (p) => {
      const d = p.exceptionDetails;
      this.errors.push(d.exception?.description ?? d.text);
    }, this.#session);
    await this.#send("Runtime.enable");
    await this.#send("Page.enable");
    await this.#send("Emulation.setDeviceMetricsOverride", {
      width,
      height,
      deviceScaleFactor: 1,
      mobile: false,
    });
  }

  /** Navigates and waits for the load event; resolves with the final URL. */
  async goto(url: string, timeoutMs = 15_000): Promise<string> {
    const loaded = Promise.withResolvers<void>();
    this.#browser.on(
      "Page.loadEventFired",
      () => loaded.resolve(),
      this.#session,
    );
    const result = await this.#send("Page.navigate", { url });
    if (result.errorText) {
      throw new Error(`Cannot open ${url}: ${result.errorText}`);
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        loaded.promise,
        new Promise((_, reject) => {
          timer = setTimeout(
            () =>
              reject(new Error(`${url} did not load within ${timeoutMs} ms`)),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
    return await this.evaluate("location.href");
  }

  /** The value of a JavaScript expression in the page (awaited when it is a promise). */
  async evaluate<T = Json>(expression: string): Promise<T> {
    const { result, exceptionDetails } = await this.#send("Runtime.evaluate", {
      expression,
      returnByValue: true,
      awaitPromise: true,
    });
    if (exceptionDetails) {
      throw new Error(
        `In the page: ${
          exceptionDetails.exception?.description ?? exceptionDetails.text
        }`,
      );
    }
    return result.value as T;
  }

  /** Waits until `expression` is truthy in the page; throws after `timeoutMs`. */
  async waitFor(expression: string, timeoutMs = 10_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!(await this.evaluate(`!!(${expression})`))) {
      if (Date.now() > until) {
        throw new Error(
          `Timed out after ${timeoutMs} ms waiting for: ${expression}`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }

  /** Saves a PNG of the whole page to `path`. */
  async screenshot(path: string): Promise<void> {
    const { data } = await this.#send("Page.captureScreenshot", {
      format: "png",
      captureBeyondViewport: true,
    });
    await Deno.writeFile(
      path,
      Uint8Array.from(atob(data), (c) => c.charCodeAt(0)),
    );
  }
}
