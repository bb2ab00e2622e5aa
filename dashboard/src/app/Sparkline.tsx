// A sparkline on one small canvas: a polyline and a light fill, redrawn only
// when its series changes. The fleet view draws one per visible row (never
// one chart object per host), so scrolling thousands of hosts stays cheap.
// Records when the page drew its first point (window.__hostpulse), as Chart does.

import { useEffect, useRef } from "react";
import type { Series } from "./series";

interface Props {
  id: string;
  series: Series;
  /** The series' version when rendered: redraws when it changes. */
  version: number;
  width: number;
  height: number;
  /** Fixed y range (CPU: 0–100). */
  max: number;
}

function recordFirstPoint(id: string): void {
  const w = window;
  w.__hostpulse ??= { firstPoint: {} };
  w.__hostpulse.firstPoint[id] ??= performance.now();
}

export function Sparkline({ id, series, version, width, height, max }: Props) {
  const canvas = useRef<HTMLCanvasElement>(null);

  useEffect(() => {
    const el = canvas.current;
    if (!el) return;
    const ratio = window.devicePixelRatio || 1;
    if (el.width !== Math.round(width * ratio)) {
      el.width = Math.round(width * ratio);
      el.height = Math.round(height * ratio);
    }
    const ctx = el.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const [times, values] = series.columns;
    const n = times.length;
    if (n === 0) return;
    recordFirstPoint(id);
    const t0 = times[0];
    const span = Math.max(times[n - 1] - t0, 1e-9);
    const x = (i: number) => (n === 1 ? width - 1 : ((times[i] - t0) / span) * (width - 2) + 1);
    const y = (v: number) => height - 1 - (Math.min(Math.max(v, 0), max) / max) * (height - 2);
    ctx.beginPath();
    let started = false;
    for (let i = 0; i < n; i++) {
      const v = values[i];
      if (!Number.isFinite(v)) continue;
      if (started) ctx.lineTo(x(i), y(v));
      else {
        ctx.moveTo(x(i), y(v));
        started = true;
      }
    }
    ctx.strokeStyle = "#4fc3f7";
    ctx.lineWidth = 1;
    ctx.stroke();
    ctx.lineTo(x(n - 1), height);
    ctx.lineTo(x(0), height);
    ctx.closePath();
    ctx.fillStyle = "rgba(79,195,247,0.15)";
    ctx.fill();
  }, [id, series, version, width, height, max]);

  return (
    <canvas
      ref={canvas}
      className="sparkline"
      data-testid={id}
      data-points={series.length}
      style={{ width, height }}
    />
  );
}
