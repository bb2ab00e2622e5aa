#!/usr/bin/env bash
# Counts the tests in a `make test` log from each runner's own result lines and
# prints one closing line:
#     tests: P passed, F failed, S skipped
# or, when the run failed (STATUS non-zero) but no failure was counted (a lint
# or build error, a crashed runner), `INCOMPLETE: P passed, 0 failed, S skipped`.
# Usage: scripts/test-summary.sh LOG STATUS [FAILED_STEPS]
# FAILED_STEPS (from scripts/test.sh) names each step that exited non-zero;
# when nothing was counted as failed, the closing lines name that step and
# quote the log's first error lines, so the end of the log says why.
#
# cargo:  "test result: ok. 5 passed; 1 failed; 2 ignored; ..." per binary;
#         a binary that fails with no result line (crash, abort) shows only as
#         "error: test failed, to rerun pass ..." and is counted as errored.
# vitest: "Tests  1 failed | 10 passed | 2 skipped (13)" per run (tests under
#         a failed beforeAll are reported skipped, and counted so), "Test Files
#         2 failed | 1 passed (3)" and "Errors  1 error" (unhandled errors).
#         A failed file with no failed test in it is counted as errored.
# deb, musl: "deb: 20 passed, 1 failed, 0 skipped" from scripts/deb-test.sh,
#         "musl: ..." from scripts/static-agent-test.sh (their own ok:/FAIL:
#         lines above it). A failed run of one with no such line leaves the
#         status non-zero with nothing counted: INCOMPLETE.
# Errored counts join the failed ones in the closing line. Before the counts,
# the name of every failed test (cargo "test x ... FAILED", vitest "FAIL  file >
# test", the scripts' "FAIL:" lines), so the end of a long log says which.
set -euo pipefail
log=$1
status=$2
steps_file=${3:-}

plain=$(sed 's/\x1b\[[0-9;]*m//g' "$log")
sum() { awk '{s += $1} END {print s + 0}'; }
pick() { grep -oE "$1" || true; }

results=$(grep -E '^test result: ' <<<"$plain" || true)
cargo_passed=$(pick '[0-9]+ passed' <<<"$results" | sum)
cargo_failed=$(pick '[0-9]+ failed' <<<"$results" | sum)
cargo_ignored=$(pick '[0-9]+ ignored' <<<"$results" | sum)
cargo_failed_bins=$(grep -cE '^test result: FAILED' <<<"$results" || true)
cargo_failed_targets=$(grep -cE '^error: test failed, to rerun pass' <<<"$plain" || true)
cargo_errored=$((cargo_failed_targets > cargo_failed_bins ? cargo_failed_targets - cargo_failed_bins : 0))

# Each vitest run prints "Test Files", then "Tests", then maybe "Errors":
# count each run on its own, so one run's failed file is not hidden by another
# run's failed test.
read -r vitest_passed vitest_failed vitest_skipped vitest_errored < <(
    awk '
        function n(line, word,   m) { return match(line, "[0-9]+ " word) ? substr(line, RSTART, RLENGTH) + 0 : 0 }
        function close_run() { if (open) { e += (ff > tf ? ff - tf : 0); open = 0 } }
        /^ +Test Files +[0-9]/ { close_run(); open = 1; ff = n($0, "failed"); tf = 0 }
        /^ +Tests +[0-9]/ { p += n($0, "passed"); tf = n($0, "failed"); f += tf; s += n($0, "skipped") + n($0, "todo") }
        /^ +Errors +[0-9]+ error/ { e += n($0, "error") }
        END { close_run(); print p + 0, f + 0, s + 0, e + 0 }
    ' <<<"$plain"
)

debs=$(grep -E '^(deb|musl): [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' <<<"$plain" || true)
deb_passed=$(pick '[0-9]+ passed' <<<"$debs" | sum)
deb_failed=$(pick '[0-9]+ failed' <<<"$debs" | sum)
deb_skipped=$(pick '[0-9]+ skipped' <<<"$debs" | sum)

passed=$((cargo_passed + vitest_passed + deb_passed))
errored=$((cargo_errored + vitest_errored))
failed=$((cargo_failed + vitest_failed + deb_failed + errored))
skipped=$((cargo_ignored + vitest_skipped + deb_skipped))

# Which tests failed, by name, so that the last lines of a long log say it.
failures=$(
    {
        grep -E '^test .* \.\.\. FAILED$' <<<"$plain" | sed -E 's/^test (.*) \.\.\. FAILED$/cargo: \1/' || true
        grep -E '^error: test failed, to rerun pass' <<<"$plain" | sed -E 's/^error: test failed, to rerun pass /cargo binary: /' || true
        grep -E '^ *FAIL +[^ ]' <<<"$plain" | sed -E 's/^ *FAIL +/vitest: /' || true
        grep -E '^FAIL: ' <<<"$plain" | sed -E 's/^FAIL: /script: /' || true
    } | awk '!seen[$0]++'
)
if [ -n "$failures" ]; then
    echo "failed:"
    head -n 40 <<<"$failures" | sed 's/^/  /'
    n=$(wc -l <<<"$failures")
    [ "$n" -le 40 ] || echo "  ... and $((n - 40)) more (see $log)"
fi
echo "cargo: $cargo_passed passed, $cargo_failed failed, $cargo_ignored ignored, $cargo_errored binaries ended without a result line"
echo "vitest: $vitest_passed passed, $vitest_failed failed, $vitest_skipped skipped, $vitest_errored errored (failed files or unhandled errors)"
echo "deb and musl scripts: $deb_passed passed, $deb_failed failed, $deb_skipped skipped"
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    steps=""
    [ -n "$steps_file" ] && [ -s "$steps_file" ] && steps=$(paste -sd ';' "$steps_file")
    errors=$(grep -E '^error(\[E[0-9]+\])?:|^ *--> |No space left|Killed|Cannot allocate|^npm ERR|^E: ' <<<"$plain" | head -n 8 | cut -c 1-200 || true)
    if [ -n "$errors" ]; then
        echo "first error lines of the log:"
        sed 's/^/  /' <<<"$errors"
    fi
    echo "the run exited with status $status but no test failure was counted: a step before or around the tests failed${steps:+: $steps}"
    echo "INCOMPLETE: $passed passed, $failed failed, $skipped skipped${steps:+ (failed step: $steps)}"
else
    echo "tests: $passed passed, $failed failed, $skipped skipped"
fi
