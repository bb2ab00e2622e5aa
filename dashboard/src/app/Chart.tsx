// A uPlot time-series chart (or sparkline) as a React component. The chart is
// created once per line set and layout and fed new data in place (live
// points, or another time range), never re-created per update. It draws
// each line, or with `band` each line's average with its min–max band (the
// columns then hold avg, min, max per line); byte and byte-rate axes tick on
// binary steps (ticks.ts); a drag across it asks `onZoom` for that time span.
// Records when the page drew its first point and each draw's tag
// (window.__hostpulse), and mirrors the drawn state in data- attributes.

import { useEffect, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { byteTicks, type ByteTicks } from "./ticks";

export interface Line {
  label: string;
  stroke: string;
  fill?: string;
}

interface Props {
  /** Identifies the chart in tests and in the first-point record. */
  id: string;
  /** Time in seconds, then one column per line (three with `band`: avg, min, max). */
  columns: (number | null)[][];
  /** Bumped when the columns change, to redraw. */
  version: number;
  lines: Line[];
  height: number;
  sparkline?: boolean;
  yRange?: [number, number];
  yFormat?: (v: number) => string;
  /** A byte axis (`""`) or byte-rate axis (`"/s"`): binary ticks from 0. */
  bytes?: "" | "/s";
  /** The columns hold avg, min and max per line: draw the min–max band. */
  band?: boolean;
  /** The x span to show (seconds), e.g. a whole time range with data in part of it. */
  xRange?: [number, number];
  /** Without `xRange`: show at most the newest this many seconds (live). */
  xLast?: number;
  /** What is drawn (the time range), recorded with each draw. */
  tag?: string;
  /** A drag across the chart selected `[fromMs, toMs]`. */
  onZoom?: (fromMs: number, toMs: number) => void;
}

interface Drawn {
  tag: string;
  at: number;
  points: number;
}

declare global {
  interface Window {
    /** Page-open-to-first-point times per chart, and to the fleet view's first row with data (ms). */
    __hostpulse?: { firstPoint: Record<string, number>; firstRow?: number; drawn?: Record<string, Drawn> };
  }
}

function recordFirstPoint(id: string): void {
  const w = window;
  w.__hostpulse ??= { firstPoint: {} };
  w.__hostpulse.firstPoint[id] ??= performance.now();
}

function recordDraw(id: string, tag: string, points: number): void {
  const w = window;
  w.__hostpulse ??= { firstPoint: {} };
  w.__hostpulse.drawn ??= {};
  w.__hostpulse.drawn[id] = { tag, at: performance.now(), points };
}

/** `#rrggbb` as `rgba(r,g,b,a)`. */
function alpha(hex: string, a: number): string {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${a})`;
}

function count(columns: (number | null)[][]): number {
  return columns[0]?.length ?? 0;
}

export function Chart(props: Props) {
  const { id, columns, version, lines, height, sparkline, yRange, yFormat, bytes, band, xRange, tag = "" } = props;
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const ticks = useRef<ByteTicks | null>(null);
  // Read by the chart's callbacks, so changing them does not rebuild it.
  const live = useRef({ xRange, xLast: props.xLast, tag, onZoom: props.onZoom, columns });
  live.current = { xRange, xLast: props.xLast, tag, onZoom: props.onZoom, columns };
  const key = `${lines.map((l) => l.label).join("|")}/${band ? "band" : "line"}/${bytes ?? "-"}`;

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const width = Math.max(80, el.clientWidth || 300);
    const format = (v: number) => (yFormat ? yFormat(v) : v.toFixed(1));
    const yScale: uPlot.Scale = yRange
      ? { range: yRange }
      : bytes !== undefined
        ? {
            range: (_u, _min, max) => {
              ticks.current = byteTicks(max, bytes);
              return [0, ticks.current.max];
            },
          }
        : // Zero-based with headroom, so a flat line is not drawn on the frame.
          { range: (_u, min, max) => [Math.min(0, min), Math.max(max * 1.15, 1)] };
    const series: uPlot.Series[] = [{}];
    const bands: uPlot.Band[] = [];
    for (const l of lines) {
      series.push({
        label: l.label,
        stroke: l.stroke,
        fill: band ? undefined : l.fill,
        width: sparkline ? 1 : 1.5,
        points: { show: false },
        value: (_u: uPlot, v: number | null) => (v == null ? "–" : format(v)),
      });
      if (band) {
        const at = series.length;
        for (const which of ["min", "max"]) {
          series.push({
            label: `${l.label} ${which}`,
            stroke: alpha(l.stroke, 0.35),
            width: 0.5,
            points: { show: false },
            value: (_u: uPlot, v: number | null) => (v == null ? "–" : format(v)),
          });
        }
        bands.push({ series: [at + 1, at], fill: alpha(l.stroke, 0.22) });
      }
    }
    const opts: uPlot.Options = {
      width,
      height,
      legend: { show: !sparkline },
      cursor: { show: !sparkline, drag: { x: true, y: false, setScale: false } },
      scales: {
        x: {
          time: true,
          range: (_u, min, max) => {
            const { xRange: r, xLast: last } = live.current;
            return r ?? (last && max - min > last ? [max - last, max] : [min, max]);
          },
        },
        y: yScale,
      },
      axes: sparkline
        ? [{ show: false }, { show: false }]
        : [
            { stroke: "#9aa4b2", grid: { stroke: "#2a3140" } },
            {
              stroke: "#9aa4b2",
              grid: { stroke: "#2a3140" },
              size: 80,
              ...(bytes !== undefined && !yRange
                ? {
                    splits: () => ticks.current?.values ?? [0],
                    values: (_u: uPlot, vals: number[]) =>
                      vals.map((v) => ticks.current?.labels[ticks.current.values.indexOf(v)] ?? ""),
                  }
                : { values: (_u: uPlot, vals: number[]) => vals.map((v) => (yFormat ? yFormat(v) : String(v))) }),
            },
          ],
      series,
      bands,
      hooks: {
        draw: [
          () => {
            recordDraw(id, live.current.tag, count(live.current.columns));
            el.dataset.drawn = live.current.tag;
            if (ticks.current && bytes !== undefined) el.dataset.yticks = ticks.current.labels.join("|");
          },
        ],
        setSelect: [
          (u: uPlot) => {
            const { left, width: w } = u.select;
            if (w > 4 && live.current.onZoom) {
              const a = u.posToVal(left, "x");
              const b = u.posToVal(left + w, "x");
              live.current.onZoom(Math.round(a * 1000), Math.round(b * 1000));
            }
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          },
        ],
      },
    };
    const u = new uPlot(opts, live.current.columns as uPlot.AlignedData, el);
    plot.current = u;
    if (count(live.current.columns) > 0) recordFirstPoint(id);
    const resize = new ResizeObserver(() => {
      const w = el.clientWidth;
      if (w > 0 && Math.abs(w - u.width) > 4) u.setSize({ width: w, height });
    });
    resize.observe(el);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = null;
    };
    // Rebuilt only when its lines, layout or geometry change; new points and
    // other ranges go through setData below.
  }, [key, height, sparkline, id]);

  useEffect(() => {
    const u = plot.current;
    if (!u) return;
    u.setData(columns as uPlot.AlignedData);
    if (count(columns) > 0) recordFirstPoint(id);
  }, [version, columns, id, xRange?.[0], xRange?.[1]]);

  return (
    <div
      className="chart"
      data-testid={id}
      data-points={count(columns)}
      data-band={band ? "1" : "0"}
      data-range={tag}
      ref={box}
    />
  );
}
