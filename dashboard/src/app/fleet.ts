// The fleet overview's model: one row per host with online state, labels,
// latest CPU, memory and load, and a short CPU series for its sparkline.
// Filled from the REST snapshot on open and kept live from the `hosts` and
// `host.*.<metric>` topics. Listeners are told at most once per `notifyMs`
// (the view re-sorts thousands of rows on each notice, so not per update).
// Each row carries its own revision, so a notice redraws only the rows that
// changed; the store's `shape` revision moves only when hosts come or go or
// their labels, state or aggregator change, so sorting by name or label and
// listing the labels are not redone for a wave of metric updates.
//
// How much it asks for depends on the fleet's size, known from the first
// snapshot: a small fleet gets every CPU point (history and live, as the
// host pages do); a large one asks history for one point per
// `SPARK_EVERY_MS` (`history_every_ms`) and throttles the live metrics to
// the same pace, so 5,000 hosts cost about 5,000 × `SPARK_INTERVALS` points
// on open and a few thousand updates per 5 s after.
//
// Alert badges (`setAlerts`, fed by the alert store) bump only the row of the
// host whose alerts changed, never the shape.

import type { HostpulseClient, SubscribeOptions } from "../client";
import type { CpuPayload, HostEvent, LoadPayload, MemoryPayload, Update } from "../client/types";
import type { HostAlerts } from "./alerts";
import { Series } from "./series";

export interface HostRow {
  host: string;
  online?: boolean;
  hostname?: string;
  labels: Record<string, string>;
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
  /** Alerts firing on the host (the badge), if any. */
  alerts?: HostAlerts;
  /** Bumped on every change to the row. */
  rev: number;
}

/** One host of `GET /api/v1/hosts`. */
export interface RestHost {
  host: string;
  online: boolean;
  last_seen?: string;
  hostname?: string;
  labels?: Record<string, string>;
  aggregator?: string;
  latest?: Record<string, Update>;
}

/** The snapshot the fleet view asks for: only the metrics it shows. */
export const SNAPSHOT_PATH = "/api/v1/hosts?metrics=cpu,memory,load";

/** Points a small fleet's sparklines keep (every sample). */
const SPARK_POINTS = 120;
/** Fleets above this many hosts get thinned history and throttled live metrics. */
export const LARGE_FLEET = 100;
/** A large fleet's sparkline step: one point per this many ms. */
export const SPARK_EVERY_MS = 5000;
/** A large fleet's sparklines span this many steps (5 minutes). */
export const SPARK_INTERVALS = 60;

export class FleetStore {
  private readonly rows = new Map<string, HostRow>();
  /** Firing alerts per host, kept for hosts without a row yet too. */
  private readonly alerts = new Map<string, HostAlerts>();
  private readonly listeners = new Set<() => void>();
  private version = 0;
  /** Bumped when a host comes or goes, or its labels, state or aggregator change. */
  private shape = 0;
  private scheduled = false;
  private lastNotice = 0;
  private client?: HostpulseClient;
  private metricsOff?: () => void;
  /** Whether the metrics were subscribed in large-fleet mode. */
  large?: boolean;

  constructor(private readonly notifyMs = 250) {}

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  getVersion = (): number => this.version;

  /** Moves when hosts come or go, or a host's labels, state or aggregator change. */
  getShape = (): number => this.shape;

  get size(): number {
    return this.rows.size;
  }

  /** Every row, sorted by host name. */
  list(): HostRow[] {
    return [...this.rows.values()].sort((a, b) => a.host.localeCompare(b.host));
  }

  /** Every row, in no particular order (the view sorts what it selects). */
  all(): HostRow[] {
    return [...this.rows.values()];
  }

  /**
   * Subscribes to presence now, and to the metrics once the first snapshot
   * says how large the fleet is (or at once, when `large` is given).
   * Returns the function that stops.
   */
  attach(client: HostpulseClient, large?: boolean): () => void {
    this.client = client;
    const off = client.subscribe("hosts", (u) => this.onHost(u as Update<HostEvent>), { history: 200 });
    if (large !== undefined) this.attachMetrics(large);
    return () => {
      off();
      this.metricsOff?.();
      this.metricsOff = undefined;
      this.client = undefined;
    };
  }

  private attachMetrics(large: boolean): void {
    if (!this.client || this.metricsOff) return;
    this.large = large;
    const client = this.client;
    const cpu: SubscribeOptions = large
      ? { history: SPARK_INTERVALS, historyEveryMs: SPARK_EVERY_MS, throttleMs: SPARK_EVERY_MS }
      : { history: SPARK_POINTS };
    const latest: SubscribeOptions = large ? { history: 1, throttleMs: SPARK_EVERY_MS } : { history: 1 };
    const offs = [
      client.subscribe("host.*.cpu", (u) => this.onMetric(u), cpu),
      client.subscribe("host.*.memory", (u) => this.onMetric(u), latest),
      client.subscribe("host.*.load", (u) => this.onMetric(u), latest),
    ];
    this.metricsOff = () => offs.forEach((o) => o());
  }

