/**
 * `deno task requester` — send one command and print the answer, or open an interactive console.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { readLines, splitCommand } from "./lib/console.ts";
import {
  env,
  FlagError,
  numberFlag,
  readFlagFile,
  serverUrl,
} from "./lib/_flags.ts";
import { setupLogging } from "./lib/log.ts";
import { RequesterClient } from "./lib/requester_client.ts";

const USAGE =
  `Usage: deno task requester [HOST PORT] [command [json-data]] [options]

Sends a command to the server's requester port (default localhost 8766) and prints the answer as
JSON; exits 1 when the answer's success is false. Without a command, opens a console.

Examples:
  deno task requester get_time
  deno task requester localhost 8766 get_market '{"symbol_type":"etf","code":"510300"}'
  deno task requester get_markets '[{"symbol_type":"etf","code":"510300"},{"symbol_type":"etf","code":"159915"}]'

Options:
  --url URL          requester port URL instead of HOST PORT (ws:// or wss://)
  --timeout S        seconds the server may take (default: the server's, 30)
  --token T          requester token (or SWITCHYARD_REQUESTER_TOKEN)
  --ca FILE          CA certificate (PEM) to trust for wss://
  --progress         print progress frames of batches to stderr
  --compact          print the answer on one line
  -h, --help         this text
`;

function parse(args: string[]) {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      url: { type: "string" },
      timeout: { type: "string" },
      token: { type: "string" },
      ca: { type: "string" },
      progress: { type: "boolean" },
      compact: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  // `HOST PORT` is recognised by its numeric second word; everything after is the command.
  const hostPort = positionals.length >= 2 && /^\d+$/.test(positionals[1]);
  const url = serverUrl(
    values.url,
    hostPort ? positionals[0] : undefined,
    hostPort ? positionals[1] : undefined,
    8766,
  );
  const rest = hostPort ? positionals.slice(2) : positionals;
  let data: unknown = {};
  if (rest.length > 1) {
    const text = rest.slice(1).join(" ");
    try {
      data = JSON.parse(text);
    } catch (error) {
      throw new FlagError(
        `Cannot parse json-data: ${(error as Error).message}`,
      );
    }
  }
  return {
    url,
    command: rest[0] as string | undefined,
    data,
    timeout: values.timeout === undefined
      ? undefined
      : numberFlag("timeout", values.timeout, 30, { min: 0.001 }),
    token: values.token ?? env("SWITCHYARD_REQUESTER_TOKEN"),
    ca: readFlagFile("ca", values.ca),
    progress: values.progress ?? false,
    compact: values.compact ?? false,
  };
}

async function main(): Promise<number> {
  let flags;
  try {
    flags = parse(Deno.args);
  } catch (error) {
    console.error(`requester: ${(error as Error).message}`);
    return 2;
  }
  setupLogging({ level: "warning" });
  const client = new RequesterClient(flags.url, {
    token: flags.token,
    ca: flags.ca,
    timeout: flags.timeout,
  });
  try {
    await client.connect();
  } catch (error) {
    console.error(`requester: ${(error as Error).message}`);
    return 2;
  }
  const print = (value: unknown) =>
    console.log(
      flags.compact ? JSON.stringify(value) : JSON.stringify(value, null, 2),
    );
  const onProgress = flags.progress
    ? (p: { done: number; total?: number }) =>
      console.error(`progress ${p.done}/${p.total ?? "?"}`)
    : undefined;
  try {
    if (flags.command !== undefined) {
      const answer = await client.request(flags.command, flags.data, {
        onProgress,
      });
      print(answer);
      return answer.success ? 0 : 1;
    }
    console.log(
      `Connected to ${flags.url}: type '<command> [json]', 'help' or 'quit'`,
    );
    for await (const line of readLines(Deno.stdin.readable)) {
      const { words, json, error } = splitCommand(line, 1);
      const [command] = words;
      if (command === undefined) continue;
      if (command === "quit" || command === "exit") break;
      if (command === "help") {
        console.log(
          "Type a command and optional JSON data, e.g.\n  get_time\n" +
            '  get_market {"symbol_type": "etf", "code": "510300"}\n  quit',
        );
        continue;
      }
      if (error) {
        console.log(`${error}: usage is <command> [json]`);
        continue;
      }
      try {
        print(await client.request(command, json, { onProgress }));
      } catch (e) {
        console.error(`requester: ${(e as Error).message}`);
        if (!client.connected) return 1;
      }
    }
    return 0;
  } catch (error) {
    console.error(`requester: ${(error as Error).message}`);
    return 1;
  } finally {
    await client.close();
  }
}

if (import.meta.main) Deno.exit(await main());
