#!/usr/bin/env bash
# `make soak`: usage at a steady rate through every processor and sink for SOAK_SECONDS against
# a private stack (started fresh, stopped after); prints the lag and memory curves and fails if
# either grows (criteria in tests/benches/soak.rs).
#   SOAK_SECONDS (default 600), SOAK_RATE (events/s, default 1000), SOAK_INTERVAL (default 30)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export BACKBONE_STACK_DIR=${BACKBONE_SOAK_STACK_DIR:-$REPO/.backbone/soak-stack}
export BACKBONE_KAFKA_PORT=${BACKBONE_SOAK_KAFKA_PORT:-19792}
export BACKBONE_REGISTRY_PORT=${BACKBONE_SOAK_REGISTRY_PORT:-18781}
export BACKBONE_POSTGRES_PORT=${BACKBONE_SOAK_POSTGRES_PORT:-16132}
export BACKBONE_BENCH_BOOTSTRAP=127.0.0.1:$BACKBONE_KAFKA_PORT
export BACKBONE_BENCH_POSTGRES_URL=postgres://backbone:backbone@127.0.0.1:$BACKBONE_POSTGRES_PORT/backbone
export SOAK_SECONDS=${SOAK_SECONDS:-600}
export SOAK_RATE=${SOAK_RATE:-1000}
"$REPO/scripts/stack.sh" reset >/dev/null
trap '"$REPO/scripts/stack.sh" down' EXIT
# The stack's registry runs from the debug build; the soak's processes from the release build.
cargo build --workspace --bins --quiet
cargo build --release --workspace --bins --quiet
"$REPO/scripts/stack.sh" up
# The stack's registry wants its development credentials; they exist once it is up.
BACKBONE_BENCH_REGISTRY_URL=$("$REPO/scripts/stack.sh" registry-url)
export BACKBONE_BENCH_REGISTRY_URL
cargo bench -p backbone-e2e --bench soak
