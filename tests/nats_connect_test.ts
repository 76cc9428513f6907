// The NATS transport's sockets: a connection reset is heard in every phase, never thrown.

import assert from "node:assert/strict";
import { createConnection, createServer, type Socket } from "node:net";
import { keepErrorsHeard } from "../lib/cluster/nats_connect.ts";

/** A real socket, `prepare`d, then reset by its peer; resolves with the close's `hadError`. */
async function resetAfter(prepare: (socket: Socket) => void): Promise<boolean> {
  let peer: (socket: Socket) => void;
  const accepted = new Promise<Socket>((resolve) => peer = resolve);
  const server = createServer((socket) => peer(socket));
  await new Promise<void>((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve())
  );
  const { port } = server.address() as { port: number };
  try {
    const socket = createConnection(port, "127.0.0.1");
    await new Promise((resolve) => socket.once("connect", resolve));
    prepare(socket);
    const closed = new Promise<boolean>((resolve) =>
      socket.once("close", resolve)
    );
    (await accepted).resetAndDestroy();
    return await closed;
  } finally {
    server.close();
  }
}

Deno.test("keepErrorsHeard: a reset after removeAllListeners() closes the socket with an error, uncaught nowhere", async () => {
  const hadError = await resetAfter((socket) => {
    keepErrorsHeard(socket);
    socket.removeAllListeners();
  });
  assert.equal(hadError, true);
});

Deno.test("keepErrorsHeard: removing only the error listeners keeps ours too", async () => {
  const hadError = await resetAfter((socket) => {
    keepErrorsHeard(socket);
    socket.on("error", () => {});
    socket.removeAllListeners("error");
    assert.equal(socket.listenerCount("error"), 1);
  });
  assert.equal(hadError, true);
});
