#!/usr/bin/env bash
# Local cluster in one command: builds hostpulse, starts nats-server, two
# aggregators sharing updates through it and two agents (one on each, each
# able to fail over to the other), all on 127.0.0.1, with the files in
# deploy/cluster/. Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

nats_bin=$(command -v nats-server || true)
[ -z "$nats_bin" ] && [ -x /usr/sbin/nats-server ] && nats_bin=/usr/sbin/nats-server
if [ -z "$nats_bin" ]; then
    echo "nats-server is needed: apt-get install -y nats-server" >&2
    exit 1
fi

cargo build --release -p hostpulse-aggregator -p hostpulse-agent
bin=target/release

pids=()
stop() {
    trap - INT TERM EXIT
    # Agents first, then aggregators, then the broker: each by its own PID.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    echo "hostpulse cluster stopped."
}
trap stop INT TERM EXIT

# Waits (bounded) for a loopback port to accept connections.
wait_port() {
    for _ in $(seq 1 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

"$nats_bin" -a 127.0.0.1 -p 4333 &
pids+=($!)
wait_port 4333

for n in 1 2; do
    "$bin/hostpulse-aggregator" --config "deploy/cluster/aggregator-$n.toml" &
    pids+=($!)
done
wait_port 7171
wait_port 7271

for n in 1 2; do
    "$bin/hostpulse-agent" --config "deploy/cluster/agent-$n.toml" &
    pids+=($!)
done

cat <<MSG

hostpulse cluster is running (Ctrl-C stops it all).
  nats-server    127.0.0.1:4333        (PID ${pids[0]})
  aggregator 1   dashboard http://127.0.0.1:7171/  ws://127.0.0.1:7171/ws  gRPC 127.0.0.1:7170  (PID ${pids[1]})
  aggregator 2   dashboard http://127.0.0.1:7271/  ws://127.0.0.1:7271/ws  gRPC 127.0.0.1:7270  (PID ${pids[2]})
  agents         local-a (prefers 1), local-b (prefers 2)

Both hosts on either aggregator:
  echo '{"action":"subscribe","topic":"host.*.cpu"}' | websocat --no-close ws://127.0.0.1:7171/ws
  curl -s http://127.0.0.1:7271/api/v1/hosts

Try a failover: kill -9 ${pids[1]} (aggregator 1); local-a moves to aggregator 2.
Try an outage:  kill -9 ${pids[0]} (nats-server); each aggregator keeps serving its own agents.

MSG
wait
