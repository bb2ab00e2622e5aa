# hostpulse — the two commands a newcomer runs, and a few helpers.
#   make run    build and start an aggregator plus a local agent on 127.0.0.1
#   make run-cluster  nats-server, two aggregators and two agents on 127.0.0.1
#   make test   what the tests need, formatting, lints, and the whole test suite
#   make deb    Debian packages of the agent and the aggregator (target/debian/)
#   make static the agent as one static binary (x86_64-unknown-linux-musl;
#               make static-aarch64 for aarch64-unknown-linux-musl)

CARGO ?= cargo
NPM ?= npm

.PHONY: run run-cluster test build deb static static-aarch64 lint fmt clean bench bench-hub fuzz dashboard dashboard-test

run: dashboard
	@deploy/run-local.sh

# Several aggregators sharing the fleet through NATS (README, "Running
# several aggregators"); needs nats-server.
run-cluster: dashboard
	@deploy/run-cluster.sh

# Installs what the tests need (as root; otherwise names the missing
# packages and stops), then formatting, clippy, the build, every Rust test,
# the TypeScript client's tests and the browser tests (Debian's chromium; the
# aggregator embeds the dashboard built first), and one line counting them all.
test:
	@scripts/test.sh

# The web dashboard (dashboard/dist), embedded in hostpulse-aggregator at
# build time. Needs Node.js 20 or newer and npm.
# Rebuilt only when a source changed, so cargo re-embeds only a new build.
DASHBOARD_SOURCES = $(shell find dashboard/src dashboard/test dashboard/e2e -type f 2>/dev/null) \
	dashboard/index.html dashboard/vite.config.ts dashboard/tsconfig.json dashboard/package-lock.json
dashboard: dashboard/dist/index.html

dashboard/dist/index.html: dashboard/node_modules/.package-lock.json $(DASHBOARD_SOURCES)
	cd dashboard && $(NPM) run build

dashboard/node_modules/.package-lock.json: dashboard/package-lock.json
	cd dashboard && $(NPM) ci --no-audit --no-fund

# Client tests (Vitest) and browser tests (playwright-core + chromium)
# against the debug binaries.
dashboard-test: dashboard/node_modules/.package-lock.json
	cd dashboard && $(NPM) test && $(NPM) run e2e

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Fan-out, idle-connection, ingest and cluster benchmarks (see BENCHMARKS.md;
# the cluster ones start nats-server); about 20 minutes. Pass SCENARIOS="fanout-100x10000 ..." or BENCH_ARGS="--runs 1".
# The embedded store's engines: SCENARIOS=store-engines (no aggregator process).
bench:
	$(CARGO) build --release -p hostpulse-aggregator -p hostpulse-bench
	target/release/hostpulse-bench --baseline $(BENCH_ARGS) $(SCENARIOS)
	scripts/agent-cost.sh 60

# The hub micro-benchmark: subscribe, publish and disconnect costs at 10,000
# topics x 1,000 connections (prints medians of 3).
bench-hub:
	$(CARGO) test --release --no-fail-fast -p hostpulse-aggregator --lib hub_costs -- --ignored --nocapture

# Coverage-guided fuzzing of the request parser, the batch decoder and the
# config loaders, FUZZ_SECS seconds each (needs cargo-fuzz; CI runs 60 s each).
FUZZ_SECS ?= 60
FUZZ_TARGETS = ws_request batch_decode config
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		echo "fuzzing $$t for $(FUZZ_SECS) s"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -s none $$t -- -max_total_time=$(FUZZ_SECS) > $$t.log 2>&1 \
			|| { tail -n 60 $$t.log; exit 1; }; \
		grep -E "^Done [0-9]+ runs" $$t.log; \
	done

# Debian packages of both binaries (README, "Install with the Debian
# packages"): hostpulse-agent_<version>-1_<arch>.deb and
# hostpulse-aggregator_<version>-1_<arch>.deb in DEB_DIR. One release build
# of the two binaries (the aggregator embeds the dashboard), then cargo-deb
# (3.x, installed if missing) packs each with its unit, config and scripts
# (deploy/, deploy/debian/). DEB_ARGS goes to cargo-deb, e.g.
# DEB_ARGS="--deb-revision 2".
DEB_DIR ?= $(or $(CARGO_TARGET_DIR),target)/debian
deb: dashboard
	@command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked --version '^3'
	$(CARGO) build --release -p hostpulse-agent -p hostpulse-aggregator
	$(CARGO) deb --no-build -p hostpulse-agent -o $(DEB_DIR)/ $(DEB_ARGS)
	$(CARGO) deb --no-build -p hostpulse-aggregator -o $(DEB_DIR)/ $(DEB_ARGS)

# The agent as one static (static-pie) binary that runs on any x86_64
# Linux, old distributions included: target/x86_64-unknown-linux-musl/
# release/hostpulse-agent. Adds the rustup target when missing; ring's C code
# needs x86_64-linux-musl-gcc (Debian: musl-tools, see scripts/test-deps.sh).
MUSL_TARGET = x86_64-unknown-linux-musl
static:
	@rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)
	$(CARGO) build --release --target $(MUSL_TARGET) -p hostpulse-agent

# The same for 64-bit ARM nodes, cross-built on x86_64:
# target/aarch64-unknown-linux-musl/release/hostpulse-agent. Debian's
# gcc-aarch64-linux-gnu links it and compiles ring's C code; the C library,
# start files and unwinder are the musl ones shipped with the rustup target
# (self-contained), so no aarch64 sysroot is needed: ring's C is built
# freestanding, in the no-libc mode ring provides for this target
# (RING_CORE_NOSTDLIBINC). qemu-aarch64 (Debian: qemu-user) runs the result
# here (scripts/static-agent-test.sh).
AARCH64_TARGET = aarch64-unknown-linux-musl
AARCH64_CC ?= aarch64-linux-gnu-gcc
static-aarch64:
	@rustup target list --installed | grep -qx $(AARCH64_TARGET) || rustup target add $(AARCH64_TARGET)
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=$(AARCH64_CC) \
	CC_aarch64_unknown_linux_musl=$(AARCH64_CC) \
	CFLAGS_aarch64_unknown_linux_musl="-ffreestanding -DRING_CORE_NOSTDLIBINC=1" \
	$(CARGO) build --release --target $(AARCH64_TARGET) -p hostpulse-agent

build: dashboard
	$(CARGO) build --workspace --release --bins

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