  applySnapshot(hosts: RestHost[]): void {
    for (const h of hosts) {
      const row = this.row(h.host);
      this.reshape(row, h.online, h.labels ?? row.labels, h.aggregator ?? row.aggregator);
      row.hostname = h.hostname ?? row.hostname;
      row.rev++;
      const seen = h.last_seen ? Date.parse(h.last_seen) : undefined;
      if (seen !== undefined && (row.lastSeen === undefined || seen > row.lastSeen)) row.lastSeen = seen;
      for (const u of Object.values(h.latest ?? {})) this.onMetric(u, false);
    }
    this.attachMetrics(hosts.length > LARGE_FLEET);
    this.changed(true);
  }

  private row(host: string): HostRow {
    let row = this.rows.get(host);
    if (!row) {
      row = { host, labels: {}, spark: new Series(1, SPARK_POINTS), alerts: this.alerts.get(host), rev: 0 };
      this.rows.set(host, row);
      this.shape++;
    }
    return row;
  }

  /** Sets what the view filters, groups and sorts by without a metric; moves `shape` if any changed. */
  private reshape(row: HostRow, online: boolean, labels: Record<string, string>, aggregator?: string): void {
    if (row.online !== online || row.aggregator !== aggregator || !sameLabels(row.labels, labels)) this.shape++;
    row.online = online;
    row.labels = labels;
    row.aggregator = aggregator;
  }

  /** Sets a host's alert badge (undefined: nothing fires); redraws that row only. */
  setAlerts(host: string, alerts: HostAlerts | undefined): void {
    if (alerts) this.alerts.set(host, alerts);
    else this.alerts.delete(host);
    const row = this.rows.get(host);
    if (!row) return;
    row.alerts = alerts;
    row.rev++;
    this.changed();
  }

  private onHost(u: Update<HostEvent>): void {
    // Departed for `hub.forget_after`: its topics are gone, and so is its row.
    if (u.payload.event === "forgotten") {
      if (this.rows.delete(u.payload.host)) {
        this.shape++;
        this.changed();
      }
      return;
    }
    const row = this.row(u.payload.host);
    this.reshape(row, u.payload.event !== "offline", u.payload.labels ?? row.labels, u.payload.aggregator ?? row.aggregator);
    row.hostname = u.payload.hostname;
    row.rev++;
    this.changed();
  }

  private onMetric(u: Update, notify = true): void {
    const [, host, kind] = u.topic.split(".");
    if (!host || !kind) return;
    const row = this.row(host);
    row.rev++;
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
    if (notify) this.changed();
  }

  /** Tells listeners on the next frame, at most once per `notifyMs` (`now`: next frame). */
  private changed(now = false): void {
    if (now) this.lastNotice = 0;
    if (this.scheduled) return;
    this.scheduled = true;
    const flush = () => {
      this.scheduled = false;
      this.lastNotice = Date.now();
      this.version++;
      for (const l of this.listeners) l();
    };
    const wait = Math.max(0, this.lastNotice + this.notifyMs - Date.now());
    const onFrame = () => (typeof requestAnimationFrame === "function" ? requestAnimationFrame(flush) : setTimeout(flush, 16));
    if (wait > 0) setTimeout(onFrame, wait);
    else onFrame();
  }
}

// ---- What the view shows: search, filters, grouping and sorting ----------

export type SortKey = "host" | "state" | "labels" | "aggregator" | "cpu" | "memory" | "load" | "lastSeen";

export interface FleetQuery {
  /** Case-insensitive substring of the host name (or reported hostname). */
  search: string;
  state: "all" | "online" | "offline";
  /** `key=value`, or "" for any. */
  label: string;
  /** A label key to group by, or "" for no grouping. */
  groupBy: string;
  sort: SortKey;
  descending: boolean;
}

export const DEFAULT_QUERY: FleetQuery = {
  search: "",
  state: "all",
  label: "",
  groupBy: "",
  sort: "host",
  descending: false,
};

/** A line of the virtualised list: a group heading or a host. */
export type FleetItem =
  | { kind: "group"; key: string; value: string; hosts: number; online: number; collapsed: boolean }
  | { kind: "host"; row: HostRow };

/** Each label set's sort text, made once (a row's labels object is replaced, never changed). */
const labelTexts = new WeakMap<Record<string, string>, string>();

