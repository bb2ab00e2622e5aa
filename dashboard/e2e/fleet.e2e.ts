// The fleet view at 5,000 hosts, in a real browser (Debian's chromium via
// playwright-core) against the real aggregator binary, the hosts simulated by
// `hostpulse-fleet-sim` over real gRPC streams (one per host, with `role` and
// `rack` labels, half a minute of history each, then a sample every 5 s;
// every tenth host goes offline).
//
// It asserts what a user sees: search, the state and label filters,
// grouping (and collapsing a group), sorting by columns, sparklines filled
// from thinned history, and that only the rows in view are in the page.
// It measures, and reports without asserting (the machine is shared):
// first paint (navigation start to the first row with data drawn) and
// scrolling (requestAnimationFrame frame times while the list scrolls for a
// few seconds). Figures go to test-output/fleet-timings.json and the log.

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Aggregator, type FleetSim, repoRoot, startAggregator, startFleetSim, waitUntil } from "./harness";

const HOSTS = 5000;
/** Samples of history per host, one second apart: the view asks one per 5 s. */
const BACKLOG = 30;

const out = join(repoRoot, "dashboard/test-output");
mkdirSync(out, { recursive: true });

let browser: Browser;
let agg: Aggregator;
let sim: FleetSim;
/** When the simulator started (its hosts' history begins BACKLOG s before). */
let simStarted = 0;
const consoleErrors: string[] = [];
const timings: Record<string, unknown> = {};

async function newPage(): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  page.on("console", (msg) => {
    if (msg.type() === "error") consoleErrors.push(`${msg.text()} (${msg.location().url})`);
  });
  page.on("pageerror", (err) => consoleErrors.push(`uncaught: ${err.message}`));
  return page;
}

/** Offline hosts according to the aggregator. */
async function offlineCount(): Promise<number> {
  const res = await fetch(`${agg.httpUrl}/api/v1/hosts?metrics=none`);
  const hosts = (await res.json()) as { online: boolean }[];
  return hosts.filter((h) => !h.online).length;
}

/** The rows in the page, in list order: host, state, labels, CPU, memory, load as shown. */
async function visibleRows(page: Page) {
  return page.evaluate(() =>
    [...document.querySelectorAll<HTMLElement>("[data-testid^='host-row-']")].map((row) => {
      const text = (id: string) => row.querySelector(`[data-testid='${id}']`)?.textContent ?? "";
      return {
        host: row.dataset.host!,
        state: text("host-state"),
        labels: text("host-labels"),
        cpu: parseFloat(text("host-cpu")),
        memory: parseFloat(text("host-memory")),
        load: parseFloat(text("host-load")),
      };
    }),
  );
}

async function shown(page: Page): Promise<number> {
  return Number(await page.getByTestId("fleet-count").getAttribute("data-shown"));
}

function isSorted(values: number[], descending: boolean): boolean {
  return values.every((v, i) => i === 0 || (descending ? values[i - 1] >= v : values[i - 1] <= v));
}

beforeAll(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
  });
  agg = await startAggregator();
  simStarted = Date.now();
  // A debug aggregator on a busy 2-core machine may take minutes to take it all in.
  sim = await startFleetSim(agg.ingest, { hosts: HOSTS, backlog: BACKLOG, intervalMs: 5000, durationSecs: 900 }, 400_000);
  timings.fleet_ready_s = (Date.now() - simStarted) / 1000;
  // Every tenth host went offline; the rest stay online.
  await waitUntil("500 hosts offline", async () => (await offlineCount()) === HOSTS / 10, 60_000);
}, 500_000);

afterAll(async () => {
  await browser?.close();
  await sim?.proc.stop();
  await agg?.proc.stop();
  writeFileSync(join(out, "fleet-timings.json"), JSON.stringify(timings, null, 2));
  console.log(`fleet view with ${HOSTS} hosts:`, JSON.stringify(timings, null, 2));
});

