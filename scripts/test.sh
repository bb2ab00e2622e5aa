#!/usr/bin/env bash
# `make test`: what the tests need (scripts/test-deps.sh, before anything is
# built), formatting and clippy, the build, every Rust test binary
# (--no-fail-fast, so one failing binary hides none after it), then the
# TypeScript client's tests and the browser tests, which run even when a Rust
# test failed, then the Debian packages' tests (scripts/deb-test.sh: a release
# build, `make deb`, install/run/upgrade/purge as root) and the static musl agent's
# (scripts/static-agent-test.sh). Ends with one line counting every runner's tests
# (scripts/test-summary.sh) and exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

scripts/test-deps.sh || exit 1

mkdir -p target
log=target/make-test.log
failed_steps=target/make-test.failed-steps
: >"$failed_steps"

# step NAME COMMAND...: runs COMMAND and says how long it took; a failure
# is recorded by NAME (with its exit status and the free disk space), so the
# closing lines say which step failed even when no test ran.
step() {
    local name=$1 rc=0 started=$SECONDS
    shift
    "$@" || rc=$?
    echo "== step \"$name\" took $((SECONDS - started)) s"
    if [ "$rc" -ne 0 ]; then
        echo "$name (exit $rc; free on $(pwd): $(df -h --output=avail . | tail -n 1 | tr -d ' '))" >>"$failed_steps"
    fi
    return "$rc"
}

run_all() {
    step "make lint dashboard" make --no-print-directory lint dashboard || return 1
    step "cargo build --workspace --bins" cargo build --workspace --bins || return 1
    local status=0
    step "cargo test" cargo test --workspace --no-fail-fast || status=1
    step "npm test" bash -c 'cd dashboard && npm test' || status=1
    step "npm run e2e" bash -c 'cd dashboard && npm run e2e' || status=1
    step "scripts/deb-test.sh" scripts/deb-test.sh || status=1
    step "scripts/static-agent-test.sh" scripts/static-agent-test.sh || status=1
    return "$status"
}

echo "free disk space: $(df -h --output=avail . | tail -n 1 | tr -d ' ') on $(pwd)"
run_all 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
echo
scripts/test-summary.sh "$log" "$status" "$failed_steps"
exit "$status"
