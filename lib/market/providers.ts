/**
 * Provider names, and turning a list of names into provider instances.
 *
 * @module
 */

import type { Clock } from "./clock.ts";
import { createCsvProvider } from "./csv.ts";
import { createDemoProvider } from "./demo.ts";
import { createEastmoneyProvider } from "./eastmoney.ts";
import type { HostGate } from "./host_gate.ts";
import { createTencentProvider } from "./tencent.ts";
import type { MarketProvider } from "./types.ts";

/** The provider names a list may contain. */
export const PROVIDER_NAMES: readonly string[] = Object.freeze([
  "eastmoney",
  "tencent",
  "csv",
  "demo",
]);

/**
 * Parses a provider list such as the worker's `--provider eastmoney,tencent` flag: names
 * separated by commas or spaces, case-insensitive, duplicates dropped, order kept (it is the
 * fallback order).
 *
 * @throws {TypeError} for an empty list or an unknown name.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseProviderList } from "./providers.ts";
 * assert.deepEqual(parseProviderList("eastmoney, Tencent"), ["eastmoney", "tencent"]);
 * ```
 */
export function parseProviderList(text: string): string[] {
  const names = text.split(/[\s,]+/).map((n) => n.trim().toLowerCase()).filter(
    Boolean,
  );
  if (names.length === 0) {
    throw new TypeError(
      `Invalid provider list ${JSON.stringify(text)}: expected names from ${
        PROVIDER_NAMES.join(", ")
      }`,
    );
  }
  for (const name of names) checkProviderName(name);
  return [...new Set(names)];
}

/** @throws {TypeError} unless `name` is a known provider name. */
export function checkProviderName(name: string): void {
  if (!PROVIDER_NAMES.includes(name)) {
    throw new TypeError(
      `Unknown market provider "${name}": expected one of ${
        PROVIDER_NAMES.join(", ")
      }`,
    );
  }
}

/** What building a provider may need. */
export interface ProviderContext {
  /** Eastmoney base URL. */
  eastmoneyUrl?: string;
  /** Tencent base URL. */
  tencentUrl?: string;
  /** CSV folder. */
  csvDir?: string | URL;
  /** Shared gate per host. */
  gateFor: (host: string) => HostGate;
  /** Index code → resolved Eastmoney secid, shared with the symbol list. */
  resolvedSecids?: Map<string, string>;
  /** Time source. */
  clock: Clock;
}

/** Builds the provider called `name`. @throws {TypeError} for unknown names or missing csvDir. */
export function createProvider(
  name: string,
  context: ProviderContext,
): MarketProvider {
  checkProviderName(name);
  switch (name) {
    case "eastmoney":
      return createEastmoneyProvider({
        baseUrl: context.eastmoneyUrl,
        gateFor: context.gateFor,
        resolvedSecids: context.resolvedSecids,
      });
    case "tencent":
      return createTencentProvider({
        baseUrl: context.tencentUrl,
        gateFor: context.gateFor,
        clock: context.clock,
      });
    case "csv":
      if (context.csvDir === undefined) {
        throw new TypeError(`Provider "csv" needs a CSV folder: set csvDir`);
      }
      return createCsvProvider({ dir: context.csvDir });
    default:
      return createDemoProvider({ clock: context.clock });
  }
}
