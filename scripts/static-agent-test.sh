#!/usr/bin/env bash
# The static agent (issue 18): `make static` builds hostpulse-agent for
# x86_64-unknown-linux-musl; this checks that the binary is static (no
# interpreter, no shared libraries), that `--once` prints a sample, and that
# it streams to a (release, glibc) aggregator: an update
# on its cpu topic arrives on the aggregator's WebSocket.
#
# Prints `ok: ...` / `FAIL: ...` per check and ends with
#     musl: P passed, F failed, S skipped
# which scripts/test-summary.sh adds to its totals.
set -uo pipefail
cd "$(dirname "$0")/.."

RUNNER=musl
# shellcheck source=scripts/checks.sh
. scripts/checks.sh

target=${CARGO_TARGET_DIR:-target}
# The aggregator it streams to: the release build (already there after
# `make deb`; built here otherwise).
if ! make --no-print-directory static || ! cargo build --release -p hostpulse-aggregator; then
    fail "make static builds the musl agent (and cargo the release aggregator)"
    summary 0
    exit 1
fi
musl=$target/x86_64-unknown-linux-musl/release/hostpulse-agent
check "make static wrote $musl" test -x "$musl"
echo "== $musl: $(stat -c %s "$musl") bytes; glibc build: $(stat -c %s "$target/release/hostpulse-agent") bytes"
check "it is static: no program interpreter, no shared library" \
    bash -c "! readelf -lW '$musl' | grep -q 'program interpreter' && ! readelf -dW '$musl' | grep -q NEEDED && file -b '$musl' | grep -q 'static'"
check "--once prints a sample with a CPU figure" \
    bash -c "'$musl' --config deploy/agent.toml --once | python3 -c 'import json,sys; s=json.load(sys.stdin); print(json.dumps(s)[:300]); assert 0 <= s[\"cpu\"][\"total_pct\"] <= 100'"

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}
ingest=127.0.0.1:$(free_port)
http=127.0.0.1:$(free_port)
host=musl-test-$$
"$target/release/hostpulse-aggregator" --config deploy/aggregator.toml \
    --ingest-listen "$ingest" --http-listen "$http" >"$work/aggregator.log" 2>&1 &
pids+=($!)
check "an aggregator answers /healthz within 30 s" wait_for 30 curl -fsS "http://$http/healthz"
"$musl" --config deploy/agent.toml --aggregator "http://$ingest" --hostname "$host" >"$work/agent.log" 2>&1 &
pids+=($!)
check "the musl agent's update on host.$host.cpu reaches the WebSocket within 30 s" \
    scripts/ws-wait-update.py "$http" "host.$host.cpu" 30
if [ "$failed" -gt 0 ]; then
    echo "    aggregator log:"; tail -n 15 "$work/aggregator.log" | sed 's/^/      /'
    echo "    agent log:"; tail -n 15 "$work/agent.log" | sed 's/^/      /'
fi

summary 0
[ "$failed" -eq 0 ]
