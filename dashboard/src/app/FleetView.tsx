// Fleet overview, built for thousands of hosts: search by name, filter by
// state and label, group by a label, sort by any column. Rows are
// virtualised (only those in view, plus a few, are in the page), each with a
// canvas sparkline of its CPU; a host name opens its page; a badge next to it
// counts the alerts firing on the host, coloured by the worst severity, and
// opens the alerts panel (it changes only that row). Records when the
// first row with data was drawn (window.__hostpulse.firstRow).

import { memo, useEffect, useLayoutEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import {
  DEFAULT_QUERY,
  type FleetItem,
  type FleetQuery,
  type FleetStore,
  fleetItems,
  type HostRow,
  labelsOf,
  SHAPE_SORTS,
  selectRows,
  type SortKey,
} from "./fleet";
import { ago, bytes, num, pct } from "./format";
import { Sparkline } from "./Sparkline";

/** Height of every line of the list (rows and group headings), px. */
export const ROW_HEIGHT = 36;
/** Lines rendered beyond the visible ones, above and below. */
const OVERSCAN = 8;
const SPARK_WIDTH = 120;
const SPARK_HEIGHT = 24;

interface Column {
  key: SortKey | "spark";
  title: string;
  width: string;
  num?: boolean;
}

function columns(cluster: boolean): Column[] {
  return [
    { key: "host", title: "host", width: "minmax(150px, 1.3fr)" },
    { key: "state", title: "state", width: "80px" },
    { key: "labels", title: "labels", width: "minmax(120px, 1.2fr)" },
    ...(cluster ? [{ key: "aggregator" as const, title: "aggregator", width: "100px" }] : []),
    { key: "cpu", title: "CPU", width: "72px", num: true },
    { key: "spark", title: "CPU, recent", width: `${SPARK_WIDTH + 16}px` },
    { key: "memory", title: "memory", width: "80px", num: true },
    { key: "load", title: "load 1m", width: "70px", num: true },
    { key: "lastSeen", title: "last seen", width: "100px" },
  ];
}

/** Numbers sort largest first on the first click; names and labels A–Z. */
const DESCENDING_FIRST: ReadonlySet<SortKey> = new Set(["cpu", "memory", "load", "lastSeen"]);

export function FleetView({ store }: { store: FleetStore }) {
  const version = useSyncExternalStore(store.subscribe, store.getVersion);
  const [query, setQuery] = useState<FleetQuery>(DEFAULT_QUERY);
  const [collapsed, setCollapsed] = useState<ReadonlySet<string>>(new Set());
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, []);

  // Never per scroll frame. What depends only on which hosts there are and
  // their labels, state and aggregator is redone when that shape changes;
  // a sort by a metric is redone per store notice (at most a few a second).
  const shape = store.getShape();
  const all = useMemo(() => store.all(), [store, shape]);
  const { pairs, keys } = useMemo(() => labelsOf(all), [all]);
  const resort = SHAPE_SORTS.has(query.sort) ? 0 : version;
  // `resort` is not read inside: rows are mutated in place, so it is what
  // says a metric sort must be redone.
  const selected = useMemo(() => selectRows(all, query), [all, query, resort]);
  const items = useMemo(() => fleetItems(selected, query, collapsed), [selected, query, collapsed]);
  const cluster = useMemo(() => all.some((r) => r.aggregator !== undefined), [all]);
  const cols = columns(cluster);
  const grid = cols.map((c) => c.width).join(" ");

  if (all.length === 0) {
    return <p className="empty">Waiting for hosts… (start an agent pointed at this aggregator)</p>;
  }
  const set = (patch: Partial<FleetQuery>) => setQuery((q) => ({ ...q, ...patch }));
  const sortBy = (key: SortKey) =>
    setQuery((q) =>
      q.sort === key ? { ...q, descending: !q.descending } : { ...q, sort: key, descending: DESCENDING_FIRST.has(key) },
    );
  const online = selected.filter((r) => r.online === true).length;

  return (
    <div className="fleet" data-testid="fleet" data-version={version}>
      <div className="toolbar">
        <input
          type="search"
          placeholder="Search hosts"
          aria-label="Search hosts"
          data-testid="fleet-search"
          value={query.search}
          onChange={(e) => set({ search: e.target.value })}
        />
        <select aria-label="State" data-testid="fleet-state" value={query.state} onChange={(e) => set({ state: e.target.value as FleetQuery["state"] })}>
          <option value="all">all states</option>
          <option value="online">online</option>
          <option value="offline">offline</option>
        </select>
        <select aria-label="Label" data-testid="fleet-label" value={query.label} onChange={(e) => set({ label: e.target.value })}>
          <option value="">any label</option>
          {pairs.map((p) => (
            <option key={p} value={p}>
              {p}
            </option>
          ))}
        </select>
        <select
          aria-label="Group by"
          data-testid="fleet-group"
          value={query.groupBy}
          onChange={(e) => {
            setCollapsed(new Set());
            set({ groupBy: e.target.value });
          }}
        >
          <option value="">no grouping</option>
          {keys.map((k) => (
            <option key={k} value={k}>
              group by {k}
            </option>
          ))}
        </select>
        <span className="count" data-testid="fleet-count" data-shown={selected.length} data-total={all.length}>
          {selected.length === all.length ? `${all.length} hosts` : `${selected.length} of ${all.length} hosts`}, {online} online
        </span>
      </div>
      <div className="fleet-head" role="row" style={{ gridTemplateColumns: grid }}>
        {cols.map((c) =>
          c.key === "spark" ? (
            <div key={c.key} className="cell" role="columnheader">
              {c.title}
            </div>
          ) : (
            <div
              key={c.key}
              role="columnheader"
              className={`cell sortable${c.num ? " num" : ""}${query.sort === c.key ? " sorted" : ""}`}
              data-testid={`fleet-sort-${c.key}`}
              aria-sort={query.sort === c.key ? (query.descending ? "descending" : "ascending") : "none"}
              onClick={() => sortBy(c.key as SortKey)}
            >
              {c.title}
              {query.sort === c.key ? (query.descending ? " ▼" : " ▲") : ""}
            </div>
          ),
        )}
      </div>
      <VirtualList
        items={items}
        grid={grid}
        cluster={cluster}
        now={now}
        onToggle={(value) =>
          setCollapsed((c) => {
            const next = new Set(c);
            if (!next.delete(value)) next.add(value);
            return next;
          })
        }
      />
    </div>
  );
}

