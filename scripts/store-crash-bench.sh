#!/usr/bin/env bash
# The store under SIGKILL (issue 15's crash benchmark), for real, on loopback:
#
#   scripts/store-crash-bench.sh [kills=20] [retain_acked_samples=0] [agents=4]
#
# A release aggregator with the store on (flush_interval_ms = 2000) and
# `agents` real agents sampling every 100 ms; then, `kills` times, at a random
# moment 1 to 4 s after the aggregator is back: SIGKILL, and a restart on the
# same ports. Each start must open the store (and log the recovery of an
# unclean shutdown). At the end every agent's CPU series is read back at a
# one-second step over the whole run: each stretch of seconds with no value
# is data lost, and the longest must not exceed the flush interval (plus the
# second a bucket spans).
#
# retain_acked_samples = 0 measures the store alone: an acknowledged sample
# not yet flushed is gone. With the agents' default (600) an agent sends its
# retained samples again to the aggregator that comes back knowing nothing
# of it, and the store takes those it lacks: the run shows no loss at all.
# Prints per kill the time since the start and the recovery line, then the
# gaps and their longest, per host. Exits non-zero if a start failed or a gap
# exceeded the bound.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-20}
retain=${2:-0}
agents=${3:-4}
flush_ms=2000
cargo build --release -q -p hostpulse-agent -p hostpulse-aggregator
bin=${CARGO_TARGET_DIR:-target}/release
dir=$(mktemp -d)
agg="" pids=()
cleanup() {
    for p in "${pids[@]}" $agg; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ingest=$(free_port)
http=$(free_port)
cat >"$dir/agg.toml" <<EOF
[ingest]
listen = "127.0.0.1:$ingest"
max_batches_per_sec = 1000
[http]
listen = "127.0.0.1:$http"
[storage]
dir = "$dir/store"
flush_interval_ms = $flush_ms
EOF

start_agg() {
    "$bin/hostpulse-aggregator" --config "$dir/agg.toml" 2>"$dir/agg-$1.log" &
    agg=$!
    for _ in $(seq 1 200); do
        if grep -qs "aggregator listening" "$dir/agg-$1.log"; then return 0; fi
        if ! kill -0 "$agg" 2>/dev/null; then break; fi
        sleep 0.05
    done
    echo "FAIL: start $1 did not listen" >&2
    cat "$dir/agg-$1.log" >&2
    exit 1
}

start_agg 0
started=$(date +%s%3N)
for i in $(seq 1 "$agents"); do
    cat >"$dir/agent-$i.toml" <<EOF
aggregator = "http://127.0.0.1:$ingest"
hostname = "crash-$i"
interval_ms = 100
batch_max_samples = 10
retain_acked_samples = $retain
reconnect_min_ms = 100
reconnect_max_ms = 500
[collect]
processes = false
temperatures = false
EOF
    "$bin/hostpulse-agent" --config "$dir/agent-$i.toml" 2>"$dir/agent-$i.log" &
    pids+=($!)
done

failed=0
for k in $(seq 1 "$kills"); do
    sleep "$(python3 -c 'import random; print(round(random.uniform(1, 4), 2))')"
    kill -KILL "$agg"
    wait "$agg" 2>/dev/null || true
    at=$(( $(date +%s%3N) - started ))
    start_agg "$k"
    if grep -q "last shutdown was not clean" "$dir/agg-$k.log"; then
        echo "kill $k at ${at} ms: store opened; $(grep -o 'recovery_ms=[0-9]*' "$dir/agg-$k.log" | head -1)"
    else
        echo "FAIL: kill $k: no recovery logged"
        grep -i store "$dir/agg-$k.log" || true
        failed=1
    fi
done
sleep 3
for p in "${pids[@]}"; do kill -TERM "$p"; done
wait "${pids[@]}" 2>/dev/null || true
pids=()
sleep $(( flush_ms / 1000 + 1 ))
ended=$(date +%s%3N)

for i in $(seq 1 "$agents"); do
    curl -sf "http://127.0.0.1:$http/api/v1/hosts/crash-$i/series?fields=cpu.total_pct&from=$started&to=$ended&step=1s" >"$dir/series-$i.json"
done
python3 - "$dir" "$agents" "$flush_ms" <<'EOF' || failed=1
import json, sys
d, agents, flush_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
worst = 0
for i in range(1, agents + 1):
    s = json.load(open(f"{d}/series-{i}.json"))["series"][0]
    ts = s["ts"]
    gaps = [b - a - 1000 for a, b in zip(ts, ts[1:]) if b - a > 1000]
    lost = sum(gaps)
    worst = max([worst] + gaps)
    print(f"crash-{i}: {len(ts)} seconds with values, {len(gaps)} gaps, {lost} ms without a value, longest {max(gaps, default=0)} ms")
bound = flush_ms + 1000
print(f"longest gap over all hosts: {worst} ms (bound: flush interval + one bucket = {bound} ms)")
sys.exit(1 if worst > bound else 0)
EOF
exit $failed
