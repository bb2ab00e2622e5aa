// Bounded time series for charts: aligned columns (time in seconds, then one
// column per line), oldest points dropped beyond `cap`, kept in time order.

export class Series {
  readonly columns: number[][];
  version = 0;

  constructor(
    readonly lines: number,
    readonly cap: number,
  ) {
    this.columns = Array.from({ length: lines + 1 }, () => []);
  }

  get length(): number {
    return this.columns[0].length;
  }

  /** Adds a point at `tMs` (milliseconds); out-of-order points are placed in order. */
  push(tMs: number, values: number[]): void {
    const t = tMs / 1000;
    const times = this.columns[0];
    let at = times.length;
    while (at > 0 && times[at - 1] > t) at--;
    if (at > 0 && times[at - 1] === t) return; // same sample twice
    times.splice(at, 0, t);
    for (let i = 0; i < this.lines; i++) this.columns[i + 1].splice(at, 0, values[i] ?? NaN);
    if (times.length > this.cap) for (const c of this.columns) c.splice(0, times.length - this.cap);
    this.version++;
  }
}
