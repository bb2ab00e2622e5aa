#!/usr/bin/env bash
# Local quick-start: builds hostpulse, starts an aggregator and an agent on
# 127.0.0.1 with the files in deploy/, prints where to look; Ctrl-C stops both.
# `make run` builds the dashboard (dashboard/dist) first, so the aggregator
# embeds it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p hostpulse-aggregator -p hostpulse-agent
bin=target/release

agg_pid=""
agent_pid=""
stop() {
    trap - INT TERM EXIT
    [ -n "$agent_pid" ] && kill -TERM "$agent_pid" 2>/dev/null || true
    [ -n "$agg_pid" ] && kill -TERM "$agg_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    echo "hostpulse stopped."
}
trap stop INT TERM EXIT

# History on disk goes to target/hostpulse-data (git-ignored) rather than
# the packaged /var/lib/hostpulse of deploy/aggregator.toml.
"$bin/hostpulse-aggregator" --config deploy/aggregator.toml --storage-dir target/hostpulse-data &
agg_pid=$!

# Wait (bounded) for the HTTP port to answer before starting the agent.
for _ in $(seq 1 50); do
    if (exec 3<>/dev/tcp/127.0.0.1/7071) 2>/dev/null; then break; fi
    kill -0 "$agg_pid" 2>/dev/null || { echo "aggregator failed to start" >&2; exit 1; }
    sleep 0.1
done

"$bin/hostpulse-agent" --config deploy/agent.toml &
agent_pid=$!

cat <<MSG

hostpulse is running (Ctrl-C stops both).
  Dashboard:  http://127.0.0.1:7071/
  WebSocket:  ws://127.0.0.1:7071/ws
  Health:     http://127.0.0.1:7071/healthz
  gRPC:       127.0.0.1:7070 (agents)
  History:    target/hostpulse-data (e.g. curl 'http://127.0.0.1:7071/api/v1/hosts/<host>/series?fields=cpu.total_pct&step=1m')

Watch every host's CPU with websocat:
  echo '{"action":"subscribe","topic":"host.*.cpu"}' | websocat --no-close ws://127.0.0.1:7071/ws

MSG
wait