interface ListProps {
  items: FleetItem[];
  grid: string;
  cluster: boolean;
  now: number;
  onToggle: (value: string) => void;
}

function VirtualList({ items, grid, cluster, now, onToggle }: ListProps) {
  const box = useRef<HTMLDivElement>(null);
  const [view, setView] = useState({ top: 0, height: 600 });

  useLayoutEffect(() => {
    const el = box.current;
    if (!el) return;
    let frame = 0;
    const read = () => {
      frame = 0;
      setView((v) => (v.top === el.scrollTop && v.height === el.clientHeight ? v : { top: el.scrollTop, height: el.clientHeight }));
    };
    read();
    // One state update per frame however many scroll events arrive.
    const onScroll = () => {
      if (!frame) frame = requestAnimationFrame(read);
    };
    el.addEventListener("scroll", onScroll, { passive: true });
    const resize = new ResizeObserver(onScroll);
    resize.observe(el);
    return () => {
      el.removeEventListener("scroll", onScroll);
      resize.disconnect();
      if (frame) cancelAnimationFrame(frame);
    };
  }, []);

  const first = Math.max(0, Math.floor(view.top / ROW_HEIGHT) - OVERSCAN);
  const last = Math.min(items.length, Math.ceil((view.top + view.height) / ROW_HEIGHT) + OVERSCAN);
  const shown = items.slice(first, last);

  useEffect(() => {
    const w = window;
    if (w.__hostpulse?.firstRow !== undefined) return;
    if (shown.some((i) => i.kind === "host" && i.row.cpu !== undefined)) {
      w.__hostpulse ??= { firstPoint: {} };
      w.__hostpulse.firstRow = performance.now();
    }
  });

  return (
    <div className="fleet-scroll" data-testid="fleet-scroll" ref={box}>
      {items.length === 0 && (
        <p className="empty" data-testid="fleet-empty">
          No host matches.
        </p>
      )}
      <div className="fleet-body" style={{ height: items.length * ROW_HEIGHT }} data-testid="fleet-body" data-items={items.length}>
        {shown.map((item, i) => {
          const top = (first + i) * ROW_HEIGHT;
          return item.kind === "group" ? (
            <div
              key={`group:${item.value}`}
              className="group"
              role="row"
              data-testid={`group-${item.value}`}
              data-hosts={item.hosts}
              style={{ transform: `translateY(${top}px)` }}
              onClick={() => onToggle(item.value)}
            >
              <span className="caret">{item.collapsed ? "▶" : "▼"}</span>
              {item.key} = <strong>{item.value}</strong>
              <span className="sub">
                {item.hosts} hosts, {item.online} online
              </span>
            </div>
          ) : (
            <Row key={item.row.host} row={item.row} rev={item.row.rev} top={top} grid={grid} cluster={cluster} now={now} />
          );
        })}
      </div>
    </div>
  );
}

