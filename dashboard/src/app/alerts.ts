// The alerts model: what fires now and what resolved lately, and per host how
// many alerts fire and the worst severity (the fleet view's badges).
//
// Initial state comes from `GET /api/v1/alerts` (the aggregator's firing list
// is authoritative, however long ago an alert fired); live transitions from
// the `alerts` topic, subscribed once the snapshot is in, with some history
// so nothing between the two is missed. Transitions may therefore arrive
// twice or out of order, so applying one is idempotent: an alert is one
// incident per (rule, host, entry, starts_at); a resolved incident is never
// brought back by its own late firing event, and a firing event older than
// the incident already firing is ignored.
//
// `AlertState` is plain data with pure functions (unit-tested); `AlertStore`
// holds one, talks to the client and tells listeners and the fleet store.

import type { HostpulseClient, Update } from "../client";
import { getJson, Unauthorized } from "./connection";

export type Severity = "critical" | "warning" | "info" | string;

/** An alert as on the `alerts` topic and in `GET /api/v1/alerts`. */
export interface Alert {
  status: "firing" | "resolved";
  rule: string;
  kind: string;
  severity: Severity;
  host: string;
  entry?: string;
  value: number;
  threshold?: number;
  window_secs: number;
  /** RFC 3339: when the condition began to hold. */
  starts_at: string;
  /** RFC 3339: when it resolved. */
  ends_at?: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  top_cpu?: unknown[];
  top_memory?: unknown[];
}

/** `GET /api/v1/alerts`. */
export interface AlertsSnapshot {
  rules: number;
  firing: Alert[];
  /** Newest first. */
  history: Alert[];
}

export const ALERTS_PATH = "/api/v1/alerts";
/** Resolved alerts kept for the panel. */
export const RECENT_MAX = 100;
/** Topic history asked when subscribing after the snapshot. */
const TOPIC_HISTORY = 100;

/** Firing alerts on one host: how many, and the worst severity. */
export interface HostAlerts {
  count: number;
  worst: Severity;
}

export interface AlertState {
  /** By alert key (rule, host, entry). */
  firing: Map<string, Alert>;
  /** Resolved, newest first, at most RECENT_MAX. */
  recent: Alert[];
  /** Per host with something firing. */
  hosts: Map<string, HostAlerts>;
  /** The keys firing per host, so a transition recounts one host, not every alert. */
  byHost: Map<string, Set<string>>;
  /** The incidents in `recent`. */
  resolved: Set<string>;
}

export function emptyState(): AlertState {
  return { firing: new Map(), recent: [], hosts: new Map(), byHost: new Map(), resolved: new Set() };
}

/** Identifies an alert across its transitions. */
export function alertKey(a: Pick<Alert, "rule" | "host" | "entry">): string {
  return `${a.rule}\u0000${a.host}\u0000${a.entry ?? ""}`;
}

function incident(a: Alert): string {
  return `${alertKey(a)}\u0000${a.starts_at}`;
}

const RANK: Record<string, number> = { critical: 3, warning: 2, info: 1 };

/** Higher is worse; unknown severities rank below `info`. */
export function severityRank(s: Severity): number {
  return RANK[s] ?? 0;
}

/** Firing first by severity (worst first), then newest first, then by host and rule. */
export function compareFiring(a: Alert, b: Alert): number {
  return (
    severityRank(b.severity) - severityRank(a.severity) ||
    Date.parse(b.starts_at) - Date.parse(a.starts_at) ||
    a.host.localeCompare(b.host) ||
    a.rule.localeCompare(b.rule) ||
    (a.entry ?? "").localeCompare(b.entry ?? "")
  );
}

/** The firing alerts in the panel's order. */
export function firingList(s: AlertState): Alert[] {
  return [...s.firing.values()].sort(compareFiring);
}

function endTime(a: Alert): number {
  return Date.parse(a.ends_at ?? a.starts_at);
}

function countHost(s: AlertState, host: string): HostAlerts | undefined {
  let count = 0;
  let worst: Severity = "";
  for (const key of s.byHost.get(host) ?? []) {
    const a = s.firing.get(key);
    if (!a) continue;
    count++;
    if (count === 1 || severityRank(a.severity) > severityRank(worst)) worst = a.severity;
  }
  return count > 0 ? { count, worst } : undefined;
}

function setFiring(s: AlertState, key: string, a: Alert): void {
  s.firing.set(key, a);
  let keys = s.byHost.get(a.host);
  if (!keys) s.byHost.set(a.host, (keys = new Set()));
  keys.add(key);
}

function deleteFiring(s: AlertState, key: string, host: string): void {
  s.firing.delete(key);
  const keys = s.byHost.get(host);
  if (keys?.delete(key) && keys.size === 0) s.byHost.delete(host);
}

/**
 * Applies one transition in place; returns the host whose count or worst
 * severity changed, if any.
 */
