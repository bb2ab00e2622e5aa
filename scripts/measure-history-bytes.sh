#!/usr/bin/env bash
# Bytes history holds per update, on real samples: a release aggregator and
# a real agent on this machine sampling every 50 ms (every collector on, the
# slow families every second, the process table in every sample), printing
# /healthz's history_bytes / history_updates every 15 s for SECS seconds.
# Usage: scripts/measure-history-bytes.sh [SECS=60]   (after make build)
# Ports 17070/17071 on 127.0.0.1; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
tmp=$(mktemp -d)
sed 's|^aggregator = .*|aggregator = "http://127.0.0.1:17070"|;
     s|^interval_ms = .*|interval_ms = 50|;
     s|^filesystems_interval_secs.*|filesystems_interval_secs = 1|;
     s|^system_interval_secs.*|system_interval_secs = 1|;
     s|^temperatures_interval_secs.*|temperatures_interval_secs = 1|;
     s|^processes_budget_pct.*|processes_budget_pct = 50.0|' deploy/agent.toml > "$tmp/agent.toml"
target/release/hostpulse-aggregator --config deploy/aggregator.toml \
    --ingest-listen 127.0.0.1:17070 --http-listen 127.0.0.1:17071 \
    --storage-dir "$tmp/store" > "$tmp/aggregator.log" 2>&1 &
agg=$!
agent=""
trap 'kill -TERM $agent $agg 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 1 50); do
    (exec 3<>/dev/tcp/127.0.0.1/17071) 2>/dev/null && break
    sleep 0.1
done
target/release/hostpulse-agent --config "$tmp/agent.toml" > "$tmp/agent.log" 2>&1 &
agent=$!
for i in $(seq 1 "$secs"); do
    sleep 1
    [ $((i % 15)) -eq 0 ] || continue
    curl -s http://127.0.0.1:17071/healthz | python3 -c '
import json, sys
d = json.load(sys.stdin)
u, b, t = d["history_updates"], d["history_bytes"], d["topics"]
print("%s s: topics %d, updates held %d, bytes held %d, bytes/update %.1f" % (sys.argv[1], t, u, b, b / max(1, u)))' "$i"
done
