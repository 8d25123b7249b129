# Backbone: the two quick-start commands are `make demo` and `make test`.
SHELL := /bin/bash
export BACKBONE_TOOLS_DIR ?= $(HOME)/.cache/backbone

.PHONY: help setup build up down status test demo bench soak chaos fuzz fmt lint

help:
	@echo "make demo    run sample events through the backbone on the embedded stack"
	@echo "make test    formatting, lints and every test, against a private stack"
	@echo "make bench   benchmarks against a private stack, as ratios to a baseline"
	@echo "make soak    SOAK_SECONDS (default 600) at a steady rate; fails if lag or memory grow"
	@echo "make chaos   the chaos tests at length: kills, broker restarts, outages, throttling; exactly-once too"
	@echo "make fuzz    every fuzz target for FUZZ_SECONDS (default 60) each; needs nightly"
	@echo "make setup   install what this machine lacks (idempotent)"
	@echo "make up | down | status   the embedded dev stack on 127.0.0.1"

setup:
	@scripts/setup.sh

build: setup
	cargo build --workspace --bins

up: build
	@scripts/stack.sh up
	@scripts/stack.sh gateway
	@scripts/stack.sh backbone

down:
	@scripts/stack.sh down

status:
	@scripts/stack.sh status

test: setup
	@scripts/test.sh $(TEST_ARGS)

demo: build
	@scripts/demo.sh

chaos: setup
	@scripts/chaos.sh

bench: setup
	@scripts/bench.sh

soak: setup
	@scripts/soak.sh

# Not part of `make test`: cargo-fuzz needs a nightly toolchain, CI has stable only.
fuzz:
	@scripts/fuzz.sh

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings
