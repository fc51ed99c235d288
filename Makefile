# Conjoiner: the two commands of the quick start are `make run` and `make test`.

CARGO ?= cargo

.PHONY: run build test lint fmt clean

## run: build and run one node with the defaults (API on 127.0.0.1:7373, data in ./conjoiner-data)
run:
	$(CARGO) run --release --bin conjoiner -- agent

## build: build the release binary at target/release/conjoiner
build:
	$(CARGO) build --release --bin conjoiner

## test: every test (unit, property, and the real binary in tests/)
test:
	$(CARGO) test --all-targets --no-fail-fast

## lint: formatting and clippy, as CI checks them
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
