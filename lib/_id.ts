const ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";

/** A short random id such as `k3x9q2`, for worker `client_id`s. */
export function shortId(length = 6): string {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  let id = "";
  for (const b of bytes) id += ALPHABET[b % ALPHABET.length];
  return id;
}

let counter = 0;

/** An envelope id in the original's `msg_<digits>` form, unique within this process. */
export function messageId(): string {
  counter = (counter + 1) % 1_000_000;
  return `msg_${Date.now()}${counter.toString().padStart(6, "0")}`;
}
