// The host page's time range picker: live, the presets (1 h … 1 y) and a
// custom range (two local date-times). Picking one calls `onPick`; the host
// page puts it in the URL.

import { useState } from "react";
import { PRESETS, type Range } from "./range";

/** `Date` → the value of an `<input type="datetime-local">` (local time, minutes). */
function local(ms: number): string {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 16);
}

export function RangeBar({
  range,
  onPick,
  status,
}: {
  range: Range;
  onPick: (r: Range) => void;
  status?: string;
}) {
  const [custom, setCustom] = useState(false);
  const now = Date.now();
  const [from, setFrom] = useState(() => local(range.kind === "custom" ? range.from : now - 3_600_000));
  const [to, setTo] = useState(() => local(range.kind === "custom" ? range.to : now));
  const apply = () => {
    const f = new Date(from).getTime();
    const t = new Date(to).getTime();
    if (Number.isFinite(f) && Number.isFinite(t) && f < t) onPick({ kind: "custom", from: f, to: t });
  };
  return (
    <div className="ranges" data-testid="ranges">
      {PRESETS.map((p) => (
        <button
          key={p.key}
          data-testid={`range-${p.key}`}
          className={range.kind === "preset" && range.key === p.key ? "on" : ""}
          onClick={() => onPick({ kind: "preset", key: p.key })}
        >
          {p.label}
        </button>
      ))}
      <button
        data-testid="range-custom"
        className={range.kind === "custom" ? "on" : ""}
        onClick={() => setCustom((c) => !c)}
      >
        custom
      </button>
      {custom && (
        <span className="custom">
          <input type="datetime-local" data-testid="custom-from" value={from} onChange={(e) => setFrom(e.target.value)} />
          –
          <input type="datetime-local" data-testid="custom-to" value={to} onChange={(e) => setTo(e.target.value)} />
          <button data-testid="custom-apply" onClick={apply}>
            show
          </button>
        </span>
      )}
      {status && (
        <span className="range-status" data-testid="range-status">
          {status}
        </span>
      )}
    </div>
  );
}
