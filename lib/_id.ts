const ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";

/** A short random id such as `k3x9q2`, for worker `client_id`s. */
export function shortId(length = 6): string {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  let id = "";
  for (const b of bytes) id += ALPHABET[b % ALPHABET.length];
  return id;
}

// The process's start time plus a counter: unique within the process, and cheap, since every
// request the broker forwards needs one.
const PREFIX = `msg_${Date.now()}`;
let counter = 0;

/** An envelope id in the original's `msg_<digits>` form, unique within this process. */
export function messageId(): string {
  return `${PREFIX}${++counter}`;
}