interface RowProps {
  row: HostRow;
  /** Rows are mutated in place: their revision says when one changed. */
  rev: number;
  top: number;
  grid: string;
  cluster: boolean;
  now: number;
}

/** Re-rendered only when the row, its position or the clock moved. */
const Row = memo(function Row({ row: r, top, grid, cluster, now }: RowProps) {
  const labels = Object.entries(r.labels).sort(([a], [b]) => a.localeCompare(b));
  return (
    <div
      className={`row${r.online === false ? " down" : ""}`}
      role="row"
      data-testid={`host-row-${r.host}`}
      data-host={r.host}
      style={{ gridTemplateColumns: grid, transform: `translateY(${top}px)` }}
    >
      <div className="cell name">
        <a href={`#/host/${encodeURIComponent(r.host)}`}>{r.host}</a>
        {r.alerts && (
          <a
            className={`alert-badge sev-${r.alerts.worst}`}
            href="#/alerts"
            data-testid="host-alerts"
            data-count={r.alerts.count}
            data-severity={r.alerts.worst}
            title={`${r.alerts.count} alert${r.alerts.count === 1 ? "" : "s"} firing, worst ${r.alerts.worst}`}
          >
            {r.alerts.count}
          </a>
        )}
        {r.hostname && r.hostname !== r.host && <span className="sub">{r.hostname}</span>}
      </div>
      <div className="cell">
        <span className={`state ${r.online === false ? "offline" : r.online ? "online" : ""}`} data-testid="host-state">
          {r.online === undefined ? "?" : r.online ? "online" : "offline"}
        </span>
      </div>
      <div className="cell labels" data-testid="host-labels">
        {labels.map(([k, v]) => (
          <span key={k} className="label">
            {k}={v}
          </span>
        ))}
      </div>
      {cluster && (
        <div className="cell" data-testid="host-aggregator">
          {r.aggregator ?? "–"}
        </div>
      )}
      <div className="cell num" data-testid="host-cpu">
        {pct(r.cpu)}
      </div>
      <div className="cell spark">
        <Sparkline id={`spark-${r.host}`} series={r.spark} version={r.spark.version} width={SPARK_WIDTH} height={SPARK_HEIGHT} max={100} />
      </div>
      <div className="cell num" data-testid="host-memory" title={`${bytes(r.memUsed)} of ${bytes(r.memTotal)}`}>
        {pct(r.memPct)}
      </div>
      <div className="cell num" data-testid="host-load">
        {num(r.load1)}
      </div>
      <div className="cell">{ago(r.lastSeen, now)}</div>
    </div>
  );
});
