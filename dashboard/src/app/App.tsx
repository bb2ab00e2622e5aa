// The dashboard shell: header with the navigation (fleet, alerts with how
// many fire) and the connection indicator, the incomplete-resume note, the
// token prompt when the aggregator requires one, and the three views (`#/`
// fleet, `#/alerts` the alerts panel, `#/host/<name>` one host, with its time
// range in the hash's query: `?range=24h`, `?from=…&to=…`; range.ts). The
// alert store lives here, so the fleet's badges and the header's count stay
// live whichever view is open.

import { useEffect, useMemo, useState } from "react";
import type { ConnectionState, HostpulseClient, Incomplete } from "../client";
import { AlertStore } from "./alerts";
import { AlertsNav, AlertsView } from "./AlertsView";
import { ConnectionBadge } from "./ConnectionBadge";
import { getJson, storeToken, Unauthorized } from "./connection";
import { FleetStore, type RestHost, SNAPSHOT_PATH } from "./fleet";
import { FleetView } from "./FleetView";
import { HostView } from "./HostView";
import { parseHostHash, type Range } from "./range";
import { TokenPrompt } from "./TokenPrompt";

function route(): { host?: string; range?: Range; alerts?: boolean } {
  if (/^#\/alerts\/?$/.test(location.hash)) return { alerts: true };
  return parseHostHash(location.hash) ?? {};
}

export function App({ client }: { client: HostpulseClient }) {
  const [state, setState] = useState<ConnectionState>(client.state);
  const [incomplete, setIncomplete] = useState<Incomplete[]>([]);
  const [needToken, setNeedToken] = useState<string | null>(null);
  /** Cluster mode: set while this aggregator has lost the broker. */
  const [brokerDown, setBrokerDown] = useState<string | null>(null);
  const [view, setView] = useState(route);
  const fleet = useMemo(() => new FleetStore(), []);
  const alerts = useMemo(() => new AlertStore((host, a) => fleet.setAlerts(host, a)), [fleet]);
  /** Moves when a token is entered: alerts are read again with it. */
  const [tokenRev, setTokenRev] = useState(0);

  useEffect(() => {
    const onHash = () => setView(route());
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, []);

  useEffect(() => {
    const offs = [
      client.on("state", (s) => {
        setState(s);
        if (s.kind === "unauthorized") setNeedToken(s.message);
      }),
      // The snapshot needs the `hosts` grant: ask once the subscription is confirmed.
      client.on("subscribed", (s) => {
        if (s.topic === "hosts") loadSnapshot();
      }),
      client.on("incomplete", (i) => setIncomplete((all) => [...all, i])),
      client.on("sys", (m) => {
        if (m.topic !== "$sys.cluster") return;
        const p = m.payload as { state?: string; node?: string };
        setBrokerDown(p.state === "disconnected" ? (p.node ?? "this aggregator") : null);
      }),
      client.on("error", (e) => {
        if (e.code === "unauthorized") setNeedToken(e.message);
        else console.warn(`hostpulse: ${e.code}: ${e.message}`);
      }),
    ];
    const detach = fleet.attach(client);
    client.connect();

    function loadSnapshot() {
      getJson<RestHost[]>(SNAPSHOT_PATH)
        .then((hosts) => fleet.applySnapshot(hosts))
        .catch((e: Error) => {
          if (e instanceof Unauthorized) setNeedToken("A token is required to read the fleet.");
          else console.warn(`hostpulse: ${e.message}`);
        });
    }
    return () => {
      offs.forEach((off) => off());
      detach();
      client.close();
    };
  }, [client, fleet]);

  useEffect(() => alerts.attach(client), [alerts, client, tokenRev]);

  const onToken = (token: string) => {
    storeToken(token);
    setNeedToken(null);
    client.setToken(token);
    setTokenRev((r) => r + 1);
  };

  return (
    <div className="app">
      <header>
        <h1>
          <a href="#/">hostpulse</a>
        </h1>
        <nav>
          <a href="#/" className={`nav${!view.host && !view.alerts ? " on" : ""}`} data-testid="nav-fleet">
            fleet
          </a>
          <AlertsNav store={alerts} active={view.alerts === true} />
        </nav>
        <ConnectionBadge state={state} />
      </header>
      {brokerDown !== null && (
        <div className="note" data-testid="broker-down">
          Aggregator {brokerDown} has lost the cluster broker: hosts attached to other aggregators are not updating
          here until it reconnects (it catches up what its peers still hold).
        </div>
      )}
      {incomplete.length > 0 && (
        <div className="note" data-testid="incomplete">
          Resume incomplete: the aggregator's history no longer covered the whole disconnection for{" "}
          {incomplete.map((i) => i.pattern).join(", ")}; charts have a gap there.
          <button onClick={() => setIncomplete([])}>dismiss</button>
        </div>
      )}
      {needToken !== null ? (
        <TokenPrompt message={needToken} onToken={onToken} />
      ) : view.alerts ? (
        <AlertsView store={alerts} />
      ) : view.host ? (
        <HostView key={view.host} client={client} host={view.host} range={view.range} />
      ) : (
        <FleetView store={fleet} />
      )}
    </div>
  );
}
