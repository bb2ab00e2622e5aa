// Time ranges of the host page: the presets (live, 1 h … 1 y), custom
// ranges, their place in the URL (`#/host/<name>?range=24h` or
// `?from=<RFC 3339>&to=<RFC 3339>`), and the series step that keeps a chart
// at most MAX_POINTS points on a round step the store's tiers serve.

export type PresetKey = "live" | "1h" | "6h" | "24h" | "7d" | "30d" | "1y";

export type Range = { kind: "preset"; key: PresetKey } | { kind: "custom"; from: number; to: number };

const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;

export const PRESETS: { key: PresetKey; label: string; ms: number }[] = [
  { key: "live", label: "live", ms: 5 * MIN },
  { key: "1h", label: "1 h", ms: HOUR },
  { key: "6h", label: "6 h", ms: 6 * HOUR },
  { key: "24h", label: "24 h", ms: DAY },
  { key: "7d", label: "7 d", ms: 7 * DAY },
  { key: "30d", label: "30 d", ms: 30 * DAY },
  { key: "1y", label: "1 y", ms: 365 * DAY },
];

export const LIVE: Range = { kind: "preset", key: "live" };

/** Most points one chart line asks for. */
export const MAX_POINTS = 1000;

/** Steps a range may use (seconds): whole divisions of minutes, hours and days. */
const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

/** The smallest step (ms) giving at most `max` points over `spanMs`. */
export function stepFor(spanMs: number, max = MAX_POINTS): number {
  for (const s of STEPS) if (spanMs / (s * 1000) <= max) return s * 1000;
  return Math.ceil(spanMs / max / DAY) * DAY;
}

/** `5s`, `2m`, `1h`, `1d`: the step as the series API takes it. */
export function stepParam(stepMs: number): string {
  const s = Math.round(stepMs / 1000);
  if (s % 86400 === 0) return `${s / 86400}d`;
  if (s % 3600 === 0) return `${s / 3600}h`;
  if (s % 60 === 0) return `${s / 60}m`;
  return `${s}s`;
}

/**
 * The window `[from, to)` (Unix ms) a range covers at `now`, aligned outwards
 * to its step so buckets stay put as time moves on.
 */
export function windowOf(r: Range, now: number): { from: number; to: number; step: number } {
  const [from, to] = r.kind === "custom" ? [r.from, r.to] : [now - presetMs(r.key), now];
  const step = stepFor(to - from);
  return { from: Math.floor(from / step) * step, to: Math.ceil(to / step) * step, step };
}

function presetMs(key: PresetKey): number {
  return PRESETS.find((p) => p.key === key)?.ms ?? PRESETS[0].ms;
}

/** A time as the URL has it: RFC 3339 (`2026-11-30T08:00:00Z`) or Unix ms. */
function parseTime(v: string | null): number | undefined {
  if (v === null || v === "") return undefined;
  if (/^\d+$/.test(v)) return Number(v);
  const t = Date.parse(v);
  return Number.isFinite(t) ? t : undefined;
}

function formatTime(ms: number): string {
  return new Date(ms).toISOString().replace(".000Z", "Z");
}

/** The range a hash query (`range=24h`, or `from=…&to=…`) names; live otherwise. */
export function parseRange(query: string): Range {
  const q = new URLSearchParams(query.replace(/^\?/, ""));
  const from = parseTime(q.get("from"));
  const to = parseTime(q.get("to"));
  if (from !== undefined && to !== undefined && from < to) return { kind: "custom", from, to };
  const key = q.get("range");
  const preset = PRESETS.find((p) => p.key === key);
  return preset ? { kind: "preset", key: preset.key } : LIVE;
}

/** The hash query for a range: empty for live. */
export function formatRange(r: Range): string {
  if (r.kind === "custom") return `from=${formatTime(r.from)}&to=${formatTime(r.to)}`;
  return r.key === "live" ? "" : `range=${r.key}`;
}

/** The host page's hash for `host` at range `r`. */
export function hostHash(host: string, r: Range): string {
  const q = formatRange(r);
  return `#/host/${encodeURIComponent(host)}${q ? `?${q}` : ""}`;
}

/** Splits a `#/host/<name>?…` hash into its host and range. */
export function parseHostHash(hash: string): { host: string; range: Range } | undefined {
  const m = /^#\/host\/([^?]+)(?:\?(.*))?$/.exec(hash);
  if (!m) return undefined;
  return { host: decodeURIComponent(m[1]), range: parseRange(m[2] ?? "") };
}

/** A short stable name of a range (for tests and redraw keys). */
export function rangeKey(r: Range): string {
  return r.kind === "custom" ? `${r.from}-${r.to}` : r.key;
}
