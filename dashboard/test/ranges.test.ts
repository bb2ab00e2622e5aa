// The host page's time ranges and byte axes: binary ticks (the disk chart's
// 8.6/9.1/9.5 MiB/s case), the range in the URL (parse, format, round trip),
// the step a range asks for, and series answers turned into chart columns
// (sums, gaps, the min–max band only for rollups).

import { describe, expect, it } from "vitest";
import { failure, type SeriesAnswer, toColumns } from "../src/app/history";
import {
  formatRange,
  hostHash,
  LIVE,
  parseHostHash,
  parseRange,
  PRESETS,
  stepFor,
  stepParam,
  windowOf,
} from "../src/app/range";
import { byteTicks } from "../src/app/ticks";

const MiB = 1024 * 1024;

describe("byteTicks", () => {
  it("puts a 8.6–9.5 MiB/s disk chart on ordered binary ticks from 0", () => {
    const t = byteTicks(9.5 * MiB, "/s");
    expect(t.values[0]).toBe(0);
    for (let i = 1; i < t.values.length; i++) expect(t.values[i]).toBeGreaterThan(t.values[i - 1]);
    const step = t.values[1];
    expect(Math.log2(step) % 1).toBe(0); // a power of two bytes
    t.values.forEach((v, i) => expect(v).toBe(i * step));
    expect(t.max).toBeGreaterThanOrEqual(9.5 * MiB);
    expect(t.labels).toEqual(["0 MiB/s", "2 MiB/s", "4 MiB/s", "6 MiB/s", "8 MiB/s", "10 MiB/s"]);
    // Labels read in order, bottom to top.
    const nums = t.labels.map((l) => parseFloat(l));
    expect([...nums].sort((a, b) => a - b)).toEqual(nums);
  });

  it("uses one unit and halves/quarters of it when the data is small", () => {
    expect(byteTicks(2.3 * MiB).labels).toEqual(["0 MiB", "0.5 MiB", "1 MiB", "1.5 MiB", "2 MiB", "2.5 MiB"]);
    expect(byteTicks(900 * 1024).labels).toEqual(["0 MiB", "0.25 MiB", "0.5 MiB", "0.75 MiB", "1 MiB"]);
    expect(byteTicks(300 * 1024).labels).toEqual(["0 KiB", "64 KiB", "128 KiB", "192 KiB", "256 KiB", "320 KiB"]);
  });

  it("scales to GiB and TiB", () => {
    expect(byteTicks(7.2 * 1024 * MiB).labels).toEqual(["0 GiB", "2 GiB", "4 GiB", "6 GiB", "8 GiB"]);
    expect(byteTicks(3 * 1024 ** 4).labels.at(-1)).toBe("4 TiB");
  });

  it("draws an empty or flat-zero chart from 0 to 1 B", () => {
    expect(byteTicks(0).values).toEqual([0, 1]);
    expect(byteTicks(Number.NaN).labels).toEqual(["0 B", "1 B"]);
  });

  it("never gives more than the asked number of steps", () => {
    for (let v = 1; v < 1e13; v *= 1.37) {
      const t = byteTicks(v);
      expect(t.values.length - 1).toBeLessThanOrEqual(5);
      expect(t.max).toBeGreaterThanOrEqual(v);
      expect(new Set(t.labels).size).toBe(t.labels.length);
    }
  });
});

