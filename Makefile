# Conjoiner: the two commands of the quick start are `make demo` and `make test`.

CARGO ?= cargo

.PHONY: run demo readme build test bench bench-load sim lint fmt clean

# Nodes in the benchmark (`make bench N=50`) and the simulator (`make sim N=100,1000`).
N ?= 20
# Extra simulator flags, e.g. SIM_ARGS="--idle 30 --loss-secs 0".
SIM_ARGS ?=

## run: build and run one node with the defaults (API on 127.0.0.1:7373, data in ./conjoiner-data)
run:
	$(CARGO) run --release --bin conjoiner -- agent

## demo: a local cluster of three nodes on loopback: members, requests, deploys, `modules`, `status` (KEEP=1 keeps it running for the dashboard)
demo: build
	scripts/demo.sh target/release/conjoiner

## readme: run the demo and copy its output into the README's quick start (tests/readme.rs checks it still matches)
readme: build
	scripts/readme-demo.sh target/release/conjoiner

## build: build the release binary at target/release/conjoiner
build:
	$(CARGO) build --release --bin conjoiner

## test: every test (unit, property, and the real binary in tests/)
test:
	$(CARGO) test --all-targets --no-fail-fast

## bench: N node processes on loopback (and Serf, if installed): convergence, broadcast latency, failure detection, RSS
bench:
	N=$(N) $(CARGO) bench --bench cluster

## bench-load: 5 node processes exchange 10,000 envelopes/s for 60 s (RATE per node, SECS): losses, drops, latency, RSS (writes target/bench/load.json)
bench-load:
	RATE=$(or $(RATE),500) SECS=$(or $(SECS),60) $(CARGO) bench --bench load

## sim: N nodes' cluster cores on a simulated network with a virtual clock: convergence, broadcast, detection, false deaths, per-node traffic (writes target/sim/sim-N.json)
sim:
	$(CARGO) run --profile sim --bin conjoiner-sim -- $(if $(filter 20,$(N)),100,$(N)) $(SIM_ARGS)

## lint: formatting and clippy, as CI checks them
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
