// The alerts panel and the fleet's alert badges, in a real browser (Debian's
// chromium via playwright-core) against the real aggregator binary with a
// rules file (`cpu.total_pct > 90`, `for = "0s"`). The hosts are simulated by
// `hostpulse-fleet-sim` over real gRPC streams; one of them is told (on the
// simulator's stdin, `--stdin-control`) to report 97 % CPU, so the
// aggregator's own rule evaluation fires on real samples, then to go back to
// its simulated ~37 %, so it resolves.
//
// It asserts what a user sees: the firing alert in `#/alerts` with its rule,
// severity, value and summary, its host linked to the host page, the header's
// count, the badge on that host's fleet row (and on no other), then the
// alert moved to "recently resolved" and the badge gone. And that an
// aggregator without rules, or a token whose grant leaves out `alerts`, gets
// one clear line instead of a panel, with no error from the dashboard.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Aggregator, type FleetSim, repoRoot, startAggregator, startFleetSim } from "./harness";

const out = join(repoRoot, "dashboard/test-output");
mkdirSync(out, { recursive: true });

const RULES = `
[[rule]]
name = "HostCpuHigh"
expr = "cpu.total_pct > 90"
for = "0s"
severity = "critical"
summary = "CPU at {{value}} % on {{host}}"
`;

/** Simulated hosts: alert-00001..3, CPU about 0, 37 and 74 %. */
const HOSTS = 3;
const HOT = 2;
const HOT_HOST = "alert-00002";

let browser: Browser;
let agg: Aggregator;
let sim: FleetSim;
const started: Aggregator[] = [];
const consoleErrors: string[] = [];

async function newPage(allowed: RegExp[] = []): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  page.on("console", (msg) => {
    if (msg.type() !== "error" && msg.type() !== "warning") return;
    const text = `${msg.type()}: ${msg.text()} (${msg.location().url})`;
    if (!allowed.some((a) => a.test(text))) consoleErrors.push(text);
  });
  page.on("pageerror", (err) => consoleErrors.push(`uncaught: ${err.message}`));
  return page;
}

/** What the aggregator itself says fires. */
async function firingOnServer(): Promise<{ host: string; rule: string }[]> {
  const res = await fetch(`${agg.httpUrl}/api/v1/alerts`);
  return ((await res.json()) as { firing: { host: string; rule: string }[] }).firing;
}

beforeAll(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
  });
  agg = await startAggregator({ alertRules: RULES });
  started.push(agg);
  sim = await startFleetSim(agg.ingest, {
    hosts: HOSTS,
    prefix: "alert",
    backlog: 5,
    intervalMs: 250,
    offlineEvery: 0,
    durationSecs: 300,
    control: true,
  });
}, 90_000);

afterAll(async () => {
  await browser?.close();
  await sim?.proc.stop();
  for (const a of started) await a.proc.stop();
});

