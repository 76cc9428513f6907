// Opening handshakes on both ends, over raw sockets. The server side: each probe is a request
// head written by hand to a real port, and the answer read back whole (RFC 6455 §4.2, RFC 9112).
// The client side: `connectWebSocket` against a scripted server that answers each probe's 101
// (RFC 6455 §4.1).

import assert from "node:assert/strict";
import { connectWebSocket } from "../lib/transport/_ws_client.ts";
import { Guard } from "../lib/transport/guard.ts";
import { upgradeWebSocket } from "../lib/transport/_websocket.ts";
import { acceptKey } from "../lib/transport/_ws_frame.ts";
import { concat, frameHeader, writeAll } from "./_frames.ts";
import { startTestServer } from "./_helpers.ts";

const encoder = new TextEncoder();
/** Bytes as text, one character per byte (TextDecoder's "latin1" is windows-1252). */
function bytesText(bytes: Uint8Array): string {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return text;
}
const KEY = "dGhlIHNhbXBsZSBub25jZQ==";

/** Our 101, byte for byte: a request that gets it took the guard's in-process path. */
const OUR_101 = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" +
  `Connection: Upgrade\r\nSec-WebSocket-Accept: ${await acceptKey(
    KEY,
  )}\r\n\r\n`;

/** A head of the lines given, ending in CRLF CRLF. */
function head(...lines: string[]): string {
  return lines.join("\r\n") + "\r\n\r\n";
}

/** The header lines of a valid upgrade, each replaceable. */
function upgradeLines(
  replace: Record<string, string | undefined> = {},
): string[] {
  const fields: Record<string, string | undefined> = {
    Host: "127.0.0.1",
    Upgrade: "websocket",
    Connection: "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
    ...replace,
  };
  return Object.entries(fields).filter(([, v]) => v !== undefined).map((
    [k, v],
  ) => `${k}: ${v}`);
}

/** A masked client frame (key 1 2 3 4), or an unmasked one. */
function clientFrame(opcode: number, payload: Uint8Array, masked = true) {
  const key = masked ? [1, 2, 3, 4] : undefined;
  const body = payload.map((b, i) => key ? b ^ key[i % 4] : b);
  return concat([frameHeader(true, opcode, payload.length, key), body]);
}

/** Sends `bytes` and reads everything until the server closes (bounded: 10 s). */
async function exchange(
  port: number,
  bytes: Uint8Array | string,
  then?: (conn: Deno.Conn, sofar: () => string) => Promise<void>,
): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await writeAll(
    conn,
    typeof bytes === "string" ? encoder.encode(bytes) : bytes,
  );
  let text = "";
  const timer = setTimeout(() => conn.close(), 10_000);
  const reading = (async () => {
    const buffer = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buffer).catch(() => null);
      if (n === null) break;
      text += bytesText(buffer.subarray(0, n));
    }
  })();
  await then?.(conn, () => text);
  await reading;
  clearTimeout(timer);
  try {
    conn.close();
  } catch {
    // Closed by the timer.
  }
  return text;
}

/** Waits until `done()` holds, looking every few ms. */
async function until(done: () => boolean): Promise<void> {
  while (!done()) await new Promise((r) => setTimeout(r, 5));
}

function statusOf(answer: string): string {
  return answer.slice(0, answer.indexOf("\r\n"));
}

Deno.test("handshake - a version other than 13 gets 426 with Sec-WebSocket-Version: 13", async () => {
  await using server = startTestServer();
  for (const version of ["8", "14", undefined, "13, 8"]) {
    const answer = await exchange(
      server.requesterPort,
      head(
        "GET / HTTP/1.1",
        ...upgradeLines({ "Sec-WebSocket-Version": version }),
      ),
    );
    assert.equal(statusOf(answer), "HTTP/1.1 426 Upgrade Required", version);
    assert.match(answer, /\r\nSec-WebSocket-Version: 13\r\n/);
  }
});

