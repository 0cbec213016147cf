# imks: the two commands a newcomer needs are `make run` and `make test`.
# Build output goes to $(CARGO_TARGET_DIR) when set (CI keeps it outside the clone).

CARGO ?= cargo
PORT ?= 3000
CONFIG ?= $(wildcard imks.toml)
PYTHON := .venv/bin/python
export CARGO_TARGET_DIR ?= $(CURDIR)/target
# The benchmark peers (bench/peers/) build outside the workspace, into their own target folder.
export BENCH_TARGET_DIR ?= $(CURDIR)/bench/target

.PHONY: run run-pg cluster build release test test-deps lint unit test-build python-tests js-tests soak soak-ci fuzz fuzz-ci bench-codec bench bench-quick bench-store fmt clean migrate

## run: start one node on embedded defaults (imks.toml is used when present), port $(PORT)
run: release
	IMKS_SERVER__LISTEN='["0.0.0.0:$(PORT)"]' $(CARGO_TARGET_DIR)/release/imks serve $(if $(CONFIG),--config $(CONFIG))

## run-pg: the same node on the Postgres store (PG_URL, default the local server's `imks`
## database, created when missing); migrations run at start-up
PG_URL ?= postgres://postgres:postgres@127.0.0.1:5432/imks
run-pg: release
	scripts/ensure-postgres.sh
	scripts/ensure-database.sh '$(PG_URL)'
	IMKS_STORE__BACKEND=postgres IMKS_STORE__POSTGRES__URL='$(PG_URL)' \
	IMKS_SERVER__LISTEN='["0.0.0.0:$(PORT)"]' $(CARGO_TARGET_DIR)/release/imks serve $(if $(CONFIG),--config $(CONFIG))

## cluster: three nodes on ports 3000, 3001 and 3002, one service over the local NATS, or the
## local Redis with BACKEND=redis (started where none runs); see docs/cluster.md
cluster: release
	scripts/cluster.sh $(CARGO_TARGET_DIR)/release/imks

## migrate: apply the Postgres store's migrations to store.postgres.url (IMKS_STORE__POSTGRES__URL)
migrate: release
	$(CARGO_TARGET_DIR)/release/imks migrate $(if $(CONFIG),--config $(CONFIG))

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release --bin imks

## test: install what the tests need, then lint, unit/integration tests, a one-minute soak,
## the Python and JavaScript client tests, and every fuzz target for a short while
test: test-deps lint unit soak-ci python-tests js-tests fuzz-ci

test-deps:
	scripts/setup-test-deps.sh
	scripts/ensure-postgres.sh
	scripts/ensure-nats.sh
	scripts/ensure-redis.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

# The client tests run the binary `cargo test` built (target/debug/imks). `cargo build` would
# build it again: dev-dependencies' features are not unified with a plain build's.
test-build:
	$(CARGO) test --workspace --no-run

python-tests: test-build
	$(PYTHON) tests/py/run.py $(CARGO_TARGET_DIR)/debug/imks
	$(PYTHON) tests/py/socketio_client.py $(CARGO_TARGET_DIR)/debug/imks

js-tests: test-build
	cd tests/js && IMKS_TEST_BINARY=$(CARGO_TARGET_DIR)/debug/imks node --test --test-concurrency=1

## soak: one node holding about 19,000 connections (Socket.IO over WebSocket and long-polling,
## native /ws) for 10 minutes with churn and traffic, release builds; prints the summary and
## writes bench/soak/soak.json and docs/soak.svg (see scripts/soak.sh for its knobs)
soak:
	$(CARGO) build --release -p imks --bin imks
	$(CARGO) build --release -p imks-loadgen --bin imks-loadgen
	SOAK_PLOT=docs/soak.svg scripts/soak.sh $(CARGO_TARGET_DIR)/release/imks $(CARGO_TARGET_DIR)/release/imks-loadgen

## soak-ci: the same for about 60 s with 5,000 clients and modest rates, on the debug binaries
## `cargo test` built (part of `make test`)
soak-ci: test-build
	SOAK_CONNECTIONS=5000 SOAK_DURATION=60 SOAK_RATE=100 SOAK_CHURN=10 SOAK_ROOMS=20 SOAK_PROCESSES=1 \
	SOAK_PORT=3991 SOAK_OUT=$(CARGO_TARGET_DIR)/soak-ci \
	scripts/soak.sh $(CARGO_TARGET_DIR)/debug/imks $(CARGO_TARGET_DIR)/debug/imks-loadgen

## fuzz: every fuzz target (fuzz/fuzz_targets/) for FUZZ_SECONDS each (default 300) from the
## committed corpus, on the stable toolchain; inputs that add coverage are merged into the corpus
FUZZ_SECONDS ?= 300
fuzz:
	FUZZ_MERGE=1 scripts/fuzz.sh $(FUZZ_SECONDS)

## fuzz-ci: every fuzz target for 25 s from the committed corpus (part of `make test`)
fuzz-ci:
	scripts/fuzz.sh 25

bench-codec:
	$(CARGO) bench --bench ws_codec --bench http_parse --bench sio_packet --bench native_envelope

## bench: imks side by side with socket.io (node), socketioxide and a raw baseline, server on
## core 0 and load on core 1, then as two nodes each over the local NATS or Redis (about 15
## minutes); prints the tables and writes docs/benchmarks.md
bench:
	scripts/ensure-nats.sh
	scripts/ensure-redis.sh
	bench/run

## bench-quick: the same scenarios in short runs (3-4 minutes), for development; docs untouched
bench-quick:
	scripts/ensure-nats.sh
	scripts/ensure-redis.sh
	bench/run --quick

## bench-store: durable messages per second, memory store against the Postgres store (batched
## commits, and one INSERT per message), on a rate ladder (about 15 minutes); writes docs/benchmarks.md
bench-store:
	scripts/ensure-postgres.sh
	bench/store --write-docs

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
