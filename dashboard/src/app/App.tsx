// The dashboard shell: header with the connection indicator, the incomplete-
// resume note, the token prompt when the aggregator requires one, and the
// two views (`#/` fleet, `#/host/<name>` one host, with its time range in
// the hash's query: `?range=24h`, `?from=…&to=…`; range.ts).

import { useEffect, useMemo, useState } from "react";
import type { ConnectionState, HostpulseClient, Incomplete } from "../client";
import { ConnectionBadge } from "./ConnectionBadge";
import { getJson, storeToken, Unauthorized } from "./connection";
import { FleetStore, type RestHost, SNAPSHOT_PATH } from "./fleet";
import { FleetView } from "./FleetView";
import { HostView } from "./HostView";
import { parseHostHash, type Range } from "./range";
import { TokenPrompt } from "./TokenPrompt";

function route(): { host?: string; range?: Range } {
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

  const onToken = (token: string) => {
    storeToken(token);
    setNeedToken(null);
    client.setToken(token);
  };

  return (
    <div className="app">
      <header>
        <h1>
          <a href="#/">hostpulse</a>
        </h1>
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
      ) : view.host ? (
        <HostView key={view.host} client={client} host={view.host} range={view.range} />
      ) : (
        <FleetView store={fleet} />
      )}
    </div>
  );
}