Deno.test("handshake - an upgrade without Connection: upgrade, or not a GET, or in HTTP/1.0, is refused 400", async () => {
  await using server = startTestServer();
  const probes: [string, string[], RegExp][] = [
    ["GET / HTTP/1.1", upgradeLines({ Connection: undefined }), /Connection/],
    [
      "GET / HTTP/1.1",
      upgradeLines({ Connection: "keep-alive" }),
      /Connection/,
    ],
    ["POST / HTTP/1.1", upgradeLines(), /GET/],
    ["GET / HTTP/1.0", upgradeLines(), /HTTP\/1\.1/],
    ["GET / HTTP/1.1", upgradeLines({ "Sec-WebSocket-Key": "short" }), /Key/],
  ];
  for (const [line, fields, why] of probes) {
    const answer = await exchange(server.port, head(line, ...fields));
    assert.equal(statusOf(answer), "HTTP/1.1 400 Bad Request", line);
    assert.match(answer, why);
  }
  // Several tokens, in any case, are fine.
  const answer = await exchange(
    server.port,
    head(
      "GET / HTTP/1.1",
      ...upgradeLines({ Connection: "keep-alive, UPGRADE" }),
    ),
    async (conn, sofar) => {
      await until(() => sofar().includes("\r\n\r\n"));
      await writeAll(conn, clientFrame(8, new Uint8Array([3, 232])));
    },
  );
  assert.ok(answer.startsWith(OUR_101));
});

Deno.test("handshake - heads RFC 9112 refuses get 400: two Host headers, HTTP/2.0, whitespace before a colon, 300 headers, none at all", async () => {
  await using server = startTestServer();
  const many = Array.from({ length: 300 }, (_, i) => `X-H${i}: ${i}`);
  const probes: [string, RegExp][] = [
    [head("GET / HTTP/1.1", "Host: a", ...upgradeLines()), /Host/],
    [head("GET / HTTP/2.0", ...upgradeLines()), /request line/],
    [head("GET / HTTP/1.1", "Host : a"), /[Ww]hitespace before the colon/],
    [head("GET / HTTP/1.1", ...upgradeLines(), ...many), /Too many header/],
    [head("GET / HTTP/1.1", "X-A: 1"), /No Host/],
    [head("GET / HTTP/1.1", "Host: a", " folded"), /Folded/],
    [head("GET  / HTTP/1.1", "Host: a"), /request line/],
  ];
  for (const [probe, why] of probes) {
    for (const port of [server.port, server.requesterPort]) {
      const answer = await exchange(port, probe);
      assert.equal(statusOf(answer), "HTTP/1.1 400 Bad Request", probe);
      assert.match(answer, why);
    }
  }
});

Deno.test("handshake - an upgrade with a body is refused 400 and the body is never framed", async () => {
  await using server = startTestServer();
  const ping = clientFrame(9, encoder.encode("body"));
  const withLength = concat([
    encoder.encode(
      head(
        "GET / HTTP/1.1",
        ...upgradeLines(),
        `Content-Length: ${ping.length}`,
      ),
    ),
    ping,
  ]);
  const chunked = head(
    "GET / HTTP/1.1",
    ...upgradeLines(),
    "Transfer-Encoding: chunked",
  ) + "4\r\nabcd\r\n0\r\n\r\n";
  for (const probe of [withLength, chunked]) {
    const answer = await exchange(server.requesterPort, probe);
    assert.equal(statusOf(answer), "HTTP/1.1 400 Bad Request");
    assert.match(answer, /no body/);
    assert.doesNotMatch(answer, /101/);
  }
});

Deno.test("handshake - frames sent in the same write as the upgrade request are refused, never framed", async () => {
  await using server = startTestServer();
  const answer = await exchange(
    server.requesterPort,
    concat([
      encoder.encode(head("GET / HTTP/1.1", ...upgradeLines())),
      clientFrame(9, encoder.encode("early")),
    ]),
  );
  assert.equal(statusOf(answer), "HTTP/1.1 400 Bad Request");
  assert.match(answer, /before the WebSocket handshake completed/);
  assert.doesNotMatch(answer, /early/);
});