function labelText(r: HostRow): string {
  let text = labelTexts.get(r.labels);
  if (text === undefined) {
    text = joinLabels(r.labels);
    labelTexts.set(r.labels, text);
  }
  return text;
}

function joinLabels(labels: Record<string, string>): string {
  return Object.entries(labels)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
}

function sortValue(r: HostRow, key: SortKey): number | string | undefined {
  switch (key) {
    case "host":
      return r.host;
    case "state":
      return r.online === undefined ? undefined : r.online ? 1 : 0;
    case "labels":
      return labelText(r);
    case "aggregator":
      return r.aggregator;
    case "cpu":
      return r.cpu;
    case "memory":
      return r.memPct;
    case "load":
      return r.load1;
    case "lastSeen":
      return r.lastSeen;
  }
}

function sameLabels(a: Record<string, string>, b: Record<string, string>): boolean {
  if (a === b) return true;
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => a[k] === b[k]);
}

/** Sort keys whose order only a change of `FleetStore.getShape` can move. */
export const SHAPE_SORTS: ReadonlySet<SortKey> = new Set(["host", "state", "labels", "aggregator"]);

/** Orders rows by `key`; rows without a value go last either way; ties by host name. */
export function compareRows(key: SortKey, descending: boolean): (a: HostRow, b: HostRow) => number {
  return (a, b) => {
    const va = sortValue(a, key);
    const vb = sortValue(b, key);
    if (va !== vb) {
      if (va === undefined || (typeof va === "number" && Number.isNaN(va))) return 1;
      if (vb === undefined || (typeof vb === "number" && Number.isNaN(vb))) return -1;
      const c =
        typeof va === "string" || typeof vb === "string"
          ? String(va).localeCompare(String(vb))
          : va < vb
            ? -1
            : va > vb
              ? 1
              : 0;
      if (c !== 0) return descending ? -c : c;
    }
    return a.host < b.host ? -1 : a.host > b.host ? 1 : 0;
  };
}

/** Every `key=value` label the fleet carries, and every label key, sorted. */
export function labelsOf(rows: Iterable<HostRow>): { pairs: string[]; keys: string[] } {
  const pairs = new Set<string>();
  const keys = new Set<string>();
  for (const r of rows) {
    for (const [k, v] of Object.entries(r.labels)) {
      pairs.add(`${k}=${v}`);
      keys.add(k);
    }
  }
  const natural = (a: string, b: string) => a.localeCompare(b, undefined, { numeric: true });
  return { pairs: [...pairs].sort(natural), keys: [...keys].sort(natural) };
}

/** The rows `q` selects, sorted. */
export function selectRows(rows: Iterable<HostRow>, q: FleetQuery): HostRow[] {
  const needle = q.search.trim().toLowerCase();
  const eq = q.label.indexOf("=");
  const [lk, lv] = eq > 0 ? [q.label.slice(0, eq), q.label.slice(eq + 1)] : ["", ""];
  const out: HostRow[] = [];
  for (const r of rows) {
    if (needle && !r.host.includes(needle) && !(r.hostname?.toLowerCase().includes(needle) ?? false)) continue;
    if (q.state === "online" && r.online !== true) continue;
    if (q.state === "offline" && r.online !== false) continue;
    if (lk && r.labels[lk] !== lv) continue;
    out.push(r);
  }
  return out.sort(compareRows(q.sort, q.descending));
}

/** Grouping label value for hosts without the label. */
export const UNLABELLED = "(none)";

/** The list the view scrolls: rows, under group headings when grouping. */
export function fleetItems(rows: HostRow[], q: FleetQuery, collapsed: ReadonlySet<string> = new Set()): FleetItem[] {
  if (!q.groupBy) return rows.map((row) => ({ kind: "host", row }));
  const groups = new Map<string, HostRow[]>();
  for (const r of rows) {
    const v = r.labels[q.groupBy] ?? UNLABELLED;
    let g = groups.get(v);
    if (!g) groups.set(v, (g = []));
    g.push(r);
  }
  const names = [...groups.keys()].sort((a, b) =>
    a === UNLABELLED ? 1 : b === UNLABELLED ? -1 : a.localeCompare(b, undefined, { numeric: true }),
  );
  const out: FleetItem[] = [];
  for (const value of names) {
    const members = groups.get(value)!;
    const isCollapsed = collapsed.has(value);
    out.push({
      kind: "group",
      key: q.groupBy,
      value,
      hosts: members.length,
      online: members.filter((m) => m.online === true).length,
      collapsed: isCollapsed,
    });
    if (!isCollapsed) for (const row of members) out.push({ kind: "host", row });
  }
  return out;
}
