// TLS: a self-signed CA made with the openssl CLI, the server on wss:// and https://, clients that
// trust the CA by `ca`, and clients that do not.

import assert from "node:assert/strict";
import { RequesterClient } from "../lib/requester/requester_client.ts";
import { Program, runProgram, startServerProgram } from "./_procs.ts";
import { connectClient, startTestServer, startWorker } from "./_helpers.ts";
import { hasOpenssl, makePki } from "./_pki.ts";

const OPENSSL = hasOpenssl();
if (!OPENSSL) console.log("(skipped: openssl not found)");

async function getHealth(
  url: string,
  ca: string,
): Promise<Record<string, unknown>> {
  using client = Deno.createHttpClient({ caCerts: [ca] });
  const res = await fetch(url, { client });
  assert.equal(res.status, 200);
  return await res.json();
}

Deno.test({
  name:
    "tls - a Worker and a RequesterClient round-trip over wss://localhost with `ca`",
  ignore: !OPENSSL,
  async fn() {
    await using pki = await makePki();
    await using server = startTestServer({
      host: "localhost",
      cert: pki.cert,
      key: pki.key,
    });
    assert.match(server.workerUrl, /^wss:\/\/localhost:\d+$/);
    // Resolves once the server has the worker's registration.
    await using _worker = await startWorker(server, {
      url: `wss://localhost:${server.port}`,
      name: "tls-worker",
      ca: pki.ca,
      actions: { echo: (params) => params },
    });
    await using client = await connectClient(
      `wss://localhost:${server.requesterPort}`,
      { ca: pki.ca },
    );
    const answer = await client.request("echo", { text: "über TLS" });
    assert.equal(answer.success, true, answer.error ?? "");
    assert.deepEqual(answer.data, { text: "über TLS" });

    for (const port of [server.port, server.requesterPort]) {
      const health = await getHealth(
        `https://localhost:${port}/health`,
        pki.ca,
      );
      assert.equal(health.workers, 1);
    }
    // 127.0.0.1 is in the certificate too.
    const byIp = await getHealth(
      `https://127.0.0.1:${server.requesterPort}/health`,
      pki.ca,
    );
    assert.equal(byIp.requesters, 1);
  },
});

Deno.test({
  name: "tls - without `ca` a client fails with a clear certificate error",
  ignore: !OPENSSL,
  async fn() {
    await using pki = await makePki();
    await using server = startTestServer({
      host: "localhost",
      cert: pki.cert,
      key: pki.key,
    });
    const client = new RequesterClient(
      `wss://localhost:${server.requesterPort}`,
    );
    await assert.rejects(
      client.connect(),
      /^Error: Cannot connect to wss:\/\/localhost:\d+: .*(certificate|issuer).*: trust the server's certificate authority with --ca/i,
    );
    // A plain ws:// client on a TLS port fails too, rather than hanging.
    const plain = new RequesterClient(
      `ws://localhost:${server.requesterPort}`,
      { handshakeTimeoutMs: 2000 },
    );
    await assert.rejects(
      plain.connect(),
      /Cannot connect to ws:\/\/.*: the server speaks TLS: use wss:\/\/localhost:\d+$/,
    );
    // fetch without the CA refuses the certificate as well.
    await assert.rejects(
      fetch(`https://localhost:${server.requesterPort}/health`),
      TypeError,
    );
    assert.equal(server.broker.stats().requesters, 0);
  },
});

Deno.test({
  name:
    "tls - the programs: server.ts --cert --key, worker.ts --ca, requester.ts --ca",
  ignore: !OPENSSL,
  async fn() {
    await using pki = await makePki();
    await using server = await startServerProgram([
      "--cert",
      pki.certFile,
      "--key",
      pki.keyFile,
    ]);
    await using worker = new Program("worker.ts", [
      "--url",
      `wss://localhost:${server.workerPort}`,
      "--ca",
      pki.caFile,
      "--name",
      "tls-program",
      "--provider",
      "demo",
      "--no-console",
    ]);
    const until = Date.now() + 20_000;
    while (
      (await getHealth(
        `https://localhost:${server.workerPort}/health`,
        pki.ca,
      )).workers !== 1
    ) {
      assert.ok(Date.now() < until, worker.lines.join("\n"));
      await new Promise((r) => setTimeout(r, 50));
    }
    const out = await runProgram("requester.ts", [
      "--url",
      `wss://localhost:${server.requesterPort}`,
      "--ca",
      pki.caFile,
      "--compact",
      "get_time",
    ]);
    assert.equal(out.code, 0, out.stderr);
    const answer = JSON.parse(out.stdout);
    assert.equal(answer.success, true);
    assert.match(answer.data, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);

    const untrusted = await runProgram("requester.ts", [
      "--url",
      `wss://localhost:${server.requesterPort}`,
      "get_time",
    ]);
    assert.equal(untrusted.code, 3);
    assert.match(untrusted.stderr, /Cannot connect to wss:\/\/localhost/);

    worker.kill("SIGTERM");
    assert.equal((await worker.done()).code, 0);
    server.program.kill("SIGTERM");
    assert.equal((await server.program.done()).code, 0);
  },
});

Deno.test({
  name:
    "tls - a self-signed server certificate marked CA:TRUE given as --ca says what to make instead",
  ignore: !OPENSSL,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "switchyard_leaf_" });
    try {
      // What `openssl req -x509` makes by default: a self-signed certificate with CA:TRUE.
      const made = await new Deno.Command("openssl", {
        args: [
          "req",
          "-x509",
          "-newkey",
          "ec",
          "-pkeyopt",
          "ec_paramgen_curve:prime256v1",
          "-nodes",
          "-keyout",
          "key.pem",
          "-out",
          "cert.pem",
          "-days",
          "2",
          "-subj",
          "/CN=localhost",
          "-addext",
          "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        cwd: dir,
        stdout: "null",
        stderr: "null",
      }).output();
      assert.ok(made.success);
      await using server = await startServerProgram([
        "--cert",
        `${dir}/cert.pem`,
        "--key",
        `${dir}/key.pem`,
      ]);
      const out = await runProgram("requester.ts", [
        "--url",
        `wss://localhost:${server.requesterPort}`,
        "--ca",
        `${dir}/cert.pem`,
        "get_time",
      ]);
      assert.equal(out.code, 3, out.stderr);
      assert.match(
        out.stderr,
        /the certificate given as --ca is the server's own.*basicConstraints=CA:FALSE/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