Deno.test("handshake - frames that arrive while the port decides are refused; frames after the 101 are read", async () => {
  const asked = Promise.withResolvers<void>();
  const go = Promise.withResolvers<void>();
  const guard = new Guard({
    hostname: "127.0.0.1",
    port: 0,
    target: () => 1,
    secret: "s",
    async handleUpgrade(req) {
      asked.resolve();
      await go.promise;
      const { socket, response } = upgradeWebSocket(req);
      socket.onmessage = (event) => socket.send(`echo ${event.data}`);
      return response;
    },
  });
  try {
    const early = exchange(
      guard.port,
      head("GET / HTTP/1.1", ...upgradeLines()),
      async (conn) => {
        await asked.promise;
        await writeAll(conn, clientFrame(9, encoder.encode("early")));
        // On loopback the bytes wait in the server's socket once the write returns; a few
        // turns of its event loop let the waiting read take them before the port answers.
        for (let i = 0; i < 5; i++) await new Promise((r) => setTimeout(r, 5));
        go.resolve();
      },
    );
    const answer = await early;
    assert.equal(statusOf(answer), "HTTP/1.1 400 Bad Request");
    assert.doesNotMatch(answer, /early/);
    // The control: the same frames after the 101 are read as frames.
    const later = await exchange(
      guard.port,
      head("GET / HTTP/1.1", ...upgradeLines()),
      async (conn, sofar) => {
        await until(() => sofar().includes("\r\n\r\n"));
        await writeAll(conn, clientFrame(1, encoder.encode("late")));
        await until(() => sofar().includes("echo late"));
        await writeAll(conn, clientFrame(8, new Uint8Array([3, 232])));
      },
    );
    assert.ok(later.startsWith(OUR_101));
    assert.match(later, /echo late/);
  } finally {
    await guard.close();
  }
});

Deno.test("handshake - a head with lines ending in LF alone gets 400 at once, not a header timeout", async () => {
  await using server = startTestServer({ headerTimeoutMs: 60_000 });
  const answer = await exchange(
    server.requesterPort,
    "GET / HTTP/1.1\nHost: a\nUpgrade: websocket\n\n",
  );
  assert.equal(statusOf(answer), "HTTP/1.1 400 Bad Request");
  assert.match(answer, /CRLF/);
});

Deno.test("handshake - Upgrade: WebSocket in any case, and an absolute-form target, take the same in-process path as lowercase", async () => {
  await using server = startTestServer();
  const probes = [
    head("GET / HTTP/1.1", ...upgradeLines()),
    head("GET / HTTP/1.1", ...upgradeLines({ Upgrade: "WebSocket" })),
    head("GET / HTTP/1.1", ...upgradeLines({ Upgrade: "WEBSOCKET" })),
    head(
      "GET / HTTP/1.1",
      ...upgradeLines({ Upgrade: undefined }),
      "UPGRADE: websocket",
    ),
    head(
      `GET http://127.0.0.1:${server.requesterPort}/ HTTP/1.1`,
      ...upgradeLines(),
    ),
  ];
  for (const probe of probes) {
    // An unmasked frame: our framing fails the connection with 1002 (Deno's own WebSocket
    // would take it), so the close proves which path the upgrade took.
    const answer = await exchange(
      server.requesterPort,
      probe,
      async (conn, sofar) => {
        await until(() => sofar().includes("\r\n\r\n"));
        await writeAll(conn, clientFrame(1, encoder.encode("x"), false));
      },
    );
    assert.ok(answer.startsWith(OUR_101), `${probe}\n${answer}`);
    const close = answer.slice(OUR_101.length);
    assert.equal(close.charCodeAt(0), 0x88, "a close frame");
    assert.equal(
      (close.charCodeAt(2) << 8) | close.charCodeAt(3),
      1002,
      "close code 1002",
    );
  }
});

