#!/usr/bin/env bash
# `make chaos`: the chaos tests at length against a private stack, stopped afterwards. Each run
# has an Apache Kafka broker of its own, which the driver SIGKILLs and restarts on its data every
# 5th round; `make test` runs the same tests short.
#   BACKBONE_CHAOS_SECONDS (default 180), BACKBONE_CHAOS_EVENTS (default 8000): the
#     effectively-once run
#   BACKBONE_CHAOS_EXACTLY_ONCE_SECONDS (default 60), BACKBONE_CHAOS_EXACTLY_ONCE_EVENTS
#     (default 3000): the exactly-once run
#   BACKBONE_CHAOS_BROKER_RESTARTS=0 leaves the brokers alone
#   BACKBONE_CHAOS_ORDERS (default 300), BACKBONE_CHAOS_ORDER_KILLS (default 16): the
#     quote-to-cash run (tests/orders_chaos.rs), on the stack's broker
#   BACKBONE_CHAOS_SEED (default 42): the workload and the chaos driver's choices
#   BACKBONE_CHAOS_KAFKA_PORT, BACKBONE_CHAOS_REGISTRY_PORT, BACKBONE_CHAOS_POSTGRES_PORT: the
#     stack that serves the registry and PostgreSQL
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export BACKBONE_STACK_DIR=$REPO/.backbone/chaos-stack
export BACKBONE_KAFKA_PORT=${BACKBONE_CHAOS_KAFKA_PORT:-19692}
export BACKBONE_REGISTRY_PORT=${BACKBONE_CHAOS_REGISTRY_PORT:-18681}
export BACKBONE_POSTGRES_PORT=${BACKBONE_CHAOS_POSTGRES_PORT:-16032}
export BACKBONE_TEST_BOOTSTRAP=127.0.0.1:$BACKBONE_KAFKA_PORT
export BACKBONE_TEST_POSTGRES_URL=postgres://backbone:backbone@127.0.0.1:$BACKBONE_POSTGRES_PORT/backbone
export BACKBONE_CHAOS_SECONDS=${BACKBONE_CHAOS_SECONDS:-180}
export BACKBONE_CHAOS_EVENTS=${BACKBONE_CHAOS_EVENTS:-8000}
export BACKBONE_CHAOS_EXACTLY_ONCE_SECONDS=${BACKBONE_CHAOS_EXACTLY_ONCE_SECONDS:-60}
export BACKBONE_CHAOS_EXACTLY_ONCE_EVENTS=${BACKBONE_CHAOS_EXACTLY_ONCE_EVENTS:-3000}
export BACKBONE_CHAOS_ORDERS=${BACKBONE_CHAOS_ORDERS:-300}
export BACKBONE_CHAOS_ORDER_KILLS=${BACKBONE_CHAOS_ORDER_KILLS:-16}
case "${BACKBONE_CHAOS_BROKER_RESTARTS:-1}" in
  0 | 1) ;;
  *) echo "BACKBONE_CHAOS_BROKER_RESTARTS must be 1 or 0, not '$BACKBONE_CHAOS_BROKER_RESTARTS'" >&2; exit 2 ;;
esac
"$REPO/scripts/stack.sh" reset >/dev/null
trap '"$REPO/scripts/stack.sh" down' EXIT
cargo build --workspace --bins --quiet
"$REPO/scripts/stack.sh" up
# The stack's registry wants its development credentials; they exist once it is up.
BACKBONE_TEST_REGISTRY_URL=$("$REPO/scripts/stack.sh" registry-url)
export BACKBONE_TEST_REGISTRY_URL
cargo test -p backbone-e2e --test chaos --test orders_chaos -- --nocapture
