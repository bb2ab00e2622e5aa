#!/usr/bin/env bash
# Measures the agent's own cost: CPU (% of one core) and resident memory over
# a window, with a real aggregator on loopback. Usage:
#   scripts/agent-cost.sh [seconds=60] [agent.toml=deploy/agent.toml] [extra processes=0]
# With extra processes, that many idle `sleep` processes are started first
# (and stopped at the end), to measure the agent on a busy process table.
# AGENT_BIN=path measures another agent binary (e.g. the static musl one,
# `make static`) against the same release aggregator.
# Prints one line per run; the median of several runs goes in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
agent_conf=${2:-deploy/agent.toml}
extra=${3:-0}
cargo build --release --bins -q
bin=${CARGO_TARGET_DIR:-target}/release
dir=$(mktemp -d)
printf '[ingest]\nlisten = "127.0.0.1:0"\n[http]\nlisten = "127.0.0.1:0"\n' > "$dir/agg.toml"
"$bin"/hostpulse-aggregator --config "$dir/agg.toml" 2> "$dir/agg.log" &
agg=$!
sleepers=()
for _ in $(seq 1 "$extra"); do sleep $((secs + 60)) & sleepers+=($!); done
trap 'kill $agg ${agent:-} "${sleepers[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do grep -q "aggregator listening" "$dir/agg.log" && break; sleep 0.1; done
ingest=$(grep -o 'ingest_addr=[0-9.:]*' "$dir/agg.log" | cut -d= -f2)
"${AGENT_BIN:-$bin/hostpulse-agent}" --config "$agent_conf" --aggregator "http://$ingest" 2> "$dir/agent.log" &
agent=$!
sleep 3 # start-up and the first samples are not the steady state
ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
t0=$(cpu_ticks); s0=$(date +%s.%N)
sleep "$secs"
t1=$(cpu_ticks); s1=$(date +%s.%N)
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$agent/status")
procs=$(ls /proc | grep -c '^[0-9]*$')
awk -v t0="$t0" -v t1="$t1" -v s0="$s0" -v s1="$s1" -v hz="$ticks" -v rss="$rss_kib" -v n="$procs" \
    'BEGIN { printf "agent cpu %.3f %% of one core, rss %.1f MiB, over %.0f s, %d processes on the machine\n", 100*(t1-t0)/hz/(s1-s0), rss/1024, s1-s0, n }'
