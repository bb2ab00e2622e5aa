#!/usr/bin/env bash
# What `make test` needs beyond Rust, and how it gets it. Shared by
# `make test` and `.ci/run` so the two can never disagree.
#
#   scripts/test-deps.sh          install what is missing (as root, with apt-get);
#                                 as another user, print one line naming the
#                                 missing packages and the command, and exit 1.
#   scripts/test-deps.sh --check  only check; exit 1 with that line if anything is missing.
#
# The tools and the tests that use them:
#   systemd-analyze (systemd)      checks the shipped unit files (tests/tests/binaries.rs)
#   promtool (prometheus)          checks a /metrics scrape (tests/tests/metrics.rs)
#   nats-server (nats-server)      the broker of the cluster tests (tests/tests/cluster.rs)
#   prometheus-alertmanager        receives the alerts of tests/tests/alerts.rs
#     (prometheus-alertmanager)
#   chromium (chromium)            the dashboard's browser tests (dashboard/e2e)
#   node >= 20, npm (nodejs, npm)  build and test the dashboard
#   dpkg-deb, deb-systemd-helper,  build, install and check the Debian packages
#     curl, python3                  (scripts/deb-test.sh; cargo-deb itself is
#                                    installed by `make deb`)
#   x86_64-linux-musl-gcc          C compiler for ring's code in the static agent
#     (musl-tools)                   (`make static`)
#   aarch64-linux-gnu-gcc          linker and C compiler of the cross-built aarch64
#     (gcc-aarch64-linux-gnu)        static agent (`make static-aarch64`)
#   qemu-aarch64 (qemu-user)       runs that agent here (scripts/static-agent-test.sh)
#   readelf (binutils), file,      check the static agents; openssl makes the
#     openssl (openssl)              certificates of the TLS check
set -euo pipefail

check_only=false
[ "${1:-}" = "--check" ] && check_only=true

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing_packages() {
    local m=()
    have systemd-analyze || m+=(systemd)
    have promtool || m+=(prometheus)
    have nats-server || m+=(nats-server)
    have prometheus-alertmanager || m+=(prometheus-alertmanager)
    have chromium || m+=(chromium)
    have node || m+=(nodejs)
    have npm || m+=(npm)
    have dpkg-deb || m+=(dpkg)
    have deb-systemd-helper || m+=(init-system-helpers)
    have curl || m+=(curl)
    have python3 || m+=(python3)
    have readelf || m+=(binutils)
    have file || m+=(file)
    have x86_64-linux-musl-gcc || m+=(musl-tools)
    have aarch64-linux-gnu-gcc || m+=(gcc-aarch64-linux-gnu)
    have qemu-aarch64 || m+=(qemu-user)
    have openssl || m+=(openssl)
    echo "${m[@]:-}"
}

missing=$(missing_packages)
if [ -n "$missing" ]; then
    if $check_only || [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "make test needs Debian packages that are missing: $missing; install them with: sudo apt-get install -y --no-install-recommends $missing" >&2
        exit 1
    fi
    echo "installing: $missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    missing=$(missing_packages)
    if [ -n "$missing" ]; then
        echo "apt-get could not install: $missing" >&2
        exit 1
    fi
fi

if ! command -v cargo >/dev/null; then
    echo "make test needs a Rust toolchain (1.95 or newer) with cargo on PATH: install it with rustup" >&2
    exit 1
fi
# rustfmt and clippy for `make lint` (no root needed with rustup).
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        if $check_only || ! command -v rustup >/dev/null; then
            echo "make test needs the Rust component $component; install it with: rustup component add $component" >&2
            exit 1
        fi
        rustup component add "$component"
    fi
done

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
    echo "the dashboard needs Node.js 20 or newer; this machine has $(node --version): install a newer nodejs package" >&2
    exit 1
fi
