// A uPlot time-series chart (or sparkline) as a React component. The chart is
// created once per line set and fed new data in place, never re-created per
// update. Records when the page drew its first point (window.__hostpulse).

import { useEffect, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import type { Series } from "./series";

export interface Line {
  label: string;
  stroke: string;
  fill?: string;
}

interface Props {
  /** Identifies the chart in tests and in the first-point record. */
  id: string;
  series: Series;
  /** Bumped when the series changes, to redraw. */
  version: number;
  lines: Line[];
  height: number;
  sparkline?: boolean;
  yRange?: [number, number];
  yFormat?: (v: number) => string;
}

declare global {
  interface Window {
    /** Page-open-to-first-point times per chart, and to the fleet view's first row with data (ms). */
    __hostpulse?: { firstPoint: Record<string, number>; firstRow?: number };
  }
}

function recordFirstPoint(id: string): void {
  const w = window;
  w.__hostpulse ??= { firstPoint: {} };
  w.__hostpulse.firstPoint[id] ??= performance.now();
}

export function Chart({ id, series, version, lines, height, sparkline, yRange, yFormat }: Props) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const key = lines.map((l) => l.label).join("|");

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const width = Math.max(80, el.clientWidth || 300);
    const opts: uPlot.Options = {
      width,
      height,
      legend: { show: !sparkline },
      cursor: { show: !sparkline },
      scales: {
        x: { time: true },
        // Zero-based with headroom, so a flat line is not drawn on the frame.
        y: yRange ? { range: yRange } : { range: (_u, min, max) => [Math.min(0, min), Math.max(max * 1.15, 1)] },
      },
      axes: sparkline
        ? [{ show: false }, { show: false }]
        : [
            { stroke: "#9aa4b2", grid: { stroke: "#2a3140" } },
            {
              stroke: "#9aa4b2",
              grid: { stroke: "#2a3140" },
              size: 70,
              values: (_u, vals) => vals.map((v) => (yFormat ? yFormat(v) : String(v))),
            },
          ],
      series: [
        {},
        ...lines.map((l) => ({
          label: l.label,
          stroke: l.stroke,
          fill: l.fill,
          width: sparkline ? 1 : 1.5,
          points: { show: false },
          value: (_u: uPlot, v: number | null) => (v == null ? "–" : yFormat ? yFormat(v) : v.toFixed(1)),
        })),
      ],
    };
    const u = new uPlot(opts, series.columns as uPlot.AlignedData, el);
    plot.current = u;
    if (series.length > 0) recordFirstPoint(id);
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
    // Rebuilt only when its lines, geometry or series object change; new
    // points go through setData below.
  }, [key, height, sparkline, series]);

  useEffect(() => {
    const u = plot.current;
    if (!u) return;
    u.setData(series.columns as uPlot.AlignedData);
    if (series.length > 0) recordFirstPoint(id);
  }, [version, series, id]);

  return <div className="chart" data-testid={id} data-points={series.length} ref={box} />;
}
