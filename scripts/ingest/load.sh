#!/usr/bin/env bash
# The ingest gateway under load: wrk (from the machine's packages) POSTs batches of usage events
# to a gateway of the stack in BACKBONE_STACK_DIR, started from the release binaries, with a key
# of its own whose rate does not bind. Prints events/s accepted and the latency, then the
# baseline of the same run: the producers' Kafka path, loadgen publishing usage events straight
# to the same broker, as fast as it takes them.
#   scripts/ingest/load.sh [seconds] [connections] [batch]   (defaults 30, 32, 100)
# The stack must be up (stack.sh up); make bench runs this after its other benchmarks.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
SECONDS_TO_RUN=${1:-30}
CONNECTIONS=${2:-32}
export BATCH=${3:-100}
STACK_DIR=${BACKBONE_STACK_DIR:-$REPO/.backbone/stack}
PORT=${BACKBONE_INGEST_PORT:-8088}
RELEASE=${CARGO_TARGET_DIR:-$REPO/target}/release

command -v wrk >/dev/null || { echo "ingest-load: wrk is not installed (make setup installs it)" >&2; exit 1; }
BACKBONE_BIN_DIR=$RELEASE BACKBONE_INGEST_PORT=$PORT "$REPO/scripts/stack.sh" gateway
KEYS=$STACK_DIR/secrets/ingest-keys.jsonl
INGEST_KEY=$("$RELEASE/ingest" keys --keys-file "$KEYS" create --tenant load --type backbone.usage.recorded \
  --rate-per-second 10000000 2>/dev/null)
export INGEST_KEY
URL=http://127.0.0.1:$PORT/v1/events
# The gateway reads its keys file again within a second: wait until it knows the new key.
for _ in $(seq 1 100); do
  status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL" -H "Authorization: Bearer $INGEST_KEY" \
    -H 'Content-Type: application/cloudevents-batch+json' -d '[]')
  [ "$status" = 400 ] && break
  sleep 0.1
done
wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_TO_RUN}s" --timeout 10s -s "$REPO/scripts/ingest/load.lua" "$URL" \
  | grep '^ingest-load:'
# Baseline: the Kafka path, on the same broker, in the same run.
set -a
# shellcheck disable=SC1091
. "$STACK_DIR/secrets/registry.env"
set +a
BACKBONE__SCHEMA_REGISTRY__URL=http://127.0.0.1:${BACKBONE_REGISTRY_PORT:-8081} \
BACKBONE__KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:${BACKBONE_KAFKA_PORT:-9092} \
  "$RELEASE/loadgen" --tenant load-baseline --customers 200 --events 1000000 --duplicates 0 \
  --late 0 --out-of-window 0 --poison 0 --expected "$STACK_DIR/load-baseline-expected.json" \
  | sed 's/^loadgen:/ingest-load baseline, loadgen to Kafka:/'
