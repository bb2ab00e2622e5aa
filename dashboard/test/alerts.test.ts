// The alerts model (src/app/alerts.ts): firing → resolved transitions,
// ordering of the panel, per-host counts and worst severity, merging the
// REST snapshot with topic events that arrive twice or out of order, and
// a storm of alerts over a large fleet, and the fleet store's badge
// touching only the row of the host concerned; and how the store loads:
// the snapshot, then the topic, or one line when alerting is off or refused.

import { afterEach, describe, expect, it, vi } from "vitest";
import type { HostpulseClient, SubscribeOptions, Update } from "../src/client";
import {
  AlertStore,
  type Alert,
  type AlertsSnapshot,
  applyAlert,
  applySnapshot,
  emptyState,
  firingList,
  RECENT_MAX,
} from "../src/app/alerts";
import { FleetStore, type RestHost } from "../src/app/fleet";

const T0 = Date.parse("2026-11-30T10:00:00Z");
const at = (s: number) => new Date(T0 + s * 1000).toISOString();

function alert(p: Partial<Alert> & { rule: string; host: string }, startS = 0, endS?: number): Alert {
  return {
    status: endS === undefined ? "firing" : "resolved",
    kind: "threshold",
    severity: "warning",
    value: 95,
    threshold: 90,
    window_secs: 0,
    starts_at: at(startS),
    ends_at: endS === undefined ? undefined : at(endS),
    labels: {},
    annotations: { summary: `${p.rule} on ${p.host}` },
    ...p,
  };
}

