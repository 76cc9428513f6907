// Frame limits are inclusive: a frame of exactly the limit passes, one byte more is refused.
// ASCII only, so characters and bytes agree.

import assert from "node:assert/strict";
import {
  answerOf,
  connectClient,
  openRawWorker,
  RawPeer,
  startTestServer,
} from "./_helpers.ts";

/** `make(pad)` padded with "x" until its text is exactly `size` characters long. */
function sized(size: number, make: (pad: string) => unknown): string {
  const bare = JSON.stringify(make("")).length;
  const text = JSON.stringify(make("x".repeat(size - bare)));
  assert.equal(text.length, size);
  return text;
}

Deno.test("frame limit - a requester frame of exactly maxRequesterFrameBytes passes, one more is FRAME_TOO_LARGE", async () => {
  await using server = startTestServer({ maxRequesterFrameBytes: 1000 });
  await using requester = await RawPeer.open(server.requesterUrl);
  const frame = (id: string, size: number) =>
    sized(size, (pad) => ({
      request_id: id,
      command: "nothing_offers_this",
      data: pad,
    }));
  requester.send(frame("at", 1000));
  const at = await requester.answer("at");
  assert.equal(at.error, "No available workers");
  requester.send(frame("over", 1001));
  const over = await requester.answer("over");
  assert.equal(over.error_code, "FRAME_TOO_LARGE");
  assert.match(over.error, /\b1001\b.*\(limit 1000\)$/);
});

Deno.test("frame limit - a worker frame of exactly maxWorkerFrameBytes passes; one more is FRAME_TOO_LARGE, and its request RESULT_TOO_LARGE", async () => {
  await using server = startTestServer({ maxWorkerFrameBytes: 2000 });
  const { peer } = await openRawWorker(server, { actions: ["work"] });
  await using _peer = peer;
  await using client = await connectClient(server.requesterUrl);
  const response = (msgId: string, size: number) =>
    sized(size, (pad) => ({
      type: "response",
      msg_id: "m",
      timestamp: 1,
      data: { request_id: msgId, success: true, result: pad, error: null },
    }));
  const first = answerOf(client.request("work", {}, { timeout: 5 }));
  const request = await peer.envelope("request");
  peer.send(response(request.msg_id, 2000));
  const answer = await first;
  assert.equal(answer.success, true);
  assert.match(String(answer.data), /^x+$/);

  const second = answerOf(client.request("work", {}, { timeout: 30 }));
  const again = await peer.envelope("request");
  peer.send(response(again.msg_id, 2001));
  const error = await peer.envelope("error");
  assert.equal(error.data.code, "FRAME_TOO_LARGE");
  assert.match(error.data.error, /\b2001\b.*\(limit 2000\)$/);
  const failed = await second;
  assert.equal(failed.error_code, "RESULT_TOO_LARGE");
  assert.match(String(failed.error), /answered with 2001 bytes/);
});
