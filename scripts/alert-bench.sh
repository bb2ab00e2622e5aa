#!/usr/bin/env bash
# Alerting benchmarks (the alerting issue's two figures), release builds on
# loopback, each with a real Alertmanager (prometheus-alertmanager):
#
#   scripts/alert-bench.sh latency [alerts=20] [runs=3]
#   scripts/alert-bench.sh cost [hosts=10000] [secs=60] [runs=2]
#
# latency: an aggregator with `cpu.total_pct > 90 for 2s` on `lat-*`;
#   hostpulse-alert-latency sends, per host, the sample completing the `for`
#   window and polls GET /api/v2/alerts every 10 ms until Alertmanager holds
#   the alert. Prints each run's median, p95 and max.
# cost: hostpulse-fleet-sim with `hosts` hosts at 1 Hz (no backlog, none
#   going offline) against an aggregator without rules, then one with 20
#   rules selecting every host (thresholds on CPU, per-core CPU, memory and
#   load, one `absent`, one `predict`); the aggregator's CPU (utime + stime
#   from /proc/PID/stat) over `secs` seconds, starting 10 s after every host
#   is attached. Prints each run's % of one core, and the difference.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: $0 latency|cost [...]}
bin=${CARGO_TARGET_DIR:-target}/release
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts Alertmanager on a free port (null receiver); sets am.
start_am() {
    local port
    port=$(free_port)
    mkdir -p "$dir/am"
    printf "route:\n  receiver: 'null'\n  group_wait: 0s\n  group_interval: 1s\nreceivers:\n  - name: 'null'\n" >"$dir/am/am.yml"
    prometheus-alertmanager --config.file="$dir/am/am.yml" --storage.path="$dir/am/data" \
        --web.listen-address="127.0.0.1:$port" --cluster.listen-address= >/dev/null 2>&1 &
    pids+=($!)
    am=127.0.0.1:$port
    for _ in $(seq 1 200); do
        if curl -sf "http://$am/-/ready" >/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "alertmanager did not start" >&2
    exit 1
}

# Starts the aggregator with `$1` appended to its config; sets agg, ingest.
start_agg() {
    ingest=127.0.0.1:$(free_port)
    local http
    http=127.0.0.1:$(free_port)
    printf '[ingest]\nlisten = "%s"\n[http]\nlisten = "%s"\n%s\n' "$ingest" "$http" "$1" >"$dir/agg.toml"
    "$bin/hostpulse-aggregator" --config "$dir/agg.toml" 2>"$dir/agg.log" &
    agg=$!
    pids+=("$agg")
    for _ in $(seq 1 200); do
        if grep -qs "aggregator listening" "$dir/agg.log"; then return 0; fi
        sleep 0.05
    done
    echo "aggregator did not start:" >&2
    cat "$dir/agg.log" >&2
    exit 1
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# CPU ticks (utime + stime) of process $1.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

case $mode in
latency)
    alerts=${2:-20}
    runs=${3:-3}
    cat >"$dir/alerts.toml" <<'EOF'
[[rule]]
name = "LatencyCpu"
expr = "cpu.total_pct > 90"
for = "2s"
clear = 80
hosts = ["lat-*"]
summary = "CPU on {{host}} at {{value}} %"
EOF
    start_am
    for run in $(seq 1 "$runs"); do
        start_agg "[alerts]
rules = \"$dir/alerts.toml\"
alertmanager_urls = [\"http://$am\"]"
        "$bin/hostpulse-alert-latency" --ingest "$ingest" --alertmanager "$am" --alerts "$alerts" | tail -1 | sed "s/^/run $run: /"
        stop "$agg"
    done
    ;;
cost)
    hosts=${2:-10000}
    secs=${3:-60}
    runs=${4:-2}
    {
        for i in 1 2 3 4 5; do
            printf '[[rule]]\nname = "Cpu%s"\nexpr = "cpu.total_pct > %s"\nfor = "%ss"\nclear = 80\n' "$i" $((90 + i)) $((i * 30))
        done
        for i in 1 2 3 4 5; do
            printf '[[rule]]\nname = "Memory%s"\nexpr = "memory.used_bytes / memory.total_bytes > 0.9%s"\nfor = "%ss"\nclear = 0.85\n' "$i" "$i" $((i * 30))
        done
        for i in 1 2 3 4 5; do
            printf '[[rule]]\nname = "Load%s"\nexpr = "load.one > 3.%s"\nfor = "%sm"\nclear = 3\n' "$i" $((4 + i)) "$i"
        done
        for i in 1 2 3; do
            printf '[[rule]]\nname = "Core%s"\nexpr = "cpu.per_core_pct[*] > 9%s"\nfor = "%sm"\nclear = 80\n' "$i" $((6 + i)) "$i"
        done
        printf '[[rule]]\nname = "Silent"\nkind = "absent"\nafter = "2m"\n'
        printf '[[rule]]\nname = "MemoryFilling"\nkind = "predict"\nexpr = "memory.used_bytes > 8589934592"\nwindow = "5m"\nhorizon = "1h"\nfor = "5m"\n'
    } >"$dir/alerts20.toml"
    start_am
    hz=$(getconf CLK_TCK)
    for run in $(seq 1 "$runs"); do
        for rules in 0 20; do
            if [ "$rules" = 0 ]; then
                start_agg ""
            else
                start_agg "[alerts]
rules = \"$dir/alerts20.toml\"
alertmanager_urls = [\"http://$am\"]"
            fi
            "$bin/hostpulse-fleet-sim" --ingest "$ingest" --hosts "$hosts" --interval-ms 1000 \
                --backlog 0 --offline-every 0 --duration-secs $((secs + 240)) >"$dir/sim.log" 2>&1 &
            sim=$!
            pids+=("$sim")
            for _ in $(seq 1 1800); do
                if grep -qs "fleet-sim ready" "$dir/sim.log"; then break; fi
                sleep 0.1
            done
            grep -q "fleet-sim ready" "$dir/sim.log" || { echo "fleet-sim not ready:" >&2; cat "$dir/sim.log" >&2; exit 1; }
            sleep 10
            t0=$(ticks "$agg")
            sleep "$secs"
            t1=$(ticks "$agg")
            pct=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$secs" 'BEGIN { printf "%.1f", d / hz / s * 100 }')
            echo "run $run rules=$rules hosts=$hosts: aggregator ${pct} % of one core over ${secs} s"
            eval "pct_${rules}=$pct"
            stop "$sim"
            stop "$agg"
        done
        awk -v a="$pct_0" -v b="$pct_20" 'BEGIN { printf "run '"$run"': 20 rules add %.1f %% of one core\n", b - a }'
    done
    ;;
*)
    echo "usage: $0 latency|cost [...]" >&2
    exit 64
    ;;
esac
