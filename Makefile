# hostpulse — the two commands a newcomer runs, and a few helpers.
#   make run    build and start an aggregator plus a local agent on 127.0.0.1
#   make test   formatting, lints, and the whole test suite

CARGO ?= cargo

.PHONY: run test build lint fmt clean

run:
	@deploy/run-local.sh

test: lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

build:
	$(CARGO) build --workspace --release --bins

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