describe(`fleet view with ${HOSTS} hosts`, () => {
  it("paints the first rows fast, fills sparklines from thinned history, and scrolls", async () => {
    const page = await newPage();
    await page.goto(agg.httpUrl);
    await expect.poll(() => page.getByTestId("fleet-count").getAttribute("data-total"), { timeout: 30_000 }).toBe(String(HOSTS));
    const firstRow = await waitUntil("first row with data", () => page.evaluate(() => window.__hostpulse?.firstRow), 30_000);
    timings.first_paint_ms = Math.round(firstRow);
    // Where the time went: the snapshot request's start and length.
    const snapshot = await page.evaluate(() => {
      const e = (performance.getEntriesByType("resource") as PerformanceResourceTiming[]).find((r) =>
        r.name.includes("/api/v1/hosts"),
      );
      return e ? { start: Math.round(e.startTime), duration: Math.round(e.duration), bytes: e.encodedBodySize } : null;
    });
    timings.snapshot_request_start_ms = snapshot?.start;
    timings.snapshot_request_ms = snapshot?.duration;
    timings.snapshot_bytes = snapshot?.bytes;

    // Sparklines: a minute of samples a second apart, then one per 5 s,
    // arrives as one point per 5 s: far fewer points than samples.
    const spark = page.getByTestId("spark-sim-00001");
    await waitUntil("sparkline filled", async () => Number(await spark.getAttribute("data-points")) >= 5, 60_000);
    const points = Number(await spark.getAttribute("data-points"));
    const spanS = BACKLOG + (Date.now() - simStarted) / 1000;
    // Unthinned it would be BACKLOG points from history alone, plus the live ones.
    expect(points).toBeLessThanOrEqual(Math.ceil(spanS / 5) + 2);
    timings.sparkline_points = points;
    timings.first_sparkline_ms = Math.round(await page.evaluate(() => window.__hostpulse!.firstPoint["spark-sim-00001"]));

    // Virtualised: a screenful of rows in the page, not 5,000.
    const inPage = await page.locator("[data-testid^='host-row-']").count();
    expect(inPage).toBeGreaterThan(10);
    expect(inPage).toBeLessThan(80);
    expect(Number(await page.getByTestId("fleet-body").getAttribute("data-items"))).toBe(HOSTS);
    await page.screenshot({ path: join(out, "fleet-5000.png") });

    // Scrolling: 40 px per frame for 5 s, wrapping at the end, timing frames.
    const scroll = await page.evaluate(async () => {
      const el = document.querySelector<HTMLElement>("[data-testid='fleet-scroll']")!;
      const deltas: number[] = [];
      await new Promise<void>((done) => {
        let last = performance.now();
        const end = last + 5000;
        const step = (now: number) => {
          deltas.push(now - last);
          last = now;
          el.scrollTop = el.scrollTop + 40 >= el.scrollHeight - el.clientHeight ? 0 : el.scrollTop + 40;
          if (now < end) requestAnimationFrame(step);
          else done();
        };
        requestAnimationFrame((now) => {
          last = now;
          requestAnimationFrame(step);
        });
      });
      const sorted = [...deltas].sort((a, b) => a - b);
      const q = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
      const total = deltas.reduce((a, b) => a + b, 0);
      return {
        frames: deltas.length,
        fps: Math.round((deltas.length / total) * 1000 * 10) / 10,
        p50_ms: Math.round(q(0.5) * 10) / 10,
        p95_ms: Math.round(q(0.95) * 10) / 10,
        p99_ms: Math.round(q(0.99) * 10) / 10,
        max_ms: Math.round(sorted[sorted.length - 1] * 10) / 10,
        over_25ms: deltas.filter((d) => d > 25).length,
        scrolled_to: el.scrollTop,
      };
    });
    timings.scroll = scroll;
    expect(scroll.frames).toBeGreaterThan(10);
    // Rows still drawn after scrolling far down.
    expect((await visibleRows(page)).length).toBeGreaterThan(10);
    await page.close();
  });

  it("searches, filters by state and label, groups and sorts", async () => {
    const page = await newPage();
    await page.goto(agg.httpUrl);
    await expect.poll(() => page.getByTestId("fleet-count").getAttribute("data-total"), { timeout: 30_000 }).toBe(String(HOSTS));
    await waitUntil("rows with data", async () => (await visibleRows(page)).some((r) => Number.isFinite(r.cpu)), 30_000);

    // Search by host name.
    await page.getByTestId("fleet-search").fill("sim-0001");
    await expect.poll(() => shown(page)).toBe(10);
    let rows = await visibleRows(page);
    expect(rows.map((r) => r.host)).toEqual(Array.from({ length: 10 }, (_, i) => `sim-0001${i}`));
    await page.getByTestId("fleet-search").fill("");

    // Filter by state.
    await page.getByTestId("fleet-state").selectOption("offline");
    await expect.poll(() => shown(page)).toBe(HOSTS / 10);
    rows = await visibleRows(page);
    expect(rows.length).toBeGreaterThan(5);
    expect(rows.every((r) => r.state === "offline")).toBe(true);
    expect(rows.slice(0, 3).map((r) => r.host)).toEqual(["sim-00010", "sim-00020", "sim-00030"]);

    // And by label: online database hosts (every fifth host is a db, none of them offline).
    await page.getByTestId("fleet-state").selectOption("online");
    await page.getByTestId("fleet-label").selectOption("role=db");
    await expect.poll(() => shown(page)).toBe(HOSTS / 5);
    rows = await visibleRows(page);
    expect(rows.every((r) => r.state === "online" && r.labels.includes("role=db"))).toBe(true);
    await page.getByTestId("fleet-state").selectOption("all");
    await page.getByTestId("fleet-label").selectOption("");
    await expect.poll(() => shown(page)).toBe(HOSTS);

    // Group by rack: 20 racks of 250, the first group's hosts under it.
    await page.getByTestId("fleet-group").selectOption("rack");
    const r01 = page.getByTestId("group-r01");
    await r01.waitFor();
    expect(await r01.getAttribute("data-hosts")).toBe("250");
    expect(Number(await page.getByTestId("fleet-body").getAttribute("data-items"))).toBe(HOSTS + 20);
    await page.screenshot({ path: join(out, "fleet-5000-grouped.png") });
    // Collapsing r01 brings r02 to the top.
    await r01.click();
    await page.getByTestId("group-r02").waitFor();
    rows = await visibleRows(page);
    expect(rows.every((r) => r.labels.includes("rack=r02") || r.labels.includes("rack=r03"))).toBe(true);
    await page.getByTestId("fleet-group").selectOption("");

    // Sort by CPU (largest first, then smallest), memory and load, and host name back to front.
    const sortCpu = page.getByTestId("fleet-sort-cpu");
    await sortCpu.click();
    await expect.poll(() => sortCpu.getAttribute("aria-sort")).toBe("descending");
    await expect.poll(async () => isSorted((await visibleRows(page)).map((r) => r.cpu), true)).toBe(true);
    await sortCpu.click();
    await expect.poll(() => sortCpu.getAttribute("aria-sort")).toBe("ascending");
    await expect.poll(async () => isSorted((await visibleRows(page)).map((r) => r.cpu), false)).toBe(true);
    await page.getByTestId("fleet-sort-memory").click();
    await expect.poll(async () => isSorted((await visibleRows(page)).map((r) => r.memory), true)).toBe(true);
    await page.getByTestId("fleet-sort-load").click();
    await expect.poll(async () => isSorted((await visibleRows(page)).map((r) => r.load), true)).toBe(true);
    const sortHost = page.getByTestId("fleet-sort-host");
    await sortHost.click();
    await expect.poll(() => sortHost.getAttribute("aria-sort")).toBe("ascending");
    await sortHost.click();
    await expect.poll(async () => (await visibleRows(page))[0]?.host).toBe("sim-05000");
    await page.close();
  });

  it("kept the browser console free of errors", () => {
    expect(consoleErrors, consoleErrors.join("\n")).toEqual([]);
  });
});
