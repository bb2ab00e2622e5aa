// One host: charts of CPU (total and per core), memory and swap, load,
// network and disk throughput, its filesystems, and a sortable table of its
// top processes. Live (the default range): filled from history on open (the
// last 300 samples), then over WebSocket. Any other range (range.ts, from the
// URL): the charts come from the store (`/series`, history.ts), each line an
// average with its min–max band where the tier rolled values up; a drag on a
// chart zooms in (a custom range). Stats, filesystems and processes stay live.
// Families an agent does not send (switched off, or no sensors) stay hidden.

import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import type { HostpulseClient } from "../client";
import type {
  CpuPayload,
  DiskPayload,
  FilesystemsPayload,
  LoadPayload,
  MemoryPayload,
  NetworkPayload,
  ProcessEntry,
  ProcessesPayload,
  SystemPayload,
  TemperaturesPayload,
} from "../client/types";
import { Chart, type Line } from "./Chart";
import { bytes, duration, num, pct, rate } from "./format";
import { failure, fetchSeries, type RangeColumns, toColumns } from "./history";
import { hostHash, LIVE, type Range, rangeKey, stepParam, windowOf } from "./range";
import { RangeBar } from "./RangeBar";
import { Series } from "./series";

const POINTS = 600;
const HISTORY = 300;
const CORE_COLORS = ["#ffb74d", "#81c784", "#ba68c8", "#e57373", "#4db6ac", "#f06292", "#aed581", "#7986cb"];

interface Model {
  cpu: Series;
  cores: number;
  memory: Series;
  load: Series;
  network: Series;
  disk: Series;
  filesystems?: FilesystemsPayload;
  system?: SystemPayload;
  temperatures?: TemperaturesPayload;
  latestMem?: MemoryPayload;
  latestCpu?: CpuPayload;
  latestLoad?: LoadPayload;
  processes?: ProcessesPayload;
  /** Interfaces (but lo) and disk devices last seen: the fields a range sums. */
  interfaces: string[];
  devices: string[];
}

/** A labelled series name: `family.field{key="value"}` (`\` and `"` escaped). */
function labelled(field: string, key: string, value: string): string {
  return `${field}{${key}="${value.replace(/[\\"]/g, (c) => `\\${c}`)}"}`;
}

/** The charts a range shows, each line the sum of its fields. */
function rangeCharts(interfaces: string[], devices: string[]): Record<string, string[][]> {
  const net = (f: string) => interfaces.map((i) => labelled(`network.${f}`, "interface", i));
  const disk = (f: string) => devices.map((d) => labelled(`disk.${f}`, "device", d));
  const charts: Record<string, string[][]> = {
    cpu: [["cpu.total_pct"]],
    memory: [["memory.used_bytes"], ["memory.swap_used_bytes"]],
    load: [["load.one"], ["load.five"], ["load.fifteen"]],
  };
  if (interfaces.length) charts.network = [net("rx_bytes_per_sec"), net("tx_bytes_per_sec")];
  if (devices.length) charts.disk = [disk("read_bytes_per_sec"), disk("write_bytes_per_sec")];
  return charts;
}

interface Fetched {
  key: string;
  from: number;
  to: number;
  step: string;
  charts: Record<string, RangeColumns>;
  version: number;
}

function fresh(): Model {
  return {
    cpu: new Series(1, POINTS),
    cores: 0,
    memory: new Series(2, POINTS),
    load: new Series(3, POINTS),
    network: new Series(2, POINTS),
    disk: new Series(2, POINTS),
    interfaces: [],
    devices: [],
  };
}

/** Presets other than live are refetched this often, so "the last 24 h" moves on. */
const REFRESH_MS = 60_000;
/** The live charts show the newest 5 minutes (they keep up to POINTS samples). */
const LIVE_SECS = 300;

