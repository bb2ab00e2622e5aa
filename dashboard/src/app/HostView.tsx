// One host: live charts of CPU (total and per core), memory and swap, load,
// and a sortable table of its top processes. Filled from history on open
// (the last 300 samples), then live.

import { useEffect, useMemo, useRef, useState } from "react";
import type { HostpulseClient } from "../client";
import type { CpuPayload, LoadPayload, MemoryPayload, ProcessEntry, ProcessesPayload } from "../client/types";
import { Chart, type Line } from "./Chart";
import { bytes, num, pct } from "./format";
import { Series } from "./series";

const POINTS = 600;
const HISTORY = 300;
const CORE_COLORS = ["#ffb74d", "#81c784", "#ba68c8", "#e57373", "#4db6ac", "#f06292", "#aed581", "#7986cb"];

interface Model {
  cpu: Series;
  cores: number;
  memory: Series;
  load: Series;
  latestMem?: MemoryPayload;
  latestCpu?: CpuPayload;
  latestLoad?: LoadPayload;
  processes?: ProcessesPayload;
}

function fresh(): Model {
  return { cpu: new Series(1, POINTS), cores: 0, memory: new Series(2, POINTS), load: new Series(3, POINTS) };
}

export function HostView({ client, host }: { client: HostpulseClient; host: string }) {
  const model = useRef<Model>(fresh());
  const [tick, setTick] = useState(0);

  useEffect(() => {
    model.current = fresh();
    setTick((t) => t + 1);
    let scheduled = false;
    const redraw = () => {
      if (scheduled) return;
      scheduled = true;
      requestAnimationFrame(() => {
        scheduled = false;
        setTick((t) => t + 1);
      });
    };
    const m = () => model.current;
    const offs = [
      client.subscribe(
        `host.${host}.cpu`,
        (u) => {
          const p = u.payload as CpuPayload;
          if (p.per_core_pct.length !== m().cores) {
            // Core count changed (or first sample): new line set.
            m().cores = p.per_core_pct.length;
            m().cpu = new Series(1 + m().cores, POINTS);
          }
          m().latestCpu = p;
          m().cpu.push(Date.parse(u.timestamp), [p.total_pct, ...p.per_core_pct]);
          redraw();
        },
        { history: HISTORY },
      ),
      client.subscribe(
        `host.${host}.memory`,
        (u) => {
          const p = u.payload as MemoryPayload;
          m().latestMem = p;
          m().memory.push(Date.parse(u.timestamp), [p.used_bytes, p.swap_used_bytes]);
          redraw();
        },
        { history: HISTORY },
      ),
      client.subscribe(
        `host.${host}.load`,
        (u) => {
          const p = u.payload as LoadPayload;
          m().latestLoad = p;
          m().load.push(Date.parse(u.timestamp), [p.one, p.five, p.fifteen]);
          redraw();
        },
        { history: HISTORY },
      ),
      client.subscribe(
        `host.${host}.processes`,
        (u) => {
          m().processes = u.payload as ProcessesPayload;
          redraw();
        },
        { history: 1 },
      ),
    ];
    return () => offs.forEach((off) => off());
  }, [client, host]);

  const d = model.current;
  const cpuLines: Line[] = useMemo(
    () => [
      { label: "total", stroke: "#4fc3f7", fill: "rgba(79,195,247,0.12)" },
      ...Array.from({ length: d.cores }, (_, i) => ({ label: `core ${i}`, stroke: CORE_COLORS[i % CORE_COLORS.length] })),
    ],
    [d.cores],
  );

  return (
    <div className="host" data-testid="host-view" data-tick={tick}>
      <h2>
        <a href="#/">fleet</a> / {host}
      </h2>
      <div className="stats">
        <Stat label="CPU" value={pct(d.latestCpu?.total_pct)} />
        <Stat label="cores" value={d.cores ? String(d.cores) : "–"} />
        <Stat
          label="memory"
          value={d.latestMem ? `${bytes(d.latestMem.used_bytes)} / ${bytes(d.latestMem.total_bytes)}` : "–"}
        />
        <Stat
          label="swap"
          value={d.latestMem ? `${bytes(d.latestMem.swap_used_bytes)} / ${bytes(d.latestMem.swap_total_bytes)}` : "–"}
        />
        <Stat
          label="load"
          value={d.latestLoad ? `${num(d.latestLoad.one)} ${num(d.latestLoad.five)} ${num(d.latestLoad.fifteen)}` : "–"}
        />
        <Stat label="processes" value={d.processes ? String(d.processes.count) : "–"} />
      </div>
      <section>
        <h3>CPU (%)</h3>
        <Chart id="chart-cpu" series={d.cpu} version={d.cpu.version} lines={cpuLines} height={220} yRange={[0, 100]} />
      </section>
      <div className="two">
        <section>
          <h3>Memory and swap</h3>
          <Chart
            id="chart-memory"
            series={d.memory}
            version={d.memory.version}
            lines={[
              { label: "used", stroke: "#81c784", fill: "rgba(129,199,132,0.15)" },
              { label: "swap used", stroke: "#e57373" },
            ]}
            height={180}
            yFormat={bytes}
          />
        </section>
        <section>
          <h3>Load</h3>
          <Chart
            id="chart-load"
            series={d.load}
            version={d.load.version}
            lines={[
              { label: "1 min", stroke: "#ffb74d" },
              { label: "5 min", stroke: "#ba68c8" },
              { label: "15 min", stroke: "#4db6ac" },
            ]}
            height={180}
          />
        </section>
      </div>
      <section>
        <h3>Top processes</h3>
        <Processes data={d.processes} />
      </section>
    </div>
  );
}

