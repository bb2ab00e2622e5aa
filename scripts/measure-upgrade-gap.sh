#!/usr/bin/env bash
# What an agent upgrade costs in samples (issue 18). The agent's spool is in
# memory, so `dpkg -i` of a new version (the package's postinst restarts a
# running unit: systemd sends SIGTERM, waits for the exit, starts the new
# binary) loses whatever the node would have sampled while no agent ran.
# This measures that for real, on loopback:
#
#   scripts/measure-upgrade-gap.sh [restarts=5] [agent.toml=deploy/agent.toml]
#
# A release aggregator (ports chosen by the kernel), one follower on the
# agent's host.<h>.cpu topic over WebSocket (scripts/ws-wait-update.py
# --follow), and the agent; then, `restarts` times, about 5 s apart at a
# different point of the sampling interval each time: SIGTERM, wait for the
# exit, start again at once. AGENT_BIN=... runs another build (e.g. the
# static musl one); NEW_AGENT_BIN=... is started by the restarts (default:
# the same binary).
#
# From the updates seen (one per sample) and the agents' logs it prints, per
# restart: how long the old agent took to stop, the time between the old
# run's last sample and the new run's first, and the samples missed (those
# an agent left running would have taken in between); whether the old run
# delivered every sample it took (its exit line names its last seq); then
# the median and max over the restarts. Exits non-zero if a sample taken was
# not delivered, or seqs within a run have a hole.
set -euo pipefail
cd "$(dirname "$0")/.."
restarts=${1:-5}
agent_conf=${2:-deploy/agent.toml}
cargo build --release -q -p hostpulse-agent -p hostpulse-aggregator
bin=${CARGO_TARGET_DIR:-target}/release
agent_bin=${AGENT_BIN:-$bin/hostpulse-agent}
new_bin=${NEW_AGENT_BIN:-$agent_bin}
host=upgrade-gap-$$
dir=$(mktemp -d)
agg="" follower="" agent=""
trap 'for p in $agent $follower $agg; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$dir"' EXIT

printf '[ingest]\nlisten = "127.0.0.1:0"\n[http]\nlisten = "127.0.0.1:0"\n' >"$dir/agg.toml"
"$bin/hostpulse-aggregator" --config "$dir/agg.toml" --log-format json 2>"$dir/agg.log" &
agg=$!
for _ in $(seq 100); do grep -q '"aggregator listening"' "$dir/agg.log" && break; sleep 0.1; done
ingest=$(grep -o '"ingest_addr":"[0-9.:]*"' "$dir/agg.log" | cut -d'"' -f4)
http=$(grep -o '"http_addr":"[0-9.:]*"' "$dir/agg.log" | cut -d'"' -f4)
[ -n "$ingest" ] && [ -n "$http" ] || { echo "the aggregator did not start:" >&2; cat "$dir/agg.log" >&2; exit 1; }

# The follower outlives every run: started with room to spare, killed at the end.
scripts/ws-wait-update.py "$http" "host.$host.cpu" $((30 + restarts * 10)) --follow >"$dir/updates.jsonl" &
follower=$!
sleep 0.5

start_agent() { # start_agent BINARY RUN
    "$1" --config "$agent_conf" --aggregator "http://$ingest" --hostname "$host" \
        --log-format json 2>"$dir/agent.$2.log" &
    agent=$!
}
start_agent "$agent_bin" 0
for _ in $(seq 100); do [ -s "$dir/updates.jsonl" ] && break; sleep 0.1; done
[ -s "$dir/updates.jsonl" ] || { echo "no update from the agent within 10 s" >&2; cat "$dir/agent.0.log" >&2; exit 1; }

for run in $(seq 1 "$restarts"); do
    # 4.0 to 5.0 s, a different phase of the 1 s interval each time.
    sleep "$(awk -v r="$run" 'BEGIN { printf "%.2f", 4 + (r * 0.37) % 1 }')"
    t0=$(date +%s%N)
    kill -TERM "$agent"
    wait "$agent" || true
    t1=$(date +%s%N)
    echo "$(((t1 - t0) / 1000000))" >"$dir/stop.$run.ms"
    start_agent "$new_bin" "$run"
done
sleep 5
kill -TERM "$agent"
wait "$agent" || true
agent=""
kill "$follower" 2>/dev/null || true
wait "$follower" 2>/dev/null || true
follower=""

python3 - "$dir" "$restarts" <<'PY'
import json, math, statistics, sys
from datetime import datetime

d, restarts = sys.argv[1], int(sys.argv[2])

def log(run):
    return [json.loads(l) for l in open(f"{d}/agent.{run}.log") if l.startswith("{")]

def millis(ts):
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000

updates = {}
for line in open(f"{d}/updates.jsonl"):
    m = json.loads(line)
    updates[m["seq"]] = millis(m["timestamp"])
runs = []
for run in range(restarts + 1):
    lines = log(run)
    start = next(l for l in lines if l["message"] == "agent starting")
    exit_line = next((l for l in lines if "exiting" in l["message"]), None)
    first = start["epoch"] // 10 + 1  # first_seq(epoch) + 1: MIN_INTERVAL_MS is 10
    runs.append({"first": first, "interval": start["interval_ms"], "exit": exit_line})
bad = False
for i, r in enumerate(runs):
    upper = runs[i + 1]["first"] if i + 1 < len(runs) else math.inf
    seqs = sorted(s for s in updates if r["first"] <= s < upper)
    r["seqs"] = seqs
    if not seqs:
        print(f"run {i}: no update seen"); bad = True; continue
    holes = (seqs[-1] - seqs[0] + 1) - len(seqs)
    if seqs[0] != r["first"] or holes:
        print(f"run {i}: seqs {seqs[0]}..{seqs[-1]}, first expected {r['first']}, {holes} missing inside the run")
        bad = True
    e = r["exit"]
    if e is None or e["message"] != "every batch acknowledged; exiting":
        print(f"run {i}: did not exit with every batch acknowledged: {e}"); bad = True
    elif e["last_sample_seq"] != seqs[-1] or e["samples_taken"] != len(seqs):
        print(f"run {i}: took {e['samples_taken']} samples up to seq {e['last_sample_seq']}, "
              f"{len(seqs)} seen up to {seqs[-1]}")
        bad = True

gaps, missed = [], []
print(f"restart  stop(ms)  last old -> first new sample (s)  samples missed  old run delivered")
for i in range(1, len(runs)):
    old, new = runs[i - 1], runs[i]
    if not old["seqs"] or not new["seqs"]:
        continue
    gap = updates[new["seqs"][0]] - updates[old["seqs"][-1]]
    # Samples a running agent would have taken strictly between the two
    # (50 ms of slack for the timer's jitter).
    n = max(0, math.ceil((gap - 50) / old["interval"]) - 1)
    gaps.append(gap / 1000); missed.append(n)
    stop = open(f"{d}/stop.{i}.ms").read().strip()
    e = old["exit"] or {}
    whole = e.get("last_sample_seq") == old["seqs"][-1]
    print(f"{i:7}  {stop:>8}  {gap / 1000:32.3f}  {n:14}  "
          f"{'all ' + str(len(old['seqs'])) if whole else 'NO'}")
if gaps:
    print(f"upgrade gap over {len(gaps)} restarts at {runs[0]['interval']} ms sampling: "
          f"median {statistics.median(gaps):.3f} s ({statistics.median(missed):g} samples missed), "
          f"max {max(gaps):.3f} s ({max(missed)} samples missed); "
          f"every sample taken before SIGTERM delivered: {'no' if bad else 'yes'}")
sys.exit(1 if bad or len(gaps) != restarts else 0)
PY
