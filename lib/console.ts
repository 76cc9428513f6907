/**
 * Operator consoles: the server's (`list`, `send`, `broadcast`, `stats`) and the worker's
 * (`request`, `status`). Each command takes a line and a `write` function, so a console is
 * testable without a terminal.
 *
 * @module
 */

import type { Broker } from "./broker.ts";
import type { Worker } from "./worker_client.ts";

/** What a console command asks of the program. */
export type ConsoleResult = "continue" | "quit";

/** Splits `word word {json…}`: the first `count` words, then the rest parsed as JSON. */
export function splitCommand(
  line: string,
  count: number,
): { words: string[]; json: unknown; error?: string } {
  const words: string[] = [];
  let rest = line.trim();
  while (words.length < count && rest !== "") {
    const match = /^(\S+)\s*/.exec(rest)!;
    words.push(match[1]);
    rest = rest.slice(match[0].length);
  }
  if (rest === "") return { words, json: {} };
  try {
    return { words, json: JSON.parse(rest) };
  } catch (error) {
    return {
      words,
      json: undefined,
      error: `Cannot parse params as JSON: ${(error as Error).message}`,
    };
  }
}

function pretty(value: unknown): string {
  return JSON.stringify(value, null, 2);
}

const SERVER_HELP = [
  "Commands:",
  "  help                                 this text",
  "  list                                 connected workers",
  "  send <client_id> <action> [json]     run an action on one worker",
  "  broadcast <message>                  notify every worker",
  "  stats                                counters",
  "  quit                                 drain and stop the server",
].join("\n");

/** Runs one server console line. */
export async function serverCommand(
  broker: Broker,
  line: string,
  write: (text: string) => void,
): Promise<ConsoleResult> {
  const [command = ""] = line.trim().split(/\s+/);
  switch (command) {
    case "":
      return "continue";
    case "help":
      write(SERVER_HELP);
      return "continue";
    case "list": {
      const workers = broker.workers();
      if (workers.length === 0) write("No workers connected");
      for (const w of workers) {
        write(
          `${w.client_id}  ${w.name}  ${w.address}  weight ${w.weight}  ` +
            `in-flight ${w.in_flight}/${w.max_concurrency}  served ${w.served}  ` +
            `failures ${w.failures}  latency ${w.latency_ms ?? "-"} ms  ` +
            `${w.healthy ? "healthy" : "UNHEALTHY"}${
              w.draining ? " draining" : ""
            }`,
        );
      }
      return "continue";
    }
    case "stats":
      write(pretty(broker.stats()));
      return "continue";
    case "broadcast": {
      const message = line.trim().slice("broadcast".length).trim();
      if (message === "") {
        write("Usage: broadcast <message>");
        return "continue";
      }
      write(`Sent to ${broker.broadcast(message)} workers`);
      return "continue";
    }
    case "send": {
      const { words, json, error } = splitCommand(line, 3);
      if (words.length < 3 || error) {
        write(error ?? "Usage: send <client_id> <action> [json params]");
        return "continue";
      }
      const [, clientId, action] = words;
      const outcome = await broker.send(clientId, action, json);
      write(
        outcome.ok
          ? pretty(outcome.result)
          : `Error (${outcome.error.code}): ${outcome.error.message}`,
      );
      return "continue";
    }
    case "quit":
    case "exit":
      return "quit";
    default:
      write(`Unknown command '${command}': type 'help' for the list`);
      return "continue";
  }
}

const WORKER_HELP = [
  "Commands:",
  "  help                      this text",
  "  request <action> [json]   run a server action (get_time, get_client_info, calculate)",
  "  status                    connection and counters",
  "  quit                      finish in-flight work and stop",
].join("\n");

/** Runs one worker console line. */
export async function workerCommand(
  worker: Worker,
  line: string,
  write: (text: string) => void,
): Promise<ConsoleResult> {
  const [command = ""] = line.trim().split(/\s+/);
  switch (command) {
    case "":
      return "continue";
    case "help":
      write(WORKER_HELP);
      return "continue";
    case "status":
      write(pretty(worker.status()));
      return "continue";
    case "request": {
      const { words, json, error } = splitCommand(line, 2);
      if (words.length < 2 || error) {
        write(error ?? "Usage: request <action> [json params]");
        return "continue";
      }
      try {
        write(pretty(await worker.request(words[1], json)));
      } catch (e) {
        write(`Error: ${(e as Error).message}`);
      }
      return "continue";
    }
    case "quit":
    case "exit":
      return "quit";
    default:
      write(`Unknown command '${command}': type 'help' for the list`);
      return "continue";
  }
}

/** Yields the lines of a byte stream, such as `Deno.stdin.readable`. */
export async function* readLines(
  stream: ReadableStream<Uint8Array>,
): AsyncGenerator<string> {
  let buffer = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buffer += chunk;
    let newline: number;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      yield buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
    }
  }
  if (buffer !== "") yield buffer;
}

/** Reads commands from stdin until `quit` or end of input, printing to stdout. */
export async function runStdinConsole(
  run: (line: string, write: (text: string) => void) => Promise<ConsoleResult>,
): Promise<void> {
  const write = (text: string) => console.log(text);
  write("Console ready: type 'help' for commands");
  for await (const line of readLines(Deno.stdin.readable)) {
    if (await run(line, write) === "quit") return;
  }
}
