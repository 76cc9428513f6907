// One source of truth for defaults: the numbers in the code are the numbers in --help, docs/
// and both READMEs. Each check reads the value from the code and looks for it in the text.
import assert from "node:assert/strict";
import { resolveOptions } from "../lib/broker/options.ts";
import { HOST_LIMITS, OTHER_HOST_LIMITS } from "../lib/market/politeness.ts";
import { runProgram } from "./_procs.ts";

const ROOT = new URL("../", import.meta.url);
const read = (path: string) => Deno.readTextFileSync(new URL(path, ROOT));
/** The text with line breaks and runs of spaces as one space, as a reader sees it. */
const flat = (text: string) => text.replace(/\s+/g, " ");

const kline = HOST_LIMITS["push2his.eastmoney.com"];
const klineEvery = Math.round(1 / kline.rateLimit); // seconds between requests
const broker = resolveOptions({});
const deadline = broker.timeoutMs / 1000;
const maxDeadline = broker.maxTimeoutMs / 1000;

Deno.test("defaults - the worker's upstream pacing reads the same in --help, docs/ and both READMEs", async () => {
  const help = flat((await runProgram("worker.ts", ["--help"])).stdout);
  assert.match(help, new RegExp(`1/${klineEvery} for Eastmoney K-lines`));
  assert.match(help, new RegExp(`${kline.budgetHour} for Eastmoney K-lines`));
  assert.match(help, new RegExp(`${kline.budgetDay} for Eastmoney K-lines`));

  const market = flat(read("docs/market.md"));
  assert.match(
    market,
    new RegExp(
      `push2his\\.eastmoney\\.com\` \\(K-lines\\) +\\| 1 per ${klineEvery} s +\\| ${kline.budgetHour} +\\| ${kline.budgetDay} `,
    ),
  );
  assert.equal(OTHER_HOST_LIMITS.rateLimit, 1);
  assert.match(market, /any other base URL[^|]*\| 1 per s /);

  const operations = read("docs/operations.md");
  const row = (flag: string) =>
    operations.split("\n").find((l) => l.includes(`| \`${flag}\``)) ?? "";
  assert.match(
    row("--rate-limit"),
    new RegExp(`Eastmoney K-lines: \`1/${klineEvery}\``),
  );
  assert.match(
    row("--budget-hour"),
    new RegExp(`\`${kline.budgetHour}\` / \`${kline.budgetDay}\``),
  );

  const zh = flat(read("README.zh-CN.md"));
  assert.match(zh, new RegExp(`默认每 ${klineEvery} 秒 ?1 次请求`));
  assert.match(zh, new RegExp(`每小时最多 ${kline.budgetHour} 次`));
  assert.match(zh, new RegExp(`每天最多 ${kline.budgetDay} 次`));
  assert.doesNotMatch(zh, /东方财富 K 线接口（默认），每个主机默认每秒/);

  const readme = flat(read("README.md"));
  assert.match(readme, new RegExp(`one K-line request per ${klineEvery} s`));
});

Deno.test("defaults - the request deadlines read the same in --help, docs/ and both READMEs", async () => {
  const server = flat((await runProgram("server.ts", ["--help"])).stdout);
  assert.match(
    server,
    new RegExp(
      `--timeout S default request deadline in seconds \\(default ${deadline}\\)`,
    ),
  );
  assert.match(
    server,
    new RegExp(`--max-timeout S .*\\(default ${maxDeadline}\\)`),
  );
  const requester = flat((await runProgram("requester.ts", ["--help"])).stdout);
  assert.match(
    requester,
    new RegExp(`\\(default: the server's, ${deadline}\\)`),
  );
  const operations = read("docs/operations.md");
  assert.match(
    operations,
    new RegExp(
      `\`--timeout\` / \`--max-timeout\` +\\| \`${deadline}\` / \`${maxDeadline}\` s`,
    ),
  );
  assert.match(
    flat(read("README.md")),
    new RegExp(`default deadline \\(${deadline} s\\)`),
  );
  const zh = flat(read("README.zh-CN.md"));
  assert.match(zh, new RegExp(`服务器默认超时 ${deadline} 秒`));
  assert.match(zh, new RegExp(`默认 ${maxDeadline} 秒`));
  assert.match(
    flat(read("docs/market.md")),
    new RegExp(`default deadline of ${deadline} s`),
  );
});

Deno.test("README.zh-CN covers markets, the HTTP API, the dashboard and the offline demo", () => {
  const zh = read("README.zh-CN.md");
  for (
    const must of [
      /## 批量下载到文件：`markets`/,
      /--resume/,
      /failed\.txt/,
      /## HTTP 接口和仪表盘/,
      /GET \/v1\/market/,
      /POST \/v1\/request/,
      /POST \/v1\/markets/,
      /仪表盘/,
      /## 离线试用/,
      /deno task demo/,
      /examples\/fake_upstream\.ts/,
    ]
  ) assert.match(zh, must);
});
