/**
 * A stand-in for Eastmoney and Tencent on this machine, for trying market data offline: the
 * same HTTP wire formats the tests use, with made-up but plausible daily bars for any code.
 *
 * ```sh
 * deno run -A examples/fake_upstream.ts            # prints its URL, e.g. http://127.0.0.1:41234
 * deno task worker --eastmoney-url http://127.0.0.1:41234 --rate-limit 0
 * ```
 *
 * @module
 */

import { startFakeEastmoney } from "../tests/_fake_eastmoney.ts";

if (import.meta.main) {
  const fake = await startFakeEastmoney({ synthetic: true });
  console.log(fake.url);
  console.error(
    "Fake Eastmoney/Tencent upstream: give workers --eastmoney-url (and --tencent-url) " +
      `${fake.url}; Ctrl-C stops it`,
  );
  Deno.addSignalListener("SIGINT", () => {
    void fake.close().then(() => Deno.exit(0));
  });
}
