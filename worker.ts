/**
 * `deno task worker` — a Switchyard worker: connects to the server's worker port and serves
 * `get_time`, `get_system_info`, `get_market` and `get_markets`.
 *
 * @module
 */

import { runStdinConsole, workerCommand } from "./lib/console.ts";
import {
  consoleMode,
  FlagError,
  logFormatFlag,
  logLevelFlag,
  numberFlag,
  onStopSignal,
  parseFlags,
  PROCESS_FLAGS,
  readFlagFile,
  secretFlag,
  serverUrl,
} from "./lib/_flags.ts";
import { logger, setupLogging } from "./lib/log.ts";
import {
  createMarketService,
  createProxyFetch,
  parseCookieFile,
  parseHeaderFlags,
  parseProviderList,
} from "./lib/market/mod.ts";
import { Worker } from "./lib/worker/worker_client.ts";

const USAGE = `Usage: deno task worker [HOST] [PORT] [options]

Connects to the server's worker port (default localhost 8765) and serves requests.

Options:
  --url URL               worker port URL instead of HOST PORT (ws:// or wss://); a cluster's
                          servers comma-separated: tried in turn, then with backoff
  --name NAME             name shown by the server (default hostname-pid)
  --weight W              relative capacity for the balancer (default 1)
  --concurrency N         requests served at once (default 8)
  --token T               worker token (or SWITCHYARD_WORKER_TOKEN)
  --ca FILE               CA certificate (PEM) to trust for wss://
  --max-backoff S         longest wait between reconnects (default 30)
  --grace S               on SIGTERM/SIGINT, finish in-flight work this long (default 10)
  --provider LIST         market data sources, a fallback chain (default eastmoney):
                          eastmoney, tencent, csv, demo — e.g. eastmoney,tencent
  --eastmoney-url URL     Eastmoney base URL (default https://push2his.eastmoney.com)
  --eastmoney-list-url URL  Eastmoney symbol list base URL, for list_symbols (default
                          --eastmoney-url when given, else https://push2.eastmoney.com)
  --tencent-url URL       Tencent base URL (default https://proxy.finance.qq.com/ifzqgtimg)
  --csv-dir DIR           directory of <code>.csv files for the csv provider
  --cache-dir DIR         keep fetched series on disk across restarts
  --rate-limit R          upstream requests per second per host (default: per host,
                          1/30 for Eastmoney K-lines, 1 for Tencent; 0 = no limit)
  --budget-hour N         upstream requests per rolling hour per host (default: per host,
                          60 for Eastmoney K-lines; 0 = no budget)
  --budget-day N          upstream requests per rolling day per host (default: per host,
                          500 for Eastmoney K-lines; 0 = no budget)
  --header NAME:VALUE     extra header for every upstream request, repeatable (your own
                          User-Agent, or a Cookie copied from a browser)
  --cookie-file FILE      cookies for upstream hosts: cookies.txt (Netscape) or one
                          "a=1; b=2" line; a cookie taken after Eastmoney's slider captcha,
                          or a login ct cookie, raises how much the host tolerates
  --proxy URL             send upstream requests through this HTTP(S) proxy, for another
                          exit IP (bans are per IP; mainland IPs fare best)
  --console               read console commands from stdin even when it is not a terminal
  --no-console            never read stdin (for a worker run with &, under systemd, in a container)
  --log-level LEVEL       trace | debug | info | warning | error (default info)
  --log-format FORMAT     text | json (default text)
  -h, --help              this text
`;

/** Runs a flag parser, turning its errors into flag errors (exit code 2, no stack). */
function flagValue<T>(parse: () => T): T {
  try {
    return parse();
  } catch (error) {
    if (error instanceof FlagError) throw error;
    throw new FlagError((error as Error).message);
  }
}

