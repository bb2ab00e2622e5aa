# hostpulse — the two commands a newcomer runs, and a few helpers.
#   make run    build and start an aggregator plus a local agent on 127.0.0.1
#   make run-cluster  nats-server, two aggregators and two agents on 127.0.0.1
#   make test   formatting, lints, and the whole test suite

CARGO ?= cargo

.PHONY: run run-cluster test build lint fmt clean bench fuzz

run:
	@deploy/run-local.sh

# Several aggregators sharing the fleet through NATS (README, "Running
# several aggregators"); needs nats-server.
run-cluster:
	@deploy/run-cluster.sh

test: lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Fan-out, idle-connection, ingest and cluster benchmarks (see BENCHMARKS.md;
# the cluster ones start nats-server); about 20 minutes. Pass SCENARIOS="fanout-100x10000 ..." or BENCH_ARGS="--runs 1".
bench:
	$(CARGO) build --release -p hostpulse-aggregator -p hostpulse-bench
	target/release/hostpulse-bench --baseline $(BENCH_ARGS) $(SCENARIOS)
	scripts/agent-cost.sh 60

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

build:
	$(CARGO) build --workspace --release --bins

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
