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

run_all() {
    make --no-print-directory lint dashboard || return 1
    cargo build --workspace --bins || return 1
    local status=0
    cargo test --workspace --no-fail-fast || status=1
    (cd dashboard && npm test) || status=1
    (cd dashboard && npm run e2e) || status=1
    scripts/deb-test.sh || status=1
    scripts/static-agent-test.sh || status=1
    return "$status"
}

mkdir -p target
log=target/make-test.log
run_all 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
echo
scripts/test-summary.sh "$log" "$status"
exit "$status"