function parse(args: string[]) {
  const { values, positionals } = parseFlags({
    args,
    allowPositionals: true,
    options: {
      url: { type: "string" },
      name: { type: "string" },
      weight: { type: "string" },
      concurrency: { type: "string" },
      token: { type: "string" },
      ca: { type: "string" },
      "max-backoff": { type: "string" },
      provider: { type: "string" },
      "eastmoney-url": { type: "string" },
      "tencent-url": { type: "string" },
      "eastmoney-list-url": { type: "string" },
      "csv-dir": { type: "string" },
      "cache-dir": { type: "string" },
      "rate-limit": { type: "string" },
      "budget-hour": { type: "string" },
      "budget-day": { type: "string" },
      header: { type: "string", multiple: true },
      "cookie-file": { type: "string" },
      proxy: { type: "string" },
      ...PROCESS_FLAGS,
    },
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  if (positionals.length > 2) {
    throw new FlagError(`Unexpected argument '${positionals[2]}': see --help`);
  }
  const format = logFormatFlag(values["log-format"]);
  const level = logLevelFlag(values["log-level"]);
  const url = serverUrl(values.url, positionals[0], positionals[1], 8765);
  let providers: string[];
  try {
    providers = parseProviderList(values.provider ?? "eastmoney");
  } catch (error) {
    throw new FlagError(`Invalid --provider: ${(error as Error).message}`);
  }
  if (providers.includes("csv") && !values["csv-dir"]) {
    throw new FlagError("--provider csv needs --csv-dir DIR");
  }
  return {
    url,
    values,
    format,
    level,
    providers,
    weight: numberFlag("weight", values.weight, 1, { min: 0.001 }),
    concurrency: numberFlag("concurrency", values.concurrency, 8, {
      min: 1,
      integer: true,
    }),
    maxBackoffMs:
      numberFlag("max-backoff", values["max-backoff"], 30, { min: 0.05 }) *
      1000,
    graceMs: numberFlag("grace", values.grace, 10) * 1000,
    rateLimit: values["rate-limit"] === undefined
      ? undefined
      : numberFlag("rate-limit", values["rate-limit"], 1),
    budgetHour: values["budget-hour"] === undefined
      ? undefined
      : numberFlag("budget-hour", values["budget-hour"], 0, { integer: true }),
    budgetDay: values["budget-day"] === undefined
      ? undefined
      : numberFlag("budget-day", values["budget-day"], 0, { integer: true }),
    headers: flagValue(() => parseHeaderFlags(values.header ?? [])),
    cookies: values["cookie-file"] === undefined
      ? undefined
      : flagValue(() =>
        parseCookieFile(readFlagFile("cookie-file", values["cookie-file"])!)
      ),
    proxy: values.proxy === undefined
      ? undefined
      : flagValue(() => createProxyFetch(values.proxy!)),
    ca: readFlagFile("ca", values.ca),
  };
}

async function main(): Promise<void> {
  let flags;
  try {
    flags = parse(Deno.args);
  } catch (error) {
    console.error(`worker: ${(error as Error).message}`);
    Deno.exit(2);
  }
  const { values } = flags;
  setupLogging({ level: flags.level, format: flags.format });
  const log = logger("worker");
  const market = createMarketService({
    providers: flags.providers,
    eastmoneyUrl: values["eastmoney-url"],
    tencentUrl: values["tencent-url"],
    eastmoneyListUrl: values["eastmoney-list-url"],
    csvDir: values["csv-dir"],
    cacheDir: values["cache-dir"],
    rateLimit: flags.rateLimit,
    budgetHour: flags.budgetHour,
    budgetDay: flags.budgetDay,
    headers: flags.headers,
    cookies: flags.cookies,
    fetch: flags.proxy?.fetch,
    itemConcurrency: Math.max(flags.concurrency, 4),
  });
  const worker = new Worker({
    url: flags.url,
    name: values.name,
    weight: flags.weight,
    concurrency: flags.concurrency,
    token: secretFlag(
      "token",
      values.token,
      "SWITCHYARD_WORKER_TOKEN",
      (message) => log.warn(message),
    ),
    ca: flags.ca,
    backoff: {
      initialMs: Math.min(500, flags.maxBackoffMs),
      maxMs: flags.maxBackoffMs,
    },
    graceMs: flags.graceMs,
    heartbeatData: () => ({
      blocked_sources: market.blockedSources(),
      upstream: market.upstreamStatus(),
    }),
  });
  for (const [name, handler] of Object.entries(market.actions())) {
    worker.registerAction(name, handler);
  }
  log.info("Worker {name} serving market data from {providers}", {
    name: worker.name,
    providers: flags.providers.join(" → "),
  });

  const stop = async (why: string) => {
    log.info("{why}: finishing in-flight work (up to {s} s)", {
      why,
      s: flags.graceMs / 1000,
    });
    await worker.stop(flags.graceMs);
    market.close();
    flags.proxy?.close();
    Deno.exit(0);
  };
  onStopSignal(stop);

  const running = worker.start();
  const mode = consoleMode(values);
  if (mode === "background") {
    log.info(
      "Started in the background: no console (--no-console says so and silences this line)",
    );
  }
  if (mode === "on") {
    await runStdinConsole(
      (line, write) => workerCommand(worker, line, write),
      { prompt: "worker> " },
    );
    await stop("Console quit");
  }
  await running;
}

if (import.meta.main) await main();