describe("ranges in the URL", () => {
  it("parses presets, custom ranges and falls back to live", () => {
    expect(parseRange("range=24h")).toEqual({ kind: "preset", key: "24h" });
    expect(parseRange("?range=7d")).toEqual({ kind: "preset", key: "7d" });
    expect(parseRange("")).toEqual(LIVE);
    expect(parseRange("range=3w")).toEqual(LIVE);
    expect(parseRange("from=2026-11-30T08:00:00Z&to=2026-11-30T09:30:00Z")).toEqual({
      kind: "custom",
      from: Date.parse("2026-11-30T08:00:00Z"),
      to: Date.parse("2026-11-30T09:30:00Z"),
    });
    expect(parseRange("from=1000&to=2000")).toEqual({ kind: "custom", from: 1000, to: 2000 });
    // Backwards or half-given custom ranges are not ranges.
    expect(parseRange("from=2000&to=1000")).toEqual(LIVE);
    expect(parseRange("from=2000&range=1h")).toEqual({ kind: "preset", key: "1h" });
  });

  it("formats what it parses", () => {
    for (const p of PRESETS) expect(parseRange(formatRange({ kind: "preset", key: p.key }))).toEqual({ kind: "preset", key: p.key });
    const custom = { kind: "custom" as const, from: Date.parse("2026-11-29T10:15:00Z"), to: Date.parse("2026-11-29T11:00:30Z") };
    expect(formatRange(custom)).toBe("from=2026-11-29T10:15:00Z&to=2026-11-29T11:00:30Z");
    expect(parseRange(formatRange(custom))).toEqual(custom);
    expect(formatRange(LIVE)).toBe("");
  });

  it("keeps the host page's hash: host, then the range", () => {
    expect(hostHash("web-01", { kind: "preset", key: "24h" })).toBe("#/host/web-01?range=24h");
    expect(hostHash("web 01", LIVE)).toBe("#/host/web%2001");
    expect(parseHostHash("#/host/web-01?range=24h")).toEqual({ host: "web-01", range: { kind: "preset", key: "24h" } });
    expect(parseHostHash("#/host/web%3F01")).toEqual({ host: "web?01", range: LIVE });
    expect(parseHostHash("#/")).toBeUndefined();
  });
});

describe("steps", () => {
  it("asks at most 1000 points per line on round steps", () => {
    const steps = Object.fromEntries(PRESETS.map((p) => [p.key, stepParam(stepFor(p.ms))]));
    expect(steps).toEqual({ live: "1s", "1h": "5s", "6h": "30s", "24h": "2m", "7d": "15m", "30d": "1h", "1y": "12h" });
    for (const p of PRESETS) expect(p.ms / stepFor(p.ms)).toBeLessThanOrEqual(1000);
  });

  it("aligns a window outwards to its step", () => {
    const now = Date.parse("2026-11-30T10:00:30.500Z");
    const w = windowOf({ kind: "preset", key: "24h" }, now);
    expect(w.step).toBe(120_000);
    expect(w.from % w.step).toBe(0);
    expect(w.to % w.step).toBe(0);
    expect(w.from).toBeLessThanOrEqual(now - 86_400_000);
    expect(w.to).toBeGreaterThanOrEqual(now);
  });
});

describe("toColumns", () => {
  const answer = (tier: string, rows: Record<string, [number, number, number, number][]>): SeriesAnswer => ({
    host: "h",
    from: 0,
    to: 600_000,
    step_ms: 60_000,
    tier,
    series: Object.entries(rows).map(([field, r]) => ({
      field,
      ts: r.map((x) => x[0]),
      min: r.map((x) => x[1]),
      max: r.map((x) => x[2]),
      avg: r.map((x) => x[3]),
      last: r.map((x) => x[3]),
      count: r.map(() => 60),
    })),
  });

  it("sums fields per line, with avg, min and max for a rollup", () => {
    const a = answer("1m", {
      x: [
        [0, 1, 3, 2],
        [60_000, 2, 4, 3],
      ],
      y: [
        [0, 10, 10, 10],
        [60_000, 10, 10, 10],
      ],
    });
    const c = toColumns(a, [["x", "y"]]);
    expect(c.band).toBe(true);
    expect(c.columns).toEqual([
      [0, 60],
      [12, 13],
      [11, 12],
      [13, 14],
    ]);
  });

  it("drops the band when every min equals its max, and breaks the line at a gap", () => {
    const a = answer("raw", {
      x: [
        [0, 5, 5, 5],
        [60_000, 6, 6, 6],
        [240_000, 7, 7, 7],
      ],
    });
    const c = toColumns(a, [["x"]]);
    expect(c.band).toBe(false);
    expect(c.columns).toEqual([
      [0, 60, 120, 240],
      [5, 6, null, 7],
    ]);
    expect(c.points).toBe(3);
  });
});

describe("failure", () => {
  it("says why a range has no history", () => {
    expect(failure(new Error("/api/v1/hosts/h/series?fields=…: HTTP 404"))).toMatch(/no history on disk/);
    expect(failure(new Error("/api/v1/hosts/h/series?fields=…: HTTP 403"))).toMatch(/token/);
    expect(failure(new Error("/api/v1/hosts/h/series?fields=…: HTTP 500"))).toBe("the aggregator answered HTTP 500");
    expect(failure(new Error("Failed to fetch"))).toBe("Failed to fetch");
  });
});
