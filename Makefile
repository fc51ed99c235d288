# Conjoiner: the two commands of the quick start are `make run` and `make test`.

CARGO ?= cargo

.PHONY: run demo build test bench lint fmt clean

# Nodes in the benchmark (`make bench N=50`).
N ?= 20

## run: build and run one node with the defaults (API on 127.0.0.1:7373, data in ./conjoiner-data)
run:
	$(CARGO) run --release --bin conjoiner -- agent

## demo: a local cluster of three nodes on loopback: members, requests, deploys, `modules`, `status` (KEEP=1 keeps it running for the dashboard)
demo: build
	scripts/demo.sh target/release/conjoiner

## build: build the release binary at target/release/conjoiner
build:
	$(CARGO) build --release --bin conjoiner

## test: every test (unit, property, and the real binary in tests/)
test:
	$(CARGO) test --all-targets --no-fail-fast

## bench: N node processes on loopback (and Serf, if installed): convergence, broadcast latency, failure detection, RSS
bench:
	N=$(N) $(CARGO) bench --bench cluster

## lint: formatting and clippy, as CI checks them
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
