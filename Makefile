# hostpulse — the two commands a newcomer runs, and a few helpers.
#   make run    build and start an aggregator plus a local agent on 127.0.0.1
#   make test   formatting, lints, and the whole test suite

CARGO ?= cargo

.PHONY: run test build lint fmt clean bench

run:
	@deploy/run-local.sh

test: lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Fan-out, idle-connection and ingest benchmarks (see BENCHMARKS.md); about
# 15 minutes. Pass SCENARIOS="fanout-100x10000 ..." or BENCH_ARGS="--runs 1".
bench:
	$(CARGO) build --release -p hostpulse-aggregator -p hostpulse-bench
	target/release/hostpulse-bench --baseline $(BENCH_ARGS) $(SCENARIOS)
	scripts/agent-cost.sh 60

build:
	$(CARGO) build --workspace --release --bins

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