function Stat({ label, value }: { label: string; value: string }) {
  return (
    <div className="stat">
      <span className="label">{label}</span>
      <span className="value">{value}</span>
    </div>
  );
}

type SortKey = "pid" | "name" | "cpu_pct" | "memory_bytes";

export function Processes({ data }: { data?: ProcessesPayload }) {
  const [sort, setSort] = useState<{ key: SortKey; desc: boolean }>({ key: "cpu_pct", desc: true });
  if (!data) return <p className="empty">No process data yet.</p>;
  const byPid = new Map<string, ProcessEntry>();
  for (const p of [...data.top_cpu, ...data.top_memory]) byPid.set(`${p.pid}:${p.start_time}`, p);
  const rows = [...byPid.values()].sort((a, b) => {
    const x = a[sort.key];
    const y = b[sort.key];
    const c = typeof x === "string" ? x.localeCompare(y as string) : (x as number) - (y as number);
    return sort.desc ? -c : c;
  });
  const head = (key: SortKey, label: string, numeric = false) => (
    <th
      className={`${numeric ? "num" : ""} sortable ${sort.key === key ? "sorted" : ""}`}
      data-testid={`sort-${key}`}
      aria-sort={sort.key === key ? (sort.desc ? "descending" : "ascending") : "none"}
      onClick={() => setSort((s) => ({ key, desc: s.key === key ? !s.desc : numeric }))}
    >
      {label}
      {sort.key === key ? (sort.desc ? " ▼" : " ▲") : ""}
    </th>
  );
  return (
    <table className="procs" data-testid="processes">
      <thead>
        <tr>
          {head("pid", "pid", true)}
          {head("name", "name")}
          {head("cpu_pct", "CPU (of one core)", true)}
          {head("memory_bytes", "memory", true)}
        </tr>
      </thead>
      <tbody>
        {rows.map((p) => (
          <tr key={`${p.pid}:${p.start_time}`}>
            <td className="num">{p.pid}</td>
            <td>{p.name}</td>
            <td className="num">{pct(p.cpu_pct)}</td>
            <td className="num">{bytes(p.memory_bytes)}</td>
          </tr>
        ))}
        <tr className="others">
          <td className="num">{data.others.count}</td>
          <td>other processes</td>
          <td className="num">{pct(data.others.cpu_pct)}</td>
          <td className="num">{bytes(data.others.memory_bytes)}</td>
        </tr>
      </tbody>
    </table>
  );
}
