// A host's charts over a past time range: one `GET /api/v1/hosts/{host}/series`
// per chart (the session's token via getJson), turned into chart columns.
// A chart line may be the sum of several fields (network over its
// interfaces, disk over its devices); empty buckets break the line.

import { getJson } from "./connection";

export interface SeriesField {
  field: string;
  ts: number[];
  min: number[];
  max: number[];
  avg: number[];
  last: number[];
  count: number[];
}

export interface SeriesAnswer {
  host: string;
  from: number;
  to: number;
  step_ms: number;
  tier: string;
  series: SeriesField[];
}

export interface RangeColumns {
  /** Time (s), then per line avg, or avg, min and max when `band`. */
  columns: (number | null)[][];
  /** Some bucket's min differs from its max: a rollup worth a band. */
  band: boolean;
  points: number;
  tier: string;
}

export async function fetchSeries(
  host: string,
  fields: string[],
  from: number,
  to: number,
  step: string,
  signal?: AbortSignal,
): Promise<SeriesAnswer> {
  const q = `fields=${fields.map(encodeURIComponent).join(",")}&from=${from}&to=${to}&step=${step}`;
  return getJson<SeriesAnswer>(`/api/v1/hosts/${encodeURIComponent(host)}/series?${q}`, signal);
}

/** Why a series request failed, in a few words for the page. */
export function failure(e: Error): string {
  const status = /HTTP (\d+)$/.exec(e.message)?.[1];
  if (status === "404") return "this aggregator keeps no history on disk ([storage] dir)";
  if (status === "401" || status === "403") return "the token does not grant this host's history";
  if (status) return `the aggregator answered HTTP ${status}`;
  return e.message;
}

/**
 * Columns for `lines` (each a list of fields summed) from `answer`: every
 * bucket any field has, in order, with a null after a missing bucket so the
 * line breaks there. The min–max band is kept only when some bucket has
 * min != max (a rolled-up tier; raw values at their own step have none).
 */
export function toColumns(answer: SeriesAnswer, lines: string[][]): RangeColumns {
  const byField = new Map(answer.series.map((s) => [s.field, s]));
  const index = new Map<string, Map<number, number>>();
  const times = new Set<number>();
  for (const s of answer.series) {
    const at = new Map<number, number>();
    s.ts.forEach((t, i) => {
      at.set(t, i);
      times.add(t);
    });
    index.set(s.field, at);
  }
  const sorted = [...times].sort((a, b) => a - b);
  const step = answer.step_ms;
  const ts: number[] = [];
  for (const t of sorted) {
    const prev = ts.length ? ts[ts.length - 1] : undefined;
    if (prev !== undefined && t - prev > step) ts.push(prev + step); // gap marker
    ts.push(t);
  }
  const real = new Set(sorted);
  let band = false;
  const perLine = lines.map((fields) => {
    const avg: (number | null)[] = [];
    const min: (number | null)[] = [];
    const max: (number | null)[] = [];
    for (const t of ts) {
      let a = 0;
      let lo = 0;
      let hi = 0;
      let any = false;
      if (real.has(t)) {
        for (const f of fields) {
          const s = byField.get(f);
          const i = index.get(f)?.get(t);
          if (!s || i === undefined) continue;
          any = true;
          a += s.avg[i];
          lo += s.min[i];
          hi += s.max[i];
        }
      }
      avg.push(any ? a : null);
      min.push(any ? lo : null);
      max.push(any ? hi : null);
      if (any && hi - lo > Math.abs(hi) * 1e-9) band = true;
    }
    return { avg, min, max };
  });
  const columns: (number | null)[][] = [ts.map((t) => t / 1000)];
  for (const l of perLine) {
    if (band) columns.push(l.avg, l.min, l.max);
    else columns.push(l.avg);
  }
  return { columns, band, points: sorted.length, tier: answer.tier };
}
