/**
 * HTTP/1.1 pieces the guard and the WebSocket client share: finding the end of a head, writing
 * whole buffers, short plain answers, and a `Response` written out whole.
 *
 * @module
 */

const encoder = new TextEncoder();

/** Where the blank line that ends an HTTP head starts in `buffer[from, length)`; -1 if not yet. */
export function headEnd(
  buffer: Uint8Array,
  from: number,
  length: number,
): number {
  for (let i = from; i + 3 < length; i++) {
    if (
      buffer[i] === 13 && buffer[i + 1] === 10 && buffer[i + 2] === 13 &&
      buffer[i + 3] === 10
    ) return i;
  }
  return -1;
}

/** Writes all of `bytes` (a write may take only part). */
export async function writeAll(
  conn: Deno.Conn,
  bytes: Uint8Array,
): Promise<void> {
  for (let done = 0; done < bytes.length;) {
    done += await conn.write(bytes.subarray(done));
  }
}

const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  426: "Upgrade Required",
  429: "Too Many Requests",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

/** A plain-text HTTP/1.1 answer (`status` as "408 Request Timeout") that ends the connection. */
export function plainAnswer(
  status: string,
  text: string,
  headers = "",
): Uint8Array {
  const body = encoder.encode(`${text}\n`);
  return concatBytes(
    encoder.encode(
      `HTTP/1.1 ${status}\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\n${headers}connection: close\r\n\r\n`,
    ),
    body,
  );
}

function concatBytes(head: Uint8Array, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return out;
}

/** A whole HTTP/1.1 answer that ends the connection; rejects if its body takes over `limitMs`. */
export async function serializeResponse(
  response: Response,
  limitMs: number,
): Promise<Uint8Array> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      response.body?.cancel().catch(() => {});
      reject(new Error("The answer did not end in time"));
    }, limitMs);
  });
  let body: Uint8Array;
  try {
    body = new Uint8Array(await Promise.race([response.arrayBuffer(), late]));
  } finally {
    clearTimeout(timer);
  }
  let head = `HTTP/1.1 ${response.status} ${
    response.statusText || STATUS_TEXT[response.status] || ""
  }\r\n`;
  for (const [name, value] of response.headers) {
    if (name === "content-length" || name === "connection") continue;
    head += `${name}: ${value}\r\n`;
  }
  head += `content-length: ${body.length}\r\nconnection: close\r\n\r\n`;
  return concatBytes(encoder.encode(head), body);
}
