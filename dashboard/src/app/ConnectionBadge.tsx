// The connection indicator: live, connecting, reconnecting in N s, or offline.

import { useEffect, useState } from "react";
import type { ConnectionState } from "../client";

export function ConnectionBadge({ state }: { state: ConnectionState }) {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (state.kind !== "reconnecting") return;
    const t = setInterval(() => setNow(Date.now()), 250);
    return () => clearInterval(t);
  }, [state]);

  let text: string;
  let cls: string;
  switch (state.kind) {
    case "live":
      text = "live";
      cls = "live";
      break;
    case "reconnecting": {
      const secs = Math.max(0, Math.ceil((state.retryAt - now) / 1000));
      text = secs > 0 ? `reconnecting in ${secs} s` : "reconnecting…";
      cls = state.attempt >= 3 ? "offline" : "reconnecting";
      break;
    }
    case "connecting":
      text = "connecting…";
      cls = "reconnecting";
      break;
    case "unauthorized":
      text = "token needed";
      cls = "offline";
      break;
    default:
      text = "offline";
      cls = "offline";
  }
  const title = state.kind === "reconnecting" ? `connection lost (${state.reason}), attempt ${state.attempt}` : undefined;
  return (
    <span
      className={`badge ${cls}`}
      data-testid="connection"
      data-state={state.kind}
      data-attempt={state.kind === "reconnecting" ? state.attempt : undefined}
      title={title}
    >
      <span className="dot" /> {text}
    </span>
  );
}
