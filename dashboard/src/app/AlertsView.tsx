// The alerts panel (`#/alerts`): what fires now, worst severity first, then
// the alerts that resolved lately, newest first; each row names the rule (and
// the list entry of a `[*]` rule), its severity, the host (a link to its
// page), the value, since when and the summary. Live from the alert store
// (alerts.ts). When alerting is off or the token may not read it, one line
// says so.

import { useEffect, useState, useSyncExternalStore } from "react";
import { type Alert, type AlertStore, firingList } from "./alerts";
import { ago } from "./format";

function value(a: Alert): string {
  if (!Number.isFinite(a.value)) return "–";
  const v = Math.abs(a.value) >= 100 ? a.value.toFixed(0) : a.value.toFixed(Math.abs(a.value) >= 10 ? 1 : 2);
  return a.threshold === undefined ? v : `${v} (threshold ${a.threshold})`;
}

function when(iso: string | undefined, now: number) {
  if (!iso) return "–";
  const t = Date.parse(iso);
  return <time dateTime={iso} title={new Date(t).toLocaleString()}>{ago(t, now)}</time>;
}

function HostLink({ host }: { host: string }) {
  return (
    <a href={`#/host/${encodeURIComponent(host)}`} data-testid="alert-host">
      {host}
    </a>
  );
}

function Rule({ a }: { a: Alert }) {
  return (
    <>
      <span data-testid="alert-rule">{a.rule}</span>
      {a.entry !== undefined && <span className="sub">{a.entry}</span>}
    </>
  );
}

export function AlertsView({ store }: { store: AlertStore }) {
  const version = useSyncExternalStore(store.subscribe, store.getVersion);
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, []);
  const status = store.status;

  if (status.kind !== "on") {
    const line =
      status.kind === "loading"
        ? "Loading alerts…"
        : status.kind === "off"
          ? "Alerting is off on this aggregator (no rules: see README, “Alerting”)."
          : status.kind === "forbidden"
            ? "This token may not read alerts (its grant does not cover the `alerts` topic)."
            : `Alerts are unavailable: ${status.message}`;
    return (
      <div className="alerts" data-testid="alerts" data-status={status.kind}>
        <p className="empty" data-testid="alerts-status">
          {line}
        </p>
      </div>
    );
  }

  const firing = firingList(store.state);
  const recent = store.state.recent;
  return (
    <div className="alerts" data-testid="alerts" data-status="on" data-version={version}>
      <section>
        <h3>
          Firing {firing.length > 0 && <span className="sub">{firing.length}</span>}
        </h3>
        {firing.length === 0 ? (
          <p className="empty" data-testid="alerts-quiet">
            Nothing fires ({status.rules} rule{status.rules === 1 ? "" : "s"} watched).
          </p>
        ) : (
          <table data-testid="alerts-firing">
            <thead>
              <tr>
                <th>severity</th>
                <th>rule</th>
                <th>host</th>
                <th className="num">value</th>
                <th>since</th>
                <th>summary</th>
              </tr>
            </thead>
            <tbody>
              {firing.map((a) => (
                <tr key={`${a.rule}/${a.host}/${a.entry ?? ""}`} data-testid="alert-firing" data-host={a.host} data-rule={a.rule}>
                  <td>
                    <span className={`severity sev-${a.severity}`}>{a.severity}</span>
                  </td>
                  <td>
                    <Rule a={a} />
                  </td>
                  <td>
                    <HostLink host={a.host} />
                  </td>
                  <td className="num" data-testid="alert-value">
                    {value(a)}
                  </td>
                  <td>{when(a.starts_at, now)}</td>
                  <td data-testid="alert-summary">{a.annotations.summary ?? ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
      <section>
        <h3>
          Recently resolved {recent.length > 0 && <span className="sub">{recent.length}</span>}
        </h3>
        {recent.length === 0 ? (
          <p className="empty">None lately.</p>
        ) : (
          <table data-testid="alerts-recent">
            <thead>
              <tr>
                <th>severity</th>
                <th>rule</th>
                <th>host</th>
                <th className="num">value</th>
                <th>fired</th>
                <th>resolved</th>
                <th>summary</th>
              </tr>
            </thead>
            <tbody>
              {recent.map((a) => (
                <tr
                  key={`${a.rule}/${a.host}/${a.entry ?? ""}/${a.starts_at}`}
                  data-testid="alert-resolved"
                  data-host={a.host}
                  data-rule={a.rule}
                >
                  <td>
                    <span className={`severity sev-${a.severity}`}>{a.severity}</span>
                  </td>
                  <td>
                    <Rule a={a} />
                  </td>
                  <td>
                    <HostLink host={a.host} />
                  </td>
                  <td className="num">{value(a)}</td>
                  <td>{when(a.starts_at, now)}</td>
                  <td>{when(a.ends_at, now)}</td>
                  <td>{a.annotations.summary ?? ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
    </div>
  );
}

/** The header's link to the panel, with how many alerts fire. */
export function AlertsNav({ store, active }: { store: AlertStore; active: boolean }) {
  useSyncExternalStore(store.subscribe, store.getVersion);
  const n = store.state.firing.size;
  const worst = n > 0 ? firingList(store.state)[0].severity : undefined;
  return (
    <a href="#/alerts" className={`nav${active ? " on" : ""}`} data-testid="nav-alerts" data-firing={n}>
      alerts
      {n > 0 && <span className={`alert-badge sev-${worst}`}>{n}</span>}
    </a>
  );
}
