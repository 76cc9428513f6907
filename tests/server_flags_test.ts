// Server flags that change how the ports are bound, checked on the real program.

import assert from "node:assert/strict";
import { startServerProgram } from "./_procs.ts";

async function acceptErrorSeries(port: number): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`, {
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  assert.equal(res.status, 200);
  return text.split("\n").filter((l) =>
    l.startsWith("switchyard_accept_errors_total{")
  ).length;
}

Deno.test("server - --no-guard binds the ports without the connection guard, which is on by default", async () => {
  for (
    const [args, guarded] of [[[], true], [["--no-guard"], false]] as const
  ) {
    const { program, requesterPort } = await startServerProgram([...args]);
    try {
      // Only a guarded port reports accept errors (its own accept loop counts them).
      assert.equal(await acceptErrorSeries(requesterPort) > 0, guarded);
      const health = await fetch(`http://127.0.0.1:${requesterPort}/health`, {
        signal: AbortSignal.timeout(10_000),
      });
      assert.equal(health.status, 200);
      await health.body?.cancel();
    } finally {
      await program.stop();
    }
  }
});
