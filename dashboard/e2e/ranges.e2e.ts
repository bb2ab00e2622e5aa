// The host page's time ranges in a real browser (Debian's chromium, driven by
// playwright-core) against a real aggregator with its store on disk: two
// simulated hosts (hostpulse-fleet-sim) send a day of past samples, 30 s
// apart, through the real gRPC ingest; the page opened at `?range=24h` draws
// the CPU chart from the store's 1-minute tier as an average line with a
// min–max band (asserted on the chart's canvas pixels); switching ranges
// updates the URL, a fresh page loads the range from the URL, the picker's
// custom range and a drag zoom land in the URL as from/to; the byte axis
// ticks on binary steps. The time from a
// range click to the chart drawn with that range is measured, printed and
// written to test-output/range-timings.json, never asserted.

import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Aggregator, type FleetSim, repoRoot, startAggregator, startFleetSim, waitUntil } from "./harness";

const out = join(repoRoot, "dashboard/test-output");
mkdirSync(out, { recursive: true });

// The second simulated host: its CPU moves around 37 %, so the band shows.
const HOST = "sim-00002";
const DAY = 86_400_000;
/** One sample every 30 s over the last 24 h (and one now). */
const BACKLOG = 2 * 60 * 24 + 1;

let browser: Browser;
let context: BrowserContext;
let agg: Aggregator;
let sim: FleetSim;
const consoleErrors: string[] = [];
const switches: Record<string, number> = {};

async function newPage(): Promise<Page> {
  const page = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error") consoleErrors.push(`${msg.text()} (${msg.location().url})`);
  });
  page.on("pageerror", (err) => consoleErrors.push(`uncaught: ${err.message}`));
  return page;
}

/** How many CPU points the store serves over the last day at 2 min steps. */
async function storedPoints(): Promise<number> {
  const now = Date.now();
  const res = await fetch(
    `${agg.httpUrl}/api/v1/hosts/${HOST}/series?fields=cpu.total_pct&from=${now - DAY}&to=${now}&step=2m`,
  );
  if (!res.ok) return 0;
  const body = (await res.json()) as { series: { ts: number[] }[] };
  return body.series[0]?.ts.length ?? 0;
}

/**
 * Pixels of the chart's canvas in a line's colour (#4fc3f7): opaque ones are
 * the average line, faint ones (the band's 22 % fill) the min–max band.
 */
async function canvasColours(page: Page, testId: string): Promise<{ line: number; band: number }> {
  return page.getByTestId(testId).evaluate((el) => {
    const canvas = el.querySelector("canvas");
    if (!canvas) return { line: 0, band: 0 };
    const ctx = canvas.getContext("2d")!;
    const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let line = 0;
    let band = 0;
    for (let i = 0; i < px.length; i += 4) {
      const [r, g, b, a] = [px[i], px[i + 1], px[i + 2], px[i + 3]];
      if (Math.abs(r - 79) > 16 || Math.abs(g - 195) > 16 || Math.abs(b - 247) > 16) continue;
      if (a >= 200) line++;
      else if (a >= 40 && a <= 75) band++;
    }
    return { line, band };
  });
}

/** Clicks range `key` and resolves with the ms until the CPU chart was drawn with it. */
async function switchTo(page: Page, key: string): Promise<number> {
  return page.evaluate(async (key) => {
    const t0 = performance.now();
    (document.querySelector(`[data-testid="range-${key}"]`) as HTMLElement).click();
    return new Promise<number>((resolve, reject) => {
      const check = () => {
        const d = window.__hostpulse?.drawn?.["chart-cpu"];
        if (d && d.tag === key && d.at > t0 && d.points > 0) resolve(d.at - t0);
        else if (performance.now() - t0 > 15_000) reject(new Error(`chart not drawn with range ${key}`));
        else requestAnimationFrame(check);
      };
      check();
    });
  }, key);
}

beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), "hostpulse-ranges-store-"));
  agg = await startAggregator({
    extra: `[auth]
anonymous_agents = true
anonymous_clients = true
anonymous_topics = [">"]

[storage]
dir = "${dir}"
flush_interval_ms = 200
`,
  });
  sim = await startFleetSim(agg.ingest, {
    hosts: 2,
    backlog: BACKLOG,
    backlogStepMs: 30_000,
    intervalMs: 1000,
    offlineEvery: 0,
    durationSecs: 600,
  });
  // The writer flushes every 200 ms: wait for the whole day in the store.
  await waitUntil("a day of samples in the store", async () => (await storedPoints()) >= 700, 30_000);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
});

afterAll(async () => {
  await browser?.close();
  await sim?.proc.stop();
  await agg?.proc.stop();
  const values = Object.values(switches).sort((a, b) => a - b);
  const median = values.length ? values[Math.floor(values.length / 2)] : NaN;
  writeFileSync(join(out, "range-timings.json"), JSON.stringify({ switches, median }, null, 2));
  console.log("range switch to a drawn CPU chart (ms):", switches, "median:", median);
});

describe("host page time ranges", () => {
  it("draws 24 h from the store as an average with a min–max band", async () => {
    const page = await newPage();
    await page.goto(`${agg.httpUrl}/#/host/${HOST}?range=24h`);
    const cpu = page.getByTestId("chart-cpu");
    await expect.poll(() => cpu.getAttribute("data-range"), { timeout: 15_000 }).toBe("24h");
    await expect.poll(() => cpu.getAttribute("data-drawn"), { timeout: 15_000 }).toBe("24h");
    // 2 min steps over a day: about 720 buckets, from the 1-minute tier.
    expect(Number(await cpu.getAttribute("data-points"))).toBeGreaterThanOrEqual(700);
    expect(await cpu.getAttribute("data-band")).toBe("1");
    await expect.poll(() => page.getByTestId("range-status").textContent()).toMatch(/1m tier, one point per 2m/);
    expect(await page.getByTestId("range-24h").getAttribute("class")).toBe("on");
    // The legend names the average and its band's edges.
    const legend = await cpu.locator(".u-legend .u-series .u-label").allTextContents();
    expect(legend).toEqual(expect.arrayContaining(["total", "total min", "total max"]));
    // Drawn: the average line, opaque, and the band, translucent, on the canvas.
    const colours = await canvasColours(page, "chart-cpu");
    expect(colours.line).toBeGreaterThan(500);
    expect(colours.band).toBeGreaterThan(2000);
    // Memory is flat in this simulation: every bucket's min is its max, no band.
    const memory = page.getByTestId("chart-memory");
    await expect.poll(() => memory.getAttribute("data-drawn")).toBe("24h");
    expect(await memory.getAttribute("data-band")).toBe("0");
    // Its byte axis: binary steps from 0, one unit, labels in order.
    const ticks = (await memory.getAttribute("data-yticks"))!.split("|");
    expect(ticks[0]).toMatch(/^0 (B|KiB|MiB|GiB)$/);
    const unit = ticks[0].split(" ")[1];
    const values = ticks.map((t) => {
      expect(t.endsWith(` ${unit}`)).toBe(true);
      return parseFloat(t);
    });
    const step = values[1];
    values.forEach((v, i) => expect(v).toBeCloseTo(i * step, 6));
    expect(Math.log2(step) % 1).toBe(0);
    await page.screenshot({ path: join(out, "host-24h.png"), fullPage: true });
    await page.close();
  });

  it("switches ranges in the URL, loads them from it, and zooms on a drag", async () => {
    const page = await newPage();
    await page.goto(`${agg.httpUrl}/#/host/${HOST}?range=24h`);
    await expect.poll(() => page.getByTestId("chart-cpu").getAttribute("data-drawn"), { timeout: 15_000 }).toBe("24h");

    let from = "24h";
    for (const key of ["6h", "7d", "1h", "24h", "30d", "1y", "24h"]) {
      switches[`${Object.keys(switches).length + 1}: ${from} → ${key}`] = await switchTo(page, key);
      from = key;
      expect(new URL(page.url()).hash).toBe(`#/host/${HOST}?range=${key}`);
      expect(await page.getByTestId(`range-${key}`).getAttribute("class")).toBe("on");
    }
    // Back to live: the WebSocket-driven chart, no range in the URL.
    await page.getByTestId("range-live").click();
    expect(new URL(page.url()).hash).toBe(`#/host/${HOST}`);
    await expect.poll(() => page.getByTestId("chart-cpu").getAttribute("data-range")).toBe("live");
    await waitUntil("live points", async () => Number(await page.getByTestId("chart-cpu").getAttribute("data-points")) > 0);

    // A custom range from the picker's two local date-times (the last 3 h).
    await page.getByTestId("range-custom").click();
    const [fromLocal, toLocal, fromIso, toIso] = await page.evaluate(() => {
      const local = (ms: number) => new Date(ms - new Date(ms).getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
      const to = Math.floor(Date.now() / 60_000) * 60_000;
      const from = to - 3 * 3_600_000;
      const iso = (ms: number) => new Date(ms).toISOString().replace(".000Z", "Z");
      return [local(from), local(to), iso(from), iso(to)];
    });
    await page.getByTestId("custom-from").fill(fromLocal);
    await page.getByTestId("custom-to").fill(toLocal);
    await page.getByTestId("custom-apply").click();
    await waitUntil("custom range in the URL", () => new URL(page.url()).hash === `#/host/${HOST}?from=${fromIso}&to=${toIso}`);
    await expect
      .poll(() => page.getByTestId("chart-cpu").getAttribute("data-drawn"), { timeout: 15_000 })
      .toBe(`${Date.parse(fromIso)}-${Date.parse(toIso)}`);
    // 3 h at 15 s steps from the raw tier: 30 s samples, one a bucket.
    expect(Number(await page.getByTestId("chart-cpu").getAttribute("data-points"))).toBeGreaterThanOrEqual(350);

    // A fresh page opens at the range its URL names.
    const fresh = await newPage();
    await fresh.goto(`${agg.httpUrl}/#/host/${HOST}?range=7d`);
    const cpu = fresh.getByTestId("chart-cpu");
    await expect.poll(() => cpu.getAttribute("data-drawn"), { timeout: 15_000 }).toBe("7d");
    expect(await fresh.getByTestId("range-7d").getAttribute("class")).toBe("on");
    expect(await cpu.getAttribute("data-band")).toBe("1");

    // At 24 h, a drag across the chart zooms in: a custom range in the URL.
    switches[`${Object.keys(switches).length + 1}: 7d → 24h (fresh page)`] = await switchTo(fresh, "24h");
    const over = await cpu.locator(".u-over").boundingBox();
    expect(over).not.toBeNull();
    const y = over!.y + over!.height / 2;
    await fresh.mouse.move(over!.x + over!.width * 0.5, y);
    await fresh.mouse.down();
    await fresh.mouse.move(over!.x + over!.width * 0.65, y, { steps: 5 });
    await fresh.mouse.move(over!.x + over!.width * 0.8, y, { steps: 5 });
    await fresh.mouse.up();
    await waitUntil("zoomed URL", () => /\?from=[0-9TZ:-]+&to=[0-9TZ:-]+$/.test(new URL(fresh.url()).hash));
    const q = new URLSearchParams(new URL(fresh.url()).hash.split("?")[1]);
    const span = Date.parse(q.get("to")!) - Date.parse(q.get("from")!);
    // 30 % of the day, give or take the plot's edges.
    expect(span).toBeGreaterThan(0.25 * DAY);
    expect(span).toBeLessThan(0.35 * DAY);
    expect(await fresh.getByTestId("range-custom").getAttribute("class")).toBe("on");
    await expect.poll(() => cpu.getAttribute("data-drawn"), { timeout: 15_000 }).toMatch(/^\d+-\d+$/);
    expect(Number(await cpu.getAttribute("data-points"))).toBeGreaterThan(100);
    await fresh.screenshot({ path: join(out, "host-zoomed.png"), fullPage: true });

    // The zoomed URL, shared: a fresh page shows the same custom range.
    const shared = await newPage();
    await shared.goto(fresh.url());
    await expect
      .poll(() => shared.getByTestId("chart-cpu").getAttribute("data-drawn"), { timeout: 15_000 })
      .toBe(await cpu.getAttribute("data-drawn"));
    await Promise.all([page.close(), fresh.close(), shared.close()]);
    expect(consoleErrors).toEqual([]);
  });
});