export function applyAlert(s: AlertState, a: Alert): string | undefined {
  const key = alertKey(a);
  const current = s.firing.get(key);
  if (a.status === "resolved") {
    const id = incident(a);
    if (!s.resolved.has(id)) {
      // Newest first; a resolution usually is the newest, so this stops at once.
      const t = endTime(a);
      let i = 0;
      while (i < s.recent.length && endTime(s.recent[i]) > t) i++;
      if (i < RECENT_MAX) {
        s.recent.splice(i, 0, a);
        s.resolved.add(id);
      }
      for (const dropped of s.recent.splice(RECENT_MAX)) s.resolved.delete(incident(dropped));
    }
    // It ends the incident firing now, or an older one (never a newer one).
    if (current && Date.parse(current.starts_at) <= Date.parse(a.starts_at)) {
      deleteFiring(s, key, a.host);
      return rehost(s, a.host);
    }
    return undefined;
  }
  if (s.resolved.has(incident(a))) return undefined; // already resolved
  if (current && Date.parse(current.starts_at) > Date.parse(a.starts_at)) return undefined; // older
  setFiring(s, key, a);
  return rehost(s, a.host);
}

function rehost(s: AlertState, host: string): string | undefined {
  const before = s.hosts.get(host);
  const after = countHost(s, host);
  if (after) s.hosts.set(host, after);
  else s.hosts.delete(host);
  return before?.count === after?.count && before?.worst === after?.worst ? undefined : host;
}

/**
 * Takes a snapshot: its firing list replaces what fires (minus incidents
 * already seen resolved), its history joins the recent ones. Returns the
 * hosts whose count or worst severity changed.
 */
export function applySnapshot(s: AlertState, snap: AlertsSnapshot): Set<string> {
  const before = new Map(s.hosts);
  // Oldest first, so a later transition of the same alert wins.
  for (const a of [...snap.history].reverse()) if (a.status === "resolved") applyAlert(s, a);
  const resolved = s.resolved;
  s.firing.clear();
  s.byHost.clear();
  for (const a of snap.firing) if (!resolved.has(incident(a))) setFiring(s, alertKey(a), a);
  s.hosts.clear();
  for (const host of s.byHost.keys()) {
    const h = countHost(s, host);
    if (h) s.hosts.set(host, h);
  }
  const changed = new Set<string>();
  for (const host of new Set([...before.keys(), ...s.hosts.keys()])) {
    const x = before.get(host);
    const y = s.hosts.get(host);
    if (x?.count !== y?.count || x?.worst !== y?.worst) changed.add(host);
  }
  return changed;
}

/** Whether alerts can be shown: loading, on, off (no rules), or not readable with this token. */
export type AlertsStatus =
  | { kind: "loading" }
  | { kind: "on"; rules: number }
  | { kind: "off" }
  | { kind: "forbidden" }
  | { kind: "unavailable"; message: string };

/** Told which hosts' badges changed. */
export type HostSink = (host: string, alerts: HostAlerts | undefined) => void;

export class AlertStore {
  readonly state = emptyState();
  status: AlertsStatus = { kind: "loading" };
  private readonly listeners = new Set<() => void>();
  private version = 0;
  private scheduled = false;

  constructor(private readonly sink?: HostSink) {}

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  getVersion = (): number => this.version;

  /** The alerts firing on `host`, if any. */
  host(host: string): HostAlerts | undefined {
    return this.state.hosts.get(host);
  }

  /**
   * Loads the snapshot, then follows the `alerts` topic (only when the
   * aggregator has rules and the token may read them: a refused or absent
   * alerting is a line in the panel, not an error; an unreachable aggregator
   * is asked again when the connection is back). The snapshot is asked for
   * once the aggregator has confirmed the `hosts` subscription, as the
   * fleet's is: an aggregator that wants a token is not asked without one.
   * Call again after a new token. Returns the function that stops.
   */
  attach(client: HostpulseClient): () => void {
    let off: (() => void) | undefined;
    let stopped = false;
    const load = () =>
      getJson<AlertsSnapshot>(ALERTS_PATH)
        .then((snap) => {
          if (stopped) return;
          this.applySnapshot(snap);
          this.setStatus(snap.rules > 0 ? { kind: "on", rules: snap.rules } : { kind: "off" });
          if (snap.rules > 0 && !off) {
            off = client.subscribe("alerts", (u) => this.apply((u as Update<Alert>).payload), { history: TOPIC_HISTORY });
          }
        })
        .catch((e: Error) => {
          if (stopped) return;
          if (e instanceof Unauthorized) this.setStatus({ kind: "forbidden" });
          else if (/HTTP 404/.test(e.message)) this.setStatus({ kind: "off" });
          else this.setStatus({ kind: "unavailable", message: e.message });
        });
    // The aggregator was unreachable when the page opened: ask again once it is back.
    const offState = client.on("state", (st) => {
      if (st.kind === "live" && this.status.kind === "unavailable") void load();
    });
    let asked = false;
    const offSubscribed = client.on("subscribed", (s) => {
      if (s.topic !== "hosts" || asked) return;
      asked = true;
      void load();
    });
    return () => {
      stopped = true;
      offState();
      offSubscribed();
      off?.();
    };
  }

  applySnapshot(snap: AlertsSnapshot): void {
    for (const host of applySnapshot(this.state, snap)) this.sink?.(host, this.state.hosts.get(host));
    this.changed();
  }

  apply(a: Alert): void {
    const host = applyAlert(this.state, a);
    if (host !== undefined) this.sink?.(host, this.state.hosts.get(host));
    this.changed();
  }

  private setStatus(s: AlertsStatus): void {
    this.status = s;
    this.changed();
  }

  /** Tells listeners on the next tick (transitions are rare; a burst is one notice). */
  private changed(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setTimeout(() => {
      this.scheduled = false;
      this.version++;
      for (const l of this.listeners) l();
    }, 0);
  }
}