function same(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export function HostView({ client, host, range = LIVE }: { client: HostpulseClient; host: string; range?: Range }) {
  const model = useRef<Model>(fresh());
  const [tick, setTick] = useState(0);
  const [fetched, setFetched] = useState<Fetched | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  const isLive = range.kind === "preset" && range.key === "live";
  const rk = rangeKey(range);

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
        `host.${host}.network`,
        (u) => {
          // Traffic off the host: every interface but loopback.
          const ifs = (u.payload as NetworkPayload).interfaces.filter((i) => i.name !== "lo");
          const names = ifs.map((i) => i.name);
          if (!same(names, m().interfaces)) m().interfaces = names;
          const sum = (f: (i: NetworkPayload["interfaces"][number]) => number) => ifs.reduce((n, i) => n + f(i), 0);
          m().network.push(Date.parse(u.timestamp), [sum((i) => i.rx_bytes_per_sec), sum((i) => i.tx_bytes_per_sec)]);
          redraw();
        },
        { history: HISTORY },
      ),
      client.subscribe(
        `host.${host}.disk`,
        (u) => {
          const devs = (u.payload as DiskPayload).devices;
          const names = devs.map((d) => d.name);
          if (!same(names, m().devices)) m().devices = names;
          m().disk.push(Date.parse(u.timestamp), [
            devs.reduce((n, d) => n + d.read_bytes_per_sec, 0),
            devs.reduce((n, d) => n + d.write_bytes_per_sec, 0),
          ]);
          redraw();
        },
        { history: HISTORY },
      ),
      client.subscribe(
        `host.${host}.filesystems`,
        (u) => {
          m().filesystems = u.payload as FilesystemsPayload;
          redraw();
        },
        { history: 1 },
      ),
      client.subscribe(
        `host.${host}.system`,
        (u) => {
          m().system = u.payload as SystemPayload;
          redraw();
        },
        { history: 1 },
      ),
      client.subscribe(
        `host.${host}.temperatures`,
        (u) => {
          m().temperatures = u.payload as TemperaturesPayload;
          redraw();
        },
        { history: 1 },
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
  const ifKey = d.interfaces.join("\n");
  const devKey = d.devices.join("\n");

  // A range other than live: one series request for every chart, again when
  // the range, the host's interfaces or devices change, and every minute for
  // a preset.
  useEffect(() => {
    if (isLive) {
      setFetched(null);
      setProblem(null);
      return;
    }
    const charts = rangeCharts(d.interfaces, d.devices);
    const fields = [...new Set(Object.values(charts).flat(2))];
    let abort: AbortController | undefined;
    let version = 0;
    const load = () => {
      abort?.abort();
      abort = new AbortController();
      const w = windowOf(range, Date.now());
      const step = stepParam(w.step);
      fetchSeries(host, fields, w.from, w.to, step, abort.signal)
        .then((answer) => {
          const out: Record<string, RangeColumns> = {};
          for (const [id, lines] of Object.entries(charts)) out[id] = toColumns(answer, lines);
          setProblem(null);
          setFetched({ key: rk, from: w.from, to: w.to, step, charts: out, version: ++version });
        })
        .catch((e: Error) => {
          if (e.name !== "AbortError") setProblem(failure(e));
        });
    };
    load();
    const timer = range.kind === "preset" ? setInterval(load, REFRESH_MS) : undefined;
    return () => {
      abort?.abort();
      clearInterval(timer);
    };
    // `range` is fully described by `rk`.
  }, [host, rk, isLive, ifKey, devKey]);

  const pick = useCallback(
    (r: Range) => {
      location.hash = hostHash(host, r);
    },
    [host],
  );
  const zoom = useCallback(
    (from: number, to: number) => {
      // Whole seconds: a short URL, and the store's finest step.
      const [f, t] = [Math.floor(from / 1000) * 1000, Math.ceil(to / 1000) * 1000];
      if (t - f >= 2000) pick({ kind: "custom", from: f, to: t });
    },
    [pick],
  );

  /**
   * The props of chart `id` (`lines` lines): the live series, or the range
   * fetched last. A new range keeps the previous one drawn until its data is
   * in (tagged with the range it shows), so the page never flashes empty.
   */
  const view = (id: string, live: Series, lines: number) => {
    if (isLive) {
      return { columns: live.columns, version: live.version, band: false, tag: "live", xLast: LIVE_SECS, onZoom: zoom };
    }
    const c = fetched?.charts[id];
    if (!fetched || !c) {
      return { columns: Array.from({ length: lines + 1 }, () => []), version: 0, band: false, tag: "", onZoom: zoom };
    }
    return {
      columns: c.columns,
      version: fetched.version,
      band: c.band,
      tag: fetched.key,
      xRange: [fetched.from / 1000, fetched.to / 1000] as [number, number],
      onZoom: zoom,
    };
  };
  const current = fetched?.key === rk ? fetched : null;
  const status = isLive
    ? undefined
    : problem
      ? `no history: ${problem}`
      : current
        ? `${current.charts.cpu?.tier ?? ""} tier, one point per ${current.step}`
        : "loading…";
  const showNet = isLive ? d.network.length > 0 : d.interfaces.length > 0;
  const showDisk = isLive ? d.disk.length > 0 : d.devices.length > 0;
  const cores = isLive ? d.cores : 0;
  const cpuLines: Line[] = useMemo(
    () => [
      { label: "total", stroke: "#4fc3f7", fill: "rgba(79,195,247,0.12)" },
      ...Array.from({ length: cores }, (_, i) => ({ label: `core ${i}`, stroke: CORE_COLORS[i % CORE_COLORS.length] })),
    ],
    [cores],
  );

  return (
    <div className="host" data-testid="host-view" data-tick={tick}>
      <h2>
        <a href="#/">fleet</a> / {host}
      </h2>
      <RangeBar key={rk} range={range} onPick={pick} status={status} />
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
        {d.system && <Stat label="uptime" value={duration(d.system.uptime_secs)} />}
        {d.system && d.system.cpu_frequency_mhz > 0 && (
          <Stat label="CPU frequency" value={`${Math.round(d.system.cpu_frequency_mhz)} MHz`} />
        )}
        {d.temperatures && d.temperatures.sensors.length > 0 && (
          <Stat
            label="hottest sensor"
            value={`${Math.max(...d.temperatures.sensors.map((s) => s.celsius)).toFixed(0)} °C`}
          />
        )}
      </div>
      <section>
        <h3>CPU (%)</h3>
        <Chart id="chart-cpu" {...view("cpu", d.cpu, cpuLines.length)} lines={cpuLines} height={220} yRange={[0, 100]} />
      </section>
      <div className="two">
        <section>
          <h3>Memory and swap</h3>
          <Chart
            id="chart-memory"
            {...view("memory", d.memory, 2)}
            lines={[
              { label: "used", stroke: "#81c784", fill: "rgba(129,199,132,0.15)" },
              { label: "swap used", stroke: "#e57373" },
            ]}
            height={180}
            yFormat={bytes}
            bytes=""
          />
        </section>
        <section>
          <h3>Load</h3>
          <Chart
            id="chart-load"
            {...view("load", d.load, 3)}
            lines={[
              { label: "1 min", stroke: "#ffb74d" },
              { label: "5 min", stroke: "#ba68c8" },
              { label: "15 min", stroke: "#4db6ac" },
            ]}
            height={180}
          />
        </section>
      </div>
      {(showNet || showDisk) && (
        <div className="two">
          <section>
            <h3>Network (all interfaces but lo)</h3>
            <Chart
              id="chart-network"
              {...view("network", d.network, 2)}
              lines={[
                { label: "received", stroke: "#4fc3f7" },
                { label: "sent", stroke: "#ffb74d" },
              ]}
              height={160}
              yFormat={rate}
              bytes="/s"
            />
          </section>
          <section>
            <h3>Disk</h3>
            <Chart
              id="chart-disk"
              {...view("disk", d.disk, 2)}
              lines={[
                { label: "read", stroke: "#81c784" },
                { label: "written", stroke: "#e57373" },
              ]}
              height={160}
              yFormat={rate}
              bytes="/s"
            />
          </section>
        </div>
      )}
      {d.filesystems && d.filesystems.mounts.length > 0 && (
        <section>
          <h3>Filesystems</h3>
          <table className="fs" data-testid="filesystems">
            <thead>
              <tr>
                <th>mount</th>
                <th>device</th>
                <th>type</th>
                <th className="num">size</th>
                <th className="num">used</th>
                <th className="num">free</th>
                <th className="num">use</th>
              </tr>
            </thead>
            <tbody>
              {d.filesystems.mounts.map((f) => (
                <tr key={f.mount}>
                  <td>{f.mount}</td>
                  <td>{f.device}</td>
                  <td>{f.fs_type}</td>
                  <td className="num">{bytes(f.total_bytes)}</td>
                  <td className="num">{bytes(f.used_bytes)}</td>
                  <td className="num">{bytes(f.free_bytes)}</td>
                  <td className="num">{f.total_bytes > 0 ? pct((100 * f.used_bytes) / f.total_bytes) : "–"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
      )}
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
