// The fleet overview's store: a host announced `forgotten` on `hosts`
// leaves the list (its topics are gone), and one announced again comes back.

import { describe, expect, it } from "vitest";
import type { HostpulseClient } from "../src/client";
import type { HostEvent, Update } from "../src/client/types";
import { FleetStore } from "../src/app/fleet";

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

describe("FleetStore", () => {
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
