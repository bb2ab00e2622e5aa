// Axis ticks for byte and byte-rate charts: binary steps (a power of two
// bytes: 256 KiB, 1 MiB, 2 MiB, 4 GiB…) from 0 up to the first tick at or
// above the data, ascending, all labelled in one unit (KiB, MiB, GiB…) so the
// labels read in order. The chart's y scale ends on the top tick.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export interface ByteTicks {
  /** Tick values in bytes, ascending, starting at 0. */
  values: number[];
  /** The labels, same order, e.g. `2 MiB/s`. */
  labels: string[];
  /** The top tick (the scale's max). */
  max: number;
}

/**
 * Ticks for data up to `dataMax` bytes: the smallest power-of-two step (at
 * least 1 B) giving at most `maxSteps` steps from 0 past the data, with a
 * little headroom so a line at the top does not sit on the frame.
 */
export function byteTicks(dataMax: number, suffix = "", maxSteps = 5): ByteTicks {
  const top = Number.isFinite(dataMax) && dataMax > 0 ? dataMax * 1.05 : 1;
  let step = 1;
  while (Math.ceil(top / step) > maxSteps) step *= 2;
  const n = Math.max(1, Math.ceil(top / step));
  const values = Array.from({ length: n + 1 }, (_, i) => i * step);
  const max = n * step;
  let k = 0;
  while (k < UNITS.length - 1 && max >= 1024 ** (k + 1)) k++;
  const unit = 1024 ** k;
  // The step in the axis unit is a power of two: 0.25 needs two decimals.
  const decimals = Math.max(0, Math.min(3, Math.ceil(-Math.log2(step / unit) - 1e-9)));
  const labels = values.map((v) => `${trim((v / unit).toFixed(decimals))} ${UNITS[k]}${suffix}`);
  return { values, labels, max };
}

function trim(s: string): string {
  return s.includes(".") ? s.replace(/\.?0+$/, "") : s;
}
