// Number formatting for the dashboard: bytes, percentages, durations.

export function bytes(n: number | undefined): string {
  if (n === undefined || !Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function pct(n: number | undefined): string {
  return n === undefined || !Number.isFinite(n) ? "–" : `${n.toFixed(1)} %`;
}

export function num(n: number | undefined, digits = 2): string {
  return n === undefined || !Number.isFinite(n) ? "–" : n.toFixed(digits);
}

export function ago(ms: number | undefined, now: number): string {
  if (ms === undefined) return "–";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

export function rate(n: number | undefined): string {
  return n === undefined || !Number.isFinite(n) ? "–" : `${bytes(n)}/s`;
}

export function duration(secs: number | undefined): string {
  if (secs === undefined || !Number.isFinite(secs)) return "–";
  const d = Math.floor(secs / 86400);
  const h = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60);
  return d > 0 ? `${d} d ${h} h` : h > 0 ? `${h} h ${m} min` : `${m} min`;
}