describe("alert state", () => {
  it("moves an alert from firing to recent when it resolves", () => {
    const s = emptyState();
    expect(applyAlert(s, alert({ rule: "HostCpu", host: "a" }))).toBe("a");
    expect(s.firing.size).toBe(1);
    expect(s.hosts.get("a")).toEqual({ count: 1, worst: "warning" });

    expect(applyAlert(s, alert({ rule: "HostCpu", host: "a", value: 10 }, 0, 30))).toBe("a");
    expect(s.firing.size).toBe(0);
    expect(s.hosts.has("a")).toBe(false);
    expect(s.recent).toHaveLength(1);
    expect(s.recent[0].value).toBe(10);
  });

  it("counts per host with the worst severity, and per entry", () => {
    const s = emptyState();
    applyAlert(s, alert({ rule: "HostCpu", host: "a", severity: "info" }));
    expect(s.hosts.get("a")).toEqual({ count: 1, worst: "info" });
    applyAlert(s, alert({ rule: "Disk", host: "a", entry: "/", severity: "critical" }));
    applyAlert(s, alert({ rule: "Disk", host: "a", entry: "/data", severity: "critical" }));
    applyAlert(s, alert({ rule: "HostCpu", host: "b" }));
    expect(s.hosts.get("a")).toEqual({ count: 3, worst: "critical" });
    expect(s.hosts.get("b")).toEqual({ count: 1, worst: "warning" });

    // A second firing event of the same alert changes no count.
    expect(applyAlert(s, alert({ rule: "HostCpu", host: "b" }))).toBeUndefined();
    // Resolving the critical ones brings host a back to info.
    applyAlert(s, alert({ rule: "Disk", host: "a", entry: "/", severity: "critical" }, 0, 5));
    expect(s.hosts.get("a")).toEqual({ count: 2, worst: "critical" });
    expect(applyAlert(s, alert({ rule: "Disk", host: "a", entry: "/data", severity: "critical" }, 0, 6))).toBe("a");
    expect(s.hosts.get("a")).toEqual({ count: 1, worst: "info" });
  });

  it("orders firing by severity then newest first, recent newest first", () => {
    const s = emptyState();
    applyAlert(s, alert({ rule: "Old", host: "a" }, 0));
    applyAlert(s, alert({ rule: "New", host: "a" }, 50));
    applyAlert(s, alert({ rule: "Crit", host: "z", severity: "critical" }, 10));
    applyAlert(s, alert({ rule: "Info", host: "b", severity: "info" }, 100));
    expect(firingList(s).map((a) => a.rule)).toEqual(["Crit", "New", "Old", "Info"]);

    applyAlert(s, alert({ rule: "Old", host: "a" }, 0, 200));
    applyAlert(s, alert({ rule: "Info", host: "b", severity: "info" }, 100, 300));
    applyAlert(s, alert({ rule: "Gone", host: "c" }, 0, 250));
    expect(s.recent.map((a) => a.rule)).toEqual(["Info", "Gone", "Old"]);
  });

  it("keeps a resolved incident resolved when its firing event comes late or twice", () => {
    const s = emptyState();
    applyAlert(s, alert({ rule: "HostCpu", host: "a" }, 0, 30));
    expect(applyAlert(s, alert({ rule: "HostCpu", host: "a" }, 0))).toBeUndefined();
    expect(s.firing.size).toBe(0);
    applyAlert(s, alert({ rule: "HostCpu", host: "a" }, 0, 30));
    expect(s.recent).toHaveLength(1);

    // A new incident of the same rule and host fires again.
    expect(applyAlert(s, alert({ rule: "HostCpu", host: "a" }, 60))).toBe("a");
    expect(s.hosts.get("a")?.count).toBe(1);
    // An older firing event does not replace it; the old resolution does not end it.
    applyAlert(s, alert({ rule: "HostCpu", host: "a", value: 1 }, 0));
    applyAlert(s, alert({ rule: "HostCpu", host: "a" }, 0, 30));
    expect(s.firing.values().next().value?.starts_at).toBe(at(60));
  });

  it("counts a storm over 5,000 hosts per host, and empties when it passes", () => {
    const s = emptyState();
    for (let i = 0; i < 5000; i++) {
      applyAlert(s, alert({ rule: "HostCpu", host: `h${i}` }, 0));
      applyAlert(s, alert({ rule: "Mem", host: `h${i}`, severity: i % 2 ? "critical" : "info" }, 1));
    }
    expect(s.firing.size).toBe(10_000);
    expect(s.hosts.get("h7")).toEqual({ count: 2, worst: "critical" });
    expect(s.hosts.get("h8")).toEqual({ count: 2, worst: "warning" });
    for (let i = 0; i < 5000; i++) {
      applyAlert(s, alert({ rule: "HostCpu", host: `h${i}` }, 0, 10));
      applyAlert(s, alert({ rule: "Mem", host: `h${i}` }, 1, 10));
    }
    expect(s.firing.size).toBe(0);
    expect(s.hosts.size).toBe(0);
    expect(s.byHost.size).toBe(0);
  });

  it("keeps at most RECENT_MAX resolved alerts", () => {
    const s = emptyState();
    for (let i = 0; i < RECENT_MAX + 20; i++) applyAlert(s, alert({ rule: "R", host: `h${i}` }, i, i + 1));
    expect(s.recent).toHaveLength(RECENT_MAX);
    expect(s.recent[0].host).toBe(`h${RECENT_MAX + 19}`);
  });

  it("takes a snapshot, then topic history replaying the same transitions changes nothing", () => {
    const s = emptyState();
    const fired = alert({ rule: "HostCpu", host: "a" }, 100);
    const oldFire = alert({ rule: "HostCpu", host: "b" }, 0);
    const oldEnd = alert({ rule: "HostCpu", host: "b" }, 0, 50);
    const snap: AlertsSnapshot = { rules: 1, firing: [fired], history: [fired, oldEnd, oldFire] };
    expect([...applySnapshot(s, snap)]).toEqual(["a"]);
    expect(firingList(s).map((a) => a.host)).toEqual(["a"]);
    expect(s.recent.map((a) => a.host)).toEqual(["b"]);

    for (const a of [oldFire, oldEnd, fired]) applyAlert(s, a);
    expect(firingList(s).map((a) => a.host)).toEqual(["a"]);
    expect(s.recent).toHaveLength(1);

    // A resolution seen on the topic before the snapshot (which still lists it firing) wins.
    const s2 = emptyState();
    applyAlert(s2, alert({ rule: "HostCpu", host: "a" }, 100, 130));
    expect([...applySnapshot(s2, snap)]).toEqual([]);
    expect(s2.firing.size).toBe(0);
  });
});

