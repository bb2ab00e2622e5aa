// The fleet overview's store: a host announced `forgotten` on `hosts`
// leaves the list (its topics are gone), and one announced again comes back;
// what a large fleet subscribes to; and the view's search, filters, grouping
// and sorting.

import { describe, expect, it } from "vitest";
import type { HostpulseClient } from "../src/client";
import type { HostEvent, Update } from "../src/client/types";
import {
  DEFAULT_QUERY,
  type FleetQuery,
  FleetStore,
  fleetItems,
  type HostRow,
  LARGE_FLEET,
  labelsOf,
  selectRows,
  UNLABELLED,
} from "../src/app/fleet";
import { Series } from "../src/app/series";

/** A client that only records what the store subscribes to. */
function recordingClient(): { client: HostpulseClient; deliver: (topic: string, u: Update) => void } {
  const handlers = new Map<string, (u: Update) => void>();
  const client = {
    subscribe(topic: string, handler: (u: Update) => void) {
      handlers.set(topic, handler);
      return () => handlers.delete(topic);
    },
  } as unknown as HostpulseClient;
  return { client, deliver: (topic, u) => handlers.get(topic)?.(u) };
}

function hostEvent(seq: number, host: string, event: HostEvent["event"]): Update<HostEvent> {
  return {
    topic: "hosts",
    seq,
    timestamp: new Date().toISOString(),
    received: new Date().toISOString(),
    payload: {
      event,
      host,
      agent_id: `agent-${host}`,
      hostname: host,
      epoch: 1,
      version: "0",
      labels: {},
      interval_ms: 1000,
    },
  };
}

function cpuUpdate(seq: number, host: string, pct: number): Update {
  return {
    topic: `host.${host}.cpu`,
    seq,
    timestamp: new Date().toISOString(),
    received: new Date().toISOString(),
    payload: { total_pct: pct, per_core_pct: [pct] },
  } as Update;
}

describe("FleetStore", () => {
  it("moves a row's revision on each of its updates, and the shape only when hosts, labels or states change", () => {
    const store = new FleetStore();
    const { client, deliver } = recordingClient();
    store.attach(client, false);
    deliver("hosts", hostEvent(1, "web-01", "online"));
    deliver("hosts", hostEvent(2, "db-01", "online"));
    const shape = store.getShape();
    const [db, web] = store.list();
    const [dbRev, webRev] = [db.rev, web.rev];
    // Metrics: the updated row's revision moves; the shape does not.
    deliver("host.*.cpu", cpuUpdate(1, "web-01", 40));
    deliver("host.*.cpu", cpuUpdate(2, "web-01", 45));
    expect(web.rev).toBe(webRev + 2);
    expect(db.rev).toBe(dbRev);
    expect(store.getShape()).toBe(shape);
    // The same event again (a reconnect's `online`): same shape.
    deliver("hosts", hostEvent(3, "web-01", "online"));
    expect(store.getShape()).toBe(shape);
    // A state change, a new host, a departed one, new labels: the shape
    // moves each time.
    const relabelled = hostEvent(7, "db-01", "online");
    relabelled.payload.labels = { role: "db" };
    const changes: Array<[string, Update<HostEvent>]> = [
      ["hosts", hostEvent(4, "web-01", "offline")],
      ["hosts", hostEvent(5, "cache-01", "online")],
      ["hosts", hostEvent(6, "cache-01", "forgotten")],
      ["hosts", relabelled],
    ];
    for (const [topic, u] of changes) {
      const before = store.getShape();
      deliver(topic, u);
      expect(store.getShape(), `${u.payload.host} ${u.payload.event}`).toBeGreaterThan(before);
    }
  });

  it("drops a forgotten host's row and shows it again when it comes back", () => {
    const store = new FleetStore();
    const { client, deliver } = recordingClient();
    store.attach(client);
    deliver("hosts", hostEvent(1, "web-01", "online"));
    deliver("hosts", hostEvent(2, "db-01", "online"));
    deliver("hosts", hostEvent(3, "web-01", "offline"));
    expect(store.list().map((r) => [r.host, r.online])).toEqual([
      ["db-01", true],
      ["web-01", false],
    ]);
    deliver("hosts", hostEvent(4, "web-01", "forgotten"));
    expect(store.list().map((r) => r.host)).toEqual(["db-01"]);
    deliver("hosts", hostEvent(5, "web-01", "online"));
    expect(store.list().map((r) => [r.host, r.online])).toEqual([
      ["db-01", true],
      ["web-01", true],
    ]);
  });
});

