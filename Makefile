# Conjoiner: the two commands of the quick start are `make demo` and `make test`.

CARGO ?= cargo

.PHONY: run demo readme build test bench bench-load bench-deploy bench-floods sim lint fmt clean

# Nodes in the benchmark (`make bench N=50`) and the simulator (`make sim N=100,1000`).
N ?= 20
# Extra simulator flags, e.g. SIM_ARGS="--idle 30 --loss-secs 0".
SIM_ARGS ?=

# Release binaries (`build`, `run`, `demo`, `bench`) link glibc statically
# and pack their relative relocations: an idle node then maps fewer pages
# (50 idle nodes: 7.9 MiB RSS each, against 9.2 MiB dynamically linked; see
# "Idle memory" in the README). The flags go to this host's target triple
# given explicitly, because without --target cargo would apply them to
# build scripts and proc macros too, which cannot be linked statically.
# `RELEASE_RUSTFLAGS=` builds a dynamically linked binary.
HOST := $(shell rustc -vV | sed -n 's/^host: //p')
RELEASE_RUSTFLAGS ?= -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs
RELEASE = RUSTFLAGS="$(RELEASE_RUSTFLAGS)" $(CARGO)

## run: build and run one node with the defaults (API on 127.0.0.1:7373, data in ./conjoiner-data)
run: build
	target/release/conjoiner agent

## demo: a local cluster of three nodes on loopback: members, requests, deploys, `modules`, `status` (KEEP=1 keeps it running for the dashboard)
demo: build
	scripts/demo.sh target/release/conjoiner

## readme: run the demo and copy its output into the README's quick start (tests/readme.rs checks it still matches)
readme: build
	scripts/readme-demo.sh target/release/conjoiner

## build: build the release binary (statically linked) at target/release/conjoiner
build:
	$(RELEASE) build --release --target $(HOST) --bin conjoiner
	mkdir -p target/release
	cp target/$(HOST)/release/conjoiner target/release/conjoiner

## test: every test (unit, property, and the real binary in tests/)
test:
	$(CARGO) test --all-targets --no-fail-fast

## bench: N node processes on loopback (and Serf, if installed; SERF=off leaves it out): convergence and its CPU, broadcast latency, failure detection, RSS
bench:
	N=$(N) $(RELEASE) bench --target $(HOST) --bench cluster

## bench-load: 5 node processes exchange 10,000 envelopes/s for 60 s (RATE per node, SECS): losses, drops, latency, RSS (writes target/bench/load.json)
bench-load:
	RATE=$(or $(RATE),500) SECS=$(or $(SECS),60) $(RELEASE) bench --target $(HOST) --bench load

## bench-deploy: one 50 MB deploy to N node processes (default 100; 10 stopped during it), peer to peer and from one python3 HTTP server: time until all run it, bytes the source sent (writes target/bench/deploy-N.json)
bench-deploy:
	N=$(if $(filter 20,$(N)),100,$(N)) $(RELEASE) bench --target $(HOST) --bench deploy

## bench-floods: one release node under 1,500 envelopes of 900 KB (COUNT) with a module that never reads its stdin and 200 event stream readers that never read: its RSS before and at peak
bench-floods:
	FLOOD_PUBLISHES=$(or $(COUNT),1500) $(CARGO) test --release --test floods -- --nocapture

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
