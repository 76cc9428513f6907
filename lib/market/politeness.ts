/**
 * Default politeness per real upstream host, chosen from what akshare and efinance users report
 * (the evidence and the reasoning are in docs/market.md, "Politeness").
 *
 * @module
 */

/** Rate and budgets for one host. */
export interface HostLimits {
  /** Requests per second. */
  rateLimit: number;
  /** Requests in any rolling hour. */
  budgetHour: number;
  /** Requests in any rolling 24 hours. */
  budgetDay: number;
}

/**
 * Limits for the hosts this library calls by default. A base URL of one's own (a mirror, a
 * test server) is not listed and gets 1 request/s without budgets unless told otherwise.
 */
export const HOST_LIMITS: Readonly<Record<string, Readonly<HostLimits>>> =
  Object.freeze({
    // K-lines: bans after 50–200 requests at 2 s spacing, lately after ~10 at 15 s.
    "push2his.eastmoney.com": {
      rateLimit: 1 / 30,
      budgetHour: 60,
      budgetDay: 500,
    },
    // Symbol lists: a few dozen pages a day at most.
    "push2.eastmoney.com": {
      rateLimit: 1 / 3,
      budgetHour: 200,
      budgetDay: 1000,
    },
    // The list API's delayed mirror, asked for snapshots when push2 drops connections.
    "push2delay.eastmoney.com": {
      rateLimit: 1 / 3,
      budgetHour: 200,
      budgetDay: 1000,
    },
    // Tencent: lenient, but answers empty rows after ~5,000 calls.
    "proxy.finance.qq.com": { rateLimit: 1, budgetHour: 1000, budgetDay: 4000 },
    "web.ifzq.gtimg.cn": { rateLimit: 1, budgetHour: 1000, budgetDay: 4000 },
  });

/** Limits for a host that {@linkcode HOST_LIMITS} does not list. */
export const OTHER_HOST_LIMITS: Readonly<HostLimits> = Object.freeze({
  rateLimit: 1,
  budgetHour: 0,
  budgetDay: 0,
});