describe("alerts on the dashboard", () => {
  it("shows a firing alert linked to its host, badges the host, and moves it to recent once resolved", async () => {
    const page = await newPage();
    await page.goto(`${agg.httpUrl}/#/alerts`);
    await expect.poll(() => page.getByTestId("alerts").getAttribute("data-status"), { timeout: 15_000 }).toBe("on");
    await expect.poll(() => page.getByTestId("alerts-quiet").textContent()).toContain("1 rule watched");

    await sim.setCpu(HOT, 97);
    const row = page.locator(`[data-testid='alert-firing'][data-host='${HOT_HOST}']`);
    await expect.poll(() => row.count(), { timeout: 15_000 }).toBe(1);
    expect(await page.getByTestId("alert-firing").count()).toBe(1);
    expect(await row.getByTestId("alert-rule").textContent()).toBe("HostCpuHigh");
    expect(await row.locator(".severity").textContent()).toBe("critical");
    expect(await row.getByTestId("alert-value").textContent()).toBe("97.0 (threshold 90)");
    expect(await row.getByTestId("alert-summary").textContent()).toBe(`CPU at 97 % on ${HOT_HOST}`);
    expect(await page.getByTestId("nav-alerts").getAttribute("data-firing")).toBe("1");
    // The aggregator agrees: the panel shows its evaluation, nothing made up.
    expect(await firingOnServer()).toEqual([expect.objectContaining({ host: HOT_HOST, rule: "HostCpuHigh" })]);
    await page.screenshot({ path: join(out, "alerts-firing.png") });

    // The host is a link to its page.
    const link = row.getByTestId("alert-host");
    expect(await link.getAttribute("href")).toBe(`#/host/${HOT_HOST}`);
    await link.click();
    await expect.poll(() => page.evaluate(() => location.hash)).toBe(`#/host/${HOT_HOST}`);
    await page.getByTestId("host-view").waitFor({ timeout: 10_000 });

    // The fleet view: a badge on that host's row, on no other.
    await page.getByTestId("nav-fleet").click();
    const badge = page.getByTestId(`host-row-${HOT_HOST}`).getByTestId("host-alerts");
    await expect.poll(() => badge.getAttribute("data-count"), { timeout: 10_000 }).toBe("1");
    expect(await badge.getAttribute("data-severity")).toBe("critical");
    expect(await badge.getAttribute("href")).toBe("#/alerts");
    expect(await page.getByTestId("host-alerts").count()).toBe(1);
    await page.screenshot({ path: join(out, "alerts-fleet-badge.png") });

    // The value drops: the alert resolves; the badge goes while the fleet is open.
    await sim.setCpu(HOT, undefined);
    await expect.poll(() => badge.count(), { timeout: 15_000 }).toBe(0);
    expect(await page.getByTestId("host-alerts").count()).toBe(0);
    expect(await page.getByTestId("nav-alerts").getAttribute("data-firing")).toBe("0");
    expect(await firingOnServer()).toEqual([]);

    // The panel lists it as recently resolved, still linked to the host.
    await page.getByTestId("nav-alerts").click();
    await page.getByTestId("alerts-quiet").waitFor({ timeout: 10_000 });
    const resolved = page.locator(`[data-testid='alert-resolved'][data-host='${HOT_HOST}']`);
    await expect.poll(() => resolved.count(), { timeout: 10_000 }).toBe(1);
    expect(await resolved.getByTestId("alert-host").getAttribute("href")).toBe(`#/host/${HOT_HOST}`);
    expect(await page.getByTestId("alert-firing").count()).toBe(0);

    // A page opened now gets the same from the snapshot alone.
    const fresh = await newPage();
    await fresh.goto(`${agg.httpUrl}/#/alerts`);
    await expect.poll(() => fresh.locator("[data-testid='alert-resolved']").count(), { timeout: 15_000 }).toBe(1);
    await page.screenshot({ path: join(out, "alerts-resolved.png") });
    await fresh.close();
    await page.close();
    expect(consoleErrors, consoleErrors.join("\n")).toEqual([]);
  });

  it("says so when alerting is off, or the token may not read alerts", async () => {
    const off = await startAggregator();
    started.push(off);
    const page = await newPage();
    await page.goto(`${off.httpUrl}/#/alerts`);
    await expect.poll(() => page.getByTestId("alerts").getAttribute("data-status"), { timeout: 15_000 }).toBe("off");
    expect(await page.getByTestId("alerts-status").textContent()).toContain("Alerting is off");
    await page.close();

    const narrow = await startAggregator({
      alertRules: RULES,
      extra: `[auth]
anonymous_agents = true
anonymous_clients = true
anonymous_topics = ["hosts", "host.>"]
`,
    });
    started.push(narrow);
    // The browser itself logs the refused request; the dashboard adds nothing.
    const page2 = await newPage([/Failed to load resource: the server responded with a status of 40[13] .*\/api\/v1\/alerts/]);
    await page2.goto(`${narrow.httpUrl}/#/alerts`);
    await expect.poll(() => page2.getByTestId("alerts").getAttribute("data-status"), { timeout: 15_000 }).toBe("forbidden");
    expect(await page2.getByTestId("alerts-status").textContent()).toContain("may not read alerts");
    // The fleet view still works without alerts.
    await page2.getByTestId("nav-fleet").click();
    await page2.getByTestId("fleet").or(page2.locator(".empty")).first().waitFor({ timeout: 10_000 });
    await page2.close();
    expect(consoleErrors, consoleErrors.join("\n")).toEqual([]);
  });
});
