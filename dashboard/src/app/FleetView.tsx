// Fleet overview: every host with online state, CPU, memory, load and a CPU
// sparkline; a host name opens its page.

import { useEffect, useState, useSyncExternalStore } from "react";
import { Chart } from "./Chart";
import type { FleetStore } from "./fleet";
import { ago, bytes, num, pct } from "./format";

export function FleetView({ store }: { store: FleetStore }) {
  const version = useSyncExternalStore(store.subscribe, store.getVersion);
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, []);
  const rows = store.list();
  const cluster = rows.some((r) => r.aggregator !== undefined);
  if (rows.length === 0) {
    return <p className="empty">Waiting for hosts… (start an agent pointed at this aggregator)</p>;
  }
  return (
    <table className="fleet" data-testid="fleet" data-version={version}>
      <thead>
        <tr>
          <th>host</th>
          <th>state</th>
          {cluster && <th>aggregator</th>}
          <th className="num">CPU</th>
          <th>CPU, recent</th>
          <th className="num">memory</th>
          <th className="num">load 1m</th>
          <th>last seen</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((r) => (
          <tr key={r.host} data-testid={`host-row-${r.host}`} className={r.online === false ? "down" : ""}>
            <td>
              <a href={`#/host/${encodeURIComponent(r.host)}`}>{r.host}</a>
              {r.hostname && r.hostname !== r.host && <span className="sub">{r.hostname}</span>}
            </td>
            <td>
              <span className={`state ${r.online === false ? "offline" : r.online ? "online" : ""}`} data-testid="host-state">
                {r.online === undefined ? "?" : r.online ? "online" : "offline"}
              </span>
            </td>
            {cluster && <td data-testid="host-aggregator">{r.aggregator ?? "–"}</td>}
            <td className="num">{pct(r.cpu)}</td>
            <td className="spark">
              <Chart
                id={`spark-${r.host}`}
                series={r.spark}
                version={r.spark.version}
                lines={[{ label: "CPU", stroke: "#4fc3f7", fill: "rgba(79,195,247,0.15)" }]}
                height={32}
                sparkline
                yRange={[0, 100]}
              />
            </td>
            <td className="num" title={`${bytes(r.memUsed)} of ${bytes(r.memTotal)}`}>
              {pct(r.memPct)}
            </td>
            <td className="num">{num(r.load1)}</td>
            <td>{ago(r.lastSeen, now)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
