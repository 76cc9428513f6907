import assert from "node:assert/strict";
import {
  createMarketService,
  parseCsvBars,
  UpstreamUnavailableError,
} from "../lib/market/mod.ts";

Deno.test("parseCsvBars() keeps quoted commas inside a cell and reads quoted thousands", () => {
  const bars = parseCsvBars(
    "name,date,open,close,high,low,volume,amount\r\n" +
      '"Huatai-PineBridge CSI 300, ETF",2024-01-02,3.5,3.6,3.7,3.4,"1,200","4,321,000.5"\r\n' +
      '"Say ""hi"", then",2024-01-03,3.6,3.65,3.7,3.55,900,3240000\r\n',
  );
  assert.deepEqual(bars, [
    {
      date: "2024-01-02",
      open: 3.5,
      high: 3.7,
      low: 3.4,
      close: 3.6,
      volume: 1200,
      amount: 4321000.5,
    },
    {
      date: "2024-01-03",
      open: 3.6,
      high: 3.7,
      low: 3.55,
      close: 3.65,
      volume: 900,
      amount: 3240000,
    },
  ]);
});

Deno.test("parseCsvBars() names the file and row of an incomplete or unparsable row", () => {
  assert.throws(
    () =>
      parseCsvBars(
        "date,open,close,high,low,volume\n2024-01-02,1,2,3\n",
        "x.csv",
      ),
    (error: unknown) =>
      error instanceof UpstreamUnavailableError &&
      /"x\.csv": row 2 "2024-01-02,1,2,3" is incomplete/.test(error.message),
  );
  assert.throws(
    () =>
      parseCsvBars('date,open,close,high,low,volume\n"2024-01-02,1\n', "y.csv"),
    (error: unknown) =>
      error instanceof UpstreamUnavailableError &&
      /Cannot read CSV file "y\.csv": /.test(error.message),
  );
});

Deno.test("csv provider - serves a file whose name column holds a quoted comma", async () => {
  const dir = await Deno.makeTempDir({ prefix: "switchyard_csv_" });
  const market = createMarketService({ providers: ["csv"], csvDir: dir });
  try {
    await Deno.writeTextFile(
      `${dir}/etf_510300.csv`,
      "日期,名称,开盘,收盘,最高,最低,成交量,成交额\n" +
        '2024-01-02,"沪深300ETF,华泰柏瑞",3.5,3.6,3.7,3.4,1200,4321000\n',
    );
    const result = await market.getMarket({
      symbol_type: "etf",
      code: "510300",
      adjust: "none",
    });
    assert.ok(result.success, JSON.stringify(result));
    assert.deepEqual(result.data.map((b) => [b.date, b.open, b.amount]), [
      ["2024-01-02", 3.5, 4321000],
    ]);
  } finally {
    market.close();
    await Deno.remove(dir, { recursive: true });
  }
});