describe("fleet query", () => {
  function rows(): HostRow[] {
    const mk = (host: string, online: boolean, role: string | undefined, cpu?: number): HostRow => ({
      host,
      online,
      labels: role ? { role, rack: host.endsWith("1") ? "r1" : "r2" } : {},
      cpu,
      spark: new Series(1, 10),
      rev: 0,
    });
    return [
      mk("web-01", true, "web", 50),
      mk("web-02", false, "web", 10),
      mk("db-01", true, "db", 90),
      mk("cache-02", true, undefined),
    ];
  }
  const q = (patch: Partial<FleetQuery>): FleetQuery => ({ ...DEFAULT_QUERY, ...patch });
  const hosts = (rs: HostRow[]) => rs.map((r) => r.host);

  it("searches host names, filters by state and label, sorts by any column", () => {
    expect(hosts(selectRows(rows(), q({})))).toEqual(["cache-02", "db-01", "web-01", "web-02"]);
    expect(hosts(selectRows(rows(), q({ search: "WEB" })))).toEqual(["web-01", "web-02"]);
    expect(hosts(selectRows(rows(), q({ state: "offline" })))).toEqual(["web-02"]);
    expect(hosts(selectRows(rows(), q({ state: "online", label: "role=web" })))).toEqual(["web-01"]);
    // Numbers: hosts without a value go last in both directions.
    expect(hosts(selectRows(rows(), q({ sort: "cpu", descending: true })))).toEqual(["db-01", "web-01", "web-02", "cache-02"]);
    expect(hosts(selectRows(rows(), q({ sort: "cpu" })))).toEqual(["web-02", "web-01", "db-01", "cache-02"]);
    expect(hosts(selectRows(rows(), q({ sort: "state" })))).toEqual(["web-02", "cache-02", "db-01", "web-01"]);
    expect(hosts(selectRows(rows(), q({ sort: "labels" })))).toEqual(["cache-02", "db-01", "web-01", "web-02"]);
    expect(labelsOf(rows())).toEqual({ pairs: ["rack=r1", "rack=r2", "role=db", "role=web"], keys: ["rack", "role"] });
  });

  it("groups by a label, unlabelled hosts last, and collapses a group", () => {
    const query = q({ groupBy: "role", sort: "cpu", descending: true });
    const items = fleetItems(selectRows(rows(), query), query);
    expect(items.map((i) => (i.kind === "group" ? `[${i.value} ${i.hosts}/${i.online}]` : i.row.host))).toEqual([
      "[db 1/1]",
      "db-01",
      "[web 2/1]",
      "web-01",
      "web-02",
      `[${UNLABELLED} 1/1]`,
      "cache-02",
    ]);
    const folded = fleetItems(selectRows(rows(), query), query, new Set(["web"]));
    expect(folded.filter((i) => i.kind === "host").map((i) => (i.kind === "host" ? i.row.host : ""))).toEqual(["db-01", "cache-02"]);
  });

  it("asks a large fleet for thinned history and throttled live metrics", () => {
    const asked = new Map<string, unknown>();
    const client = {
      subscribe(topic: string, _h: unknown, options: unknown) {
        asked.set(topic, options);
        return () => asked.delete(topic);
      },
    } as unknown as HostpulseClient;
    const store = new FleetStore();
    store.attach(client);
    expect([...asked.keys()]).toEqual(["hosts"]);
    store.applySnapshot(Array.from({ length: LARGE_FLEET + 1 }, (_, i) => ({ host: `h-${i}`, online: true })));
    expect(asked.get("host.*.cpu")).toEqual({ history: 60, historyEveryMs: 5000, throttleMs: 5000 });
    expect(asked.get("host.*.memory")).toEqual({ history: 1, throttleMs: 5000 });

    const small = new FleetStore();
    asked.clear();
    small.attach(client);
    small.applySnapshot([{ host: "a", online: true }]);
    expect(asked.get("host.*.cpu")).toEqual({ history: 120 });
  });
});
