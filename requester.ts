/**
 * `deno task requester` — send one command and print the answer, or open an interactive console.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { runStdinConsole, splitCommand } from "./lib/console.ts";
import {
  consoleMode,
  FlagError,
  looksLikeHost,
  numberFlag,
  readFlagFile,
  secretFlag,
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
  if (!hostPort && positionals.length >= 1 && looksLikeHost(positionals[0])) {
    throw new FlagError(
      `'${positionals[0]}' looks like a host but no PORT follows it: ` +
        `give HOST PORT (e.g. ${positionals[0]} 8766) or --url ws://${
          positionals[0]
        }:8766`,
    );
  }
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
    token: secretFlag(
      "token",
      values.token,
      "SWITCHYARD_REQUESTER_TOKEN",
      (message) => console.error(`requester: warning: ${message}`),
    ),
    ca: readFlagFile("ca", values.ca),
    progress: values.progress ?? false,
    compact: values.compact ?? false,
  };
}

/** A line on stderr that says what a failed answer means and what to try. */
function explain(answer: { success: boolean; available_commands?: unknown }) {
  const offered = answer.available_commands;
  if (!answer.success && Array.isArray(offered)) {
    console.error(
      `requester: ${
        offered.length > 0
          ? `available commands: ${offered.join(", ")}`
          : "no worker is connected, and the server answers no command of that name"
      }`,
    );
  }
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
      explain(answer);
      return answer.success ? 0 : 1;
    }
    if (consoleMode({ console: true }) === "background") {
      console.error(
        "requester: no command given, and the terminal belongs to the foreground job: " +
          "give a command, or run the console in the foreground",
      );
      return 2;
    }
    let status = 0;
    await runStdinConsole(async (line, write) => {
      const { words, json, error } = splitCommand(line, 1);
      const [command] = words;
      if (command === undefined) return "continue";
      if (command === "quit" || command === "exit") return "quit";
      if (command === "help") {
        write(
          "Type a command and optional JSON data, e.g.\n  get_time\n" +
            '  get_market {"symbol_type": "etf", "code": "510300"}\n  quit',
        );
        return "continue";
      }
      if (error) {
        write(`${error}: usage is <command> [json]`);
        return "continue";
      }
      try {
        const answer = await client.request(command, json, { onProgress });
        print(answer);
        explain(answer);
      } catch (e) {
        console.error(`requester: ${(e as Error).message}`);
        if (!client.connected) {
          status = 1;
          return "quit";
        }
      }
      return "continue";
    }, {
      prompt: "requester> ",
      banner:
        `Connected to ${flags.url}: type '<command> [json]', 'help' or 'quit'`,
    });
    return status;
    return 0;
  } catch (error) {
    console.error(`requester: ${(error as Error).message}`);
    return 1;
  } finally {
    await client.close();
  }
}

if (import.meta.main) Deno.exit(await main());
