/**
 * Flags that the requester's commands (one command, `markets`, `sync`, `store`) read the same
 * way.
 *
 * @module
 */

import {
  FlagError,
  numberFlag,
  readFlagFile,
  secretFlag,
  serverUrl,
} from "../_flags.ts";

/**
 * The server to connect to, from `--url` or a leading `HOST PORT` before the command `word`,
 * the words after the command (`rest`), the token and the CA file.
 */
export function requesterConnection(
  values: { url?: string; token?: string; ca?: string },
  positionals: string[],
  word: string,
): { url: string; rest: string[]; token?: string; ca?: string } {
  const hostPort = positionals.length >= 3 && /^\d+$/.test(positionals[1]) &&
    positionals[2] === word;
  return {
    url: serverUrl(
      values.url,
      hostPort ? positionals[0] : undefined,
      hostPort ? positionals[1] : undefined,
      8766,
    ),
    rest: positionals.slice(hostPort ? 3 : 1),
    ...requesterCredentials(values),
  };
}

/**
 * The requester's token (`--token`, else `SWITCHYARD_REQUESTER_TOKEN`, warning that a flag is
 * seen by other users) and the CA file's text (`--ca`).
 */
export function requesterCredentials(
  values: { token?: string; ca?: string },
): { token?: string; ca?: string } {
  return {
    token: secretFlag(
      "token",
      values.token,
      "SWITCHYARD_REQUESTER_TOKEN",
      (message) => console.error(`requester: warning: ${message}`),
    ),
    ca: readFlagFile("ca", values.ca),
  };
}

/** `--batch-size`: a whole number of symbols a request asks for, at least 1, when given. */
export function batchSizeFlag(value: string | undefined): number | undefined {
  return value === undefined
    ? undefined
    : numberFlag("batch-size", value, 200, { min: 1, integer: true });
}

/** `--timeout`: seconds, more than 0, when given. */
export function timeoutFlag(value: string | undefined): number | undefined {
  return value === undefined
    ? undefined
    : numberFlag("timeout", value, 300, { min: 0.001 });
}

/** Parses a date flag given as `YYYY-MM-DD` or `YYYYMMDD` into `YYYY-MM-DD`. */
export function dateFlag(
  name: string,
  value: string | undefined,
): string | undefined {
  if (value === undefined) return undefined;
  const m = /^(\d{4})-?(\d{2})-?(\d{2})$/.exec(value);
  if (!m) {
    throw new FlagError(
      `Invalid --${name} '${value}': expected a date such as 2020-01-31`,
    );
  }
  return `${m[1]}-${m[2]}-${m[3]}`;
}
