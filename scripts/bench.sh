#!/usr/bin/env bash
# The benchmarks: in-memory hot paths first, then those that need a broker, against a private
# stack started fresh and stopped after.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export BACKBONE_STACK_DIR=$REPO/.backbone/bench-stack
export BACKBONE_KAFKA_PORT=${BACKBONE_BENCH_KAFKA_PORT:-19592}
export BACKBONE_REGISTRY_PORT=${BACKBONE_BENCH_REGISTRY_PORT:-18581}
export BACKBONE_POSTGRES_PORT=${BACKBONE_BENCH_POSTGRES_PORT:-15932}
export BACKBONE_BENCH_BOOTSTRAP=127.0.0.1:$BACKBONE_KAFKA_PORT
cargo bench -p backbone-state --bench dedup
cargo bench -p backbone-usage-validator --bench record
"$REPO/scripts/stack.sh" reset >/dev/null
trap '"$REPO/scripts/stack.sh" down' EXIT
cargo build --workspace --bins --quiet
# Release binaries too: the load run starts the processors as processes, as deployed.
cargo build --release --workspace --bins --quiet
"$REPO/scripts/stack.sh" up
# The stack's registry wants its development credentials; they exist once it is up.
BACKBONE_BENCH_REGISTRY_URL=$("$REPO/scripts/stack.sh" registry-url)
export BACKBONE_BENCH_REGISTRY_URL
cargo bench -p backbone-core --bench passthrough
cargo bench -p backbone-e2e --bench stages
cargo bench -p backbone-e2e --bench latency
cargo bench -p backbone-replay --bench replay
cargo bench -p backbone-replay --bench trace
cargo bench -p backbone-e2e --bench load
# Sinks alone against a filled topic; the test-support helpers they use read the BACKBONE_TEST_*
# variables.
BACKBONE_TEST_BOOTSTRAP=$BACKBONE_BENCH_BOOTSTRAP BACKBONE_TEST_REGISTRY_URL=$BACKBONE_BENCH_REGISTRY_URL \
BACKBONE_TEST_POSTGRES_URL=postgres://backbone:backbone@127.0.0.1:$BACKBONE_POSTGRES_PORT/backbone \
  cargo bench -p backbone-e2e --bench sink_rates
# The ingest gateway under load (wrk, batches of 100 events), on the same stack.
BACKBONE_INGEST_PORT=${BACKBONE_BENCH_INGEST_PORT:-18588} "$REPO/scripts/ingest/load.sh"
