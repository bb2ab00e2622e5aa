// The fleet overview's model: one row per host with online state, latest CPU,
// memory and load, and a short CPU series for its sparkline. Filled from the
// REST snapshot on open and kept live from the `hosts` and `host.*.<metric>`
// topics. Listeners are told at most once per animation frame.

import type { HostpulseClient } from "../client";
import type { CpuPayload, HostEvent, LoadPayload, MemoryPayload, Update } from "../client/types";
import { Series } from "./series";

export interface HostRow {
  host: string;
  online?: boolean;
  hostname?: string;
  /** Cluster mode: the aggregator the host is attached to. */
  aggregator?: string;
  lastSeen?: number;
  cpu?: number;
  cores?: number;
  memPct?: number;
  memUsed?: number;
  memTotal?: number;
  load1?: number;
  spark: Series;
}

/** One host of `GET /api/v1/hosts`. */
export interface RestHost {
  host: string;
  online: boolean;
  last_seen?: string;
  hostname?: string;
  aggregator?: string;
  latest?: Record<string, Update>;
}

const SPARK_POINTS = 120;

export class FleetStore {
  private readonly rows = new Map<string, HostRow>();
  private readonly listeners = new Set<() => void>();
  private version = 0;
  private scheduled = false;

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  getVersion = (): number => this.version;

  list(): HostRow[] {
    return [...this.rows.values()].sort((a, b) => a.host.localeCompare(b.host));
  }

  /** Subscribes to what the overview shows; returns the function that stops. */
  attach(client: HostpulseClient): () => void {
    const offs = [
      client.subscribe("hosts", (u) => this.onHost(u as Update<HostEvent>), { history: 200 }),
      client.subscribe("host.*.cpu", (u) => this.onMetric(u), { history: SPARK_POINTS }),
      client.subscribe("host.*.memory", (u) => this.onMetric(u), { history: 1 }),
      client.subscribe("host.*.load", (u) => this.onMetric(u), { history: 1 }),
    ];
    return () => offs.forEach((off) => off());
  }

  applySnapshot(hosts: RestHost[]): void {
    for (const h of hosts) {
      const row = this.row(h.host);
      row.online = h.online;
      row.hostname = h.hostname ?? row.hostname;
      row.aggregator = h.aggregator ?? row.aggregator;
      const seen = h.last_seen ? Date.parse(h.last_seen) : undefined;
      if (seen !== undefined && (row.lastSeen === undefined || seen > row.lastSeen)) row.lastSeen = seen;
      for (const u of Object.values(h.latest ?? {})) this.onMetric(u);
    }
    this.changed();
  }

  private row(host: string): HostRow {
    let row = this.rows.get(host);
    if (!row) {
      row = { host, spark: new Series(1, SPARK_POINTS) };
      this.rows.set(host, row);
    }
    return row;
  }

  private onHost(u: Update<HostEvent>): void {
    // Departed for `hub.forget_after`: its topics are gone, and so is its row.
    if (u.payload.event === "forgotten") {
      if (this.rows.delete(u.payload.host)) this.changed();
      return;
    }
    const row = this.row(u.payload.host);
    row.online = u.payload.event !== "offline";
    row.hostname = u.payload.hostname;
    row.aggregator = u.payload.aggregator ?? row.aggregator;
    this.changed();
  }

  private onMetric(u: Update): void {
    const [, host, kind] = u.topic.split(".");
    if (!host || !kind) return;
    const row = this.row(host);
    const t = Date.parse(u.timestamp);
    if (row.lastSeen === undefined || t > row.lastSeen) row.lastSeen = t;
    if (kind === "cpu") {
      const p = u.payload as CpuPayload;
      row.cpu = p.total_pct;
      row.cores = p.per_core_pct.length;
      row.spark.push(t, [p.total_pct]);
    } else if (kind === "memory") {
      const p = u.payload as MemoryPayload;
      row.memUsed = p.used_bytes;
      row.memTotal = p.total_bytes;
      row.memPct = p.total_bytes > 0 ? (100 * p.used_bytes) / p.total_bytes : undefined;
    } else if (kind === "load") {
      row.load1 = (u.payload as LoadPayload).one;
    }
    this.changed();
  }

  private changed(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    const flush = () => {
      this.scheduled = false;
      this.version++;
      for (const l of this.listeners) l();
    };
    if (typeof requestAnimationFrame === "function") requestAnimationFrame(flush);
    else setTimeout(flush, 16);
  }
}