describe("fleet badges", () => {
  it("bump only the row of the host whose alerts changed", async () => {
    const fleet = new FleetStore(0);
    const hosts: RestHost[] = Array.from({ length: 5000 }, (_, i) => ({ host: `h${i}`, online: true }));
    // No client: applySnapshot subscribes nothing.
    fleet.applySnapshot(hosts);
    const revs = new Map(fleet.all().map((r) => [r.host, r.rev]));
    const shape = fleet.getShape();

    fleet.setAlerts("h42", { count: 2, worst: "critical" });
    const rows = fleet.all();
    const changed = rows.filter((r) => r.rev !== revs.get(r.host)).map((r) => r.host);
    expect(changed).toEqual(["h42"]);
    expect(rows.find((r) => r.host === "h42")?.alerts).toEqual({ count: 2, worst: "critical" });
    expect(fleet.getShape()).toBe(shape);

    fleet.setAlerts("h42", undefined);
    expect(fleet.all().find((r) => r.host === "h42")?.alerts).toBeUndefined();

    // A host with alerts before its row exists gets the badge with the row.
    fleet.setAlerts("late", { count: 1, worst: "warning" });
    fleet.applySnapshot([{ host: "late", online: true }]);
    expect(fleet.all().find((r) => r.host === "late")?.alerts).toEqual({ count: 1, worst: "warning" });
  });
});

describe("alert store", () => {
  afterEach(() => vi.unstubAllGlobals());

  /**
   * A client recording subscriptions; `deliver` plays a topic update,
   * `confirm` the aggregator confirming the `hosts` subscription.
   */
  function fakeClient() {
    const subs = new Map<string, { handler: (u: Update) => void; opts?: SubscribeOptions }>();
    const listeners: Array<(s: { topic: string }) => void> = [];
    const client = {
      subscribe(topic: string, handler: (u: Update) => void, opts?: SubscribeOptions) {
        subs.set(topic, { handler, opts });
        return () => subs.delete(topic);
      },
      on: (event: string, cb: (s: { topic: string }) => void) => {
        if (event === "subscribed") listeners.push(cb);
        return () => undefined;
      },
    } as unknown as HostpulseClient;
    const deliver = (a: Alert, seq: number) =>
      subs.get("alerts")?.handler({ topic: "alerts", seq, timestamp: a.starts_at, received: a.starts_at, payload: a });
    const confirm = () => listeners.forEach((cb) => cb({ topic: "hosts" }));
    return { client, subs, deliver, confirm };
  }

  function serve(status: number, body: unknown) {
    vi.stubGlobal("fetch", async () => new Response(JSON.stringify(body), { status }));
  }

  const settle = () => new Promise((r) => setTimeout(r, 10));

  it("loads the snapshot, then follows the topic and feeds the badges", async () => {
    const firing = alert({ rule: "HostCpu", host: "a", severity: "critical" });
    serve(200, { rules: 2, firing: [firing], history: [firing] });
    const badges = new Map<string, unknown>();
    const store = new AlertStore((host, h) => badges.set(host, h));
    const { client, subs, deliver, confirm } = fakeClient();
    const stop = store.attach(client);
    await settle();
    // Nothing is asked before the aggregator has taken the token.
    expect(store.status).toEqual({ kind: "loading" });
    confirm();
    await settle();
    expect(store.status).toEqual({ kind: "on", rules: 2 });
    expect(badges.get("a")).toEqual({ count: 1, worst: "critical" });
    expect(subs.get("alerts")?.opts?.history).toBeGreaterThan(0);

    // Topic history replays the firing event: nothing changes; then it resolves.
    deliver(firing, 1);
    expect(store.state.firing.size).toBe(1);
    deliver(alert({ rule: "HostCpu", host: "a", severity: "critical" }, 0, 20), 2);
    expect(store.state.firing.size).toBe(0);
    expect(badges.get("a")).toBeUndefined();
    expect(badges.has("a")).toBe(true);
    stop();
    expect(subs.size).toBe(0);
  });

  it("is off without rules, and refused without the grant, subscribing nothing", async () => {
    serve(200, { rules: 0, firing: [], history: [] });
    const off = new AlertStore();
    const a = fakeClient();
    off.attach(a.client);
    a.confirm();
    await settle();
    expect(off.status).toEqual({ kind: "off" });
    expect(a.subs.size).toBe(0);

    serve(403, { error: "forbidden" });
    const refused = new AlertStore();
    const b = fakeClient();
    refused.attach(b.client);
    b.confirm();
    await settle();
    expect(refused.status).toEqual({ kind: "forbidden" });
    expect(b.subs.size).toBe(0);
  });
});
