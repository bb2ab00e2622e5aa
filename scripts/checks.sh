# Sourced by the scripted test runs (deb-test.sh, static-agent-test.sh): each
# check prints `ok: NAME` or `FAIL: NAME` (with the command's output), and
# `summary S` prints the closing `RUNNER: P passed, F failed, S skipped` that
# scripts/test-summary.sh adds to its totals. Set RUNNER before sourcing.
passed=0
failed=0
summary() { echo "$RUNNER: $passed passed, $failed failed, $1 skipped"; }
ok() { echo "ok: $1"; passed=$((passed + 1)); }
fail() { echo "FAIL: $1"; failed=$((failed + 1)); }
# check NAME COMMAND...: runs COMMAND, passes if it exits 0.
check() {
    local name=$1
    shift
    local out
    if out=$("$@" 2>&1); then ok "$name"; else fail "$name"; [ -n "$out" ] && sed 's/^/    /' <<<"$out" | head -n 20; fi
}