Deno.test("handshake - pipelined plain HTTP requests: the first is answered with Connection: close, and the connection ends", async () => {
  await using server = startTestServer();
  const answer = await exchange(
    server.requesterPort,
    head("GET /health HTTP/1.1", "Host: a") +
      head("GET /health HTTP/1.1", "Host: a"),
  );
  assert.equal(statusOf(answer), "HTTP/1.1 200 OK");
  assert.match(answer, /\r\nconnection: close\r\n/i);
  assert.equal(answer.match(/HTTP\/1\.1 200/g)?.length, 1);
});

// The client side.

/** A server that answers each connection's handshake with `answer(accept)`, then waits. */
async function scriptedServer(
  answer: (accept: string) => string,
  run: (url: string) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  const serving = (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      const buffer = new Uint8Array(4096);
      let text = "";
      while (!text.includes("\r\n\r\n")) {
        const n = await conn.read(buffer).catch(() => null);
        if (n === null) break;
        text += bytesText(buffer.subarray(0, n));
      }
      const key = /sec-websocket-key: (\S+)/i.exec(text)?.[1] ?? "";
      await writeAll(conn, encoder.encode(answer(await acceptKey(key))))
        .catch(() => {});
    }
  })();
  try {
    await run(`ws://127.0.0.1:${listener.addr.port}/`);
  } finally {
    listener.close();
    await serving.catch(() => {});
    for (const conn of conns) {
      try {
        conn.close();
      } catch {
        // The client closed it.
      }
    }
  }
}

Deno.test("handshake - the client fails every 101 RFC 6455 §4.1 says to fail, naming what was wrong", async () => {
  const good = (
    accept: string,
    replace: Record<string, string | undefined> = {},
  ) => {
    const fields: Record<string, string | undefined> = {
      Upgrade: "websocket",
      Connection: "Upgrade",
      "Sec-WebSocket-Accept": accept,
      ...replace,
    };
    return head(
      fields.status ?? "HTTP/1.1 101 Switching Protocols",
      ...Object.entries(fields).filter(([k, v]) => k !== "status" && v)
        .map(([k, v]) => `${k}: ${v}`),
    );
  };
  const probes: [(accept: string) => string, RegExp][] = [
    [(a) => good(a, { Upgrade: undefined }), /Upgrade header none/],
    [(a) => good(a, { Upgrade: "h2c" }), /Upgrade header "h2c"/],
    [(a) => good(a, { Connection: undefined }), /Connection header none/],
    [(a) => good(a, { Connection: "keep-alive" }), /Connection header/],
    [
      (a) => good(a, { "Sec-WebSocket-Extensions": "permessage-deflate" }),
      /extension "permessage-deflate" was not offered/,
    ],
    [
      (a) => good(a, { "Sec-WebSocket-Protocol": "chat" }),
      /subprotocol "chat" was not offered/,
    ],
    [
      (a) => good(a, { status: "HTTP/1.0 101 Switching Protocols" }),
      /must be HTTP\/1\.1, not HTTP\/1\.0/,
    ],
    [(a) => good(a, { "Sec-WebSocket-Accept": "x" + a }), /Accept/],
  ];
  for (const [answer, why] of probes) {
    await scriptedServer(answer, async (url) => {
      await assert.rejects(connectWebSocket(url), why);
    });
  }
  // The control: a proper 101, with header names and values in any case, opens.
  await scriptedServer(
    (a) =>
      head(
        "HTTP/1.1 101 Switching Protocols",
        "upgrade: WebSocket",
        "CONNECTION: keep-alive, Upgrade",
        `sec-websocket-accept: ${a}`,
      ),
    async (url) => {
      const socket = await connectWebSocket(url);
      socket.terminate();
      await socket.closed;
    },
  );
});
