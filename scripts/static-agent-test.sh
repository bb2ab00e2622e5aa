#!/usr/bin/env bash
# The static agent (issue 18): `make static` builds hostpulse-agent for
# x86_64-unknown-linux-musl; this checks that the binary is static (no
# interpreter, no shared libraries), that `--once` prints a sample, and that
# it streams to a (release, glibc) aggregator: an update
# on its cpu topic arrives on the aggregator's WebSocket.
#
# Then the same for `make static-aarch64` (aarch64-unknown-linux-musl,
# cross-built), run under qemu-aarch64 (Debian: qemu-user): static and
# aarch64, `--once`, streaming to the same aggregator, and streaming over TLS
# to a second aggregator (the cross-built ring code does the handshake and
# the encryption), seen online with a CPU figure in its REST API. Without
# qemu-aarch64 (scripts/test-deps.sh installs it as root) the run checks
# are skipped, saying so.
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
# The store in the work directory, not the packaged /var/lib/hostpulse.
"$target/release/hostpulse-aggregator" --config deploy/aggregator.toml \
    --ingest-listen "$ingest" --http-listen "$http" --storage-dir "$work/store" >"$work/aggregator.log" 2>&1 &
pids+=($!)
check "an aggregator answers /healthz within 30 s" wait_for 30 curl -fsS "http://$http/healthz"
"$musl" --config deploy/agent.toml --aggregator "http://$ingest" --hostname "$host" >"$work/agent.log" 2>&1 &
pids+=($!)
check "the musl agent's update on host.$host.cpu reaches the WebSocket within 30 s" \
    scripts/ws-wait-update.py "$http" "host.$host.cpu" 30
show_logs() { # show_logs FAILED_BEFORE LOG...: the logs' tails if a check failed since
    [ "$failed" -gt "$1" ] || return 0
    shift
    for log in "$@"; do
        echo "    $(basename "$log"):"; tail -n 15 "$log" | sed 's/^/      /'
    done
}
show_logs 0 "$work/aggregator.log" "$work/agent.log"

# --- aarch64: cross-built, run under qemu-user ----------------------------
failed_before=$failed
skipped=0
arm=$target/aarch64-unknown-linux-musl/release/hostpulse-agent
if ! make --no-print-directory static-aarch64; then
    fail "make static-aarch64 cross-builds the aarch64 musl agent (needs aarch64-linux-gnu-gcc, Debian's gcc-aarch64-linux-gnu: scripts/test-deps.sh)"
    summary 0
    exit 1
fi
check "make static-aarch64 wrote $arm" test -x "$arm"
echo "== $arm: $(stat -c %s "$arm") bytes"
check "it is an aarch64 executable, static: no program interpreter, no shared library" \
    bash -c "readelf -hW '$arm' | grep -q 'Machine: *AArch64' && ! readelf -lW '$arm' | grep -q 'program interpreter' && ! readelf -dW '$arm' | grep -q NEEDED && file -b '$arm' | grep -q 'statically linked'"
if ! command -v qemu-aarch64 >/dev/null; then
    echo "skipped: running the aarch64 agent (--once, streaming, TLS): no qemu-aarch64 on this machine (Debian's qemu-user; scripts/test-deps.sh installs it as root)"
    skipped=3
else
    check "--once under qemu-aarch64 prints a sample with a CPU figure" \
        bash -c "qemu-aarch64 '$arm' --config deploy/agent.toml --once | python3 -c 'import json,sys; s=json.load(sys.stdin); print(json.dumps(s)[:300]); assert 0 <= s[\"cpu\"][\"total_pct\"] <= 100'"
    qemu-aarch64 "$arm" --config deploy/agent.toml --aggregator "http://$ingest" --hostname "$host-arm64" >"$work/agent-arm64.log" 2>&1 &
    pids+=($!)
    check "the aarch64 agent's update on host.$host-arm64.cpu reaches the WebSocket within 30 s" \
        scripts/ws-wait-update.py "$http" "host.$host-arm64.cpu" 30

    # TLS: a CA, and a certificate for 127.0.0.1 that it signed.
    (
        cd "$work" &&
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
                -subj /CN=hostpulse-test-ca -keyout ca.key -out ca.crt &&
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -subj /CN=127.0.0.1 -keyout tls.key -out tls.csr &&
            printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' >tls.ext &&
            openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile tls.ext -out tls.crt
    ) >"$work/openssl.log" 2>&1 || { echo "openssl failed:"; cat "$work/openssl.log"; }
    cp deploy/aggregator.toml "$work/aggregator-tls.toml"
    printf '\n[tls]\ncert_file = "%s"\nkey_file = "%s"\n' "$work/tls.crt" "$work/tls.key" >>"$work/aggregator-tls.toml"
    { echo "ca_file = \"$work/ca.crt\""; cat deploy/agent.toml; } >"$work/agent-tls.toml"
    tls_ingest=127.0.0.1:$(free_port)
    tls_http=127.0.0.1:$(free_port)
    "$target/release/hostpulse-aggregator" --config "$work/aggregator-tls.toml" \
        --ingest-listen "$tls_ingest" --http-listen "$tls_http" \
        --storage-dir "$work/store-tls" >"$work/aggregator-tls.log" 2>&1 &
    pids+=($!)
    check "a TLS aggregator answers https://$tls_http/healthz within 30 s" \
        wait_for 30 curl -fsS --cacert "$work/ca.crt" "https://$tls_http/healthz"
    qemu-aarch64 "$arm" --config "$work/agent-tls.toml" --aggregator "https://$tls_ingest" \
        --hostname "$host-arm64-tls" >"$work/agent-arm64-tls.log" 2>&1 &
    pids+=($!)
    online_with_cpu() {
        curl -fsS --cacert "$work/ca.crt" "https://$tls_http/api/v1/hosts/$1" | python3 -c '
import json, sys
h = json.load(sys.stdin)
pct = h["latest"]["cpu"]["payload"]["total_pct"]
assert h["online"] is True and 0 <= pct <= 100, h'
    }
    check "over TLS, the aarch64 agent is online with a CPU figure (https /api/v1/hosts/$host-arm64-tls) within 30 s" \
        wait_for 30 online_with_cpu "$host-arm64-tls"
    show_logs "$failed_before" "$work/aggregator.log" "$work/agent-arm64.log" "$work/aggregator-tls.log" "$work/agent-arm64-tls.log"
fi

summary "$skipped"
[ "$failed" -eq 0 ]
