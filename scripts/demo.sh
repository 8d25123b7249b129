#!/usr/bin/env bash
# `make demo`: brings up the embedded stack (unless it already runs), runs the demo job,
# and stops what it started. After `make up` the job runs against the running backbone and
# leaves it running.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PORT=${BACKBONE_KAFKA_PORT:-9092}
REGISTRY_PORT=${BACKBONE_REGISTRY_PORT:-8081}
POSTGRES_PORT=${BACKBONE_POSTGRES_PORT:-5432}
STACK_DIR=${BACKBONE_STACK_DIR:-$REPO/.backbone/stack}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

# Captured first: `grep -q` stops reading early, which under pipefail would fail the status.
STATUS=$("$REPO/scripts/stack.sh" status)
if grep -q "registry running" <<<"$STATUS"; then
  echo "demo: using the running stack"
else
  trap '"$REPO/scripts/stack.sh" down' EXIT
  "$REPO/scripts/stack.sh" up
fi

# The registry's development credentials (scripts/stack.sh): flags, which the demo hands to the
# Kafka clients it starts; an exported variable would reach the sandbox too, which has no
# registry section.
"$TARGET_DIR/debug/demo" \
  --bootstrap-servers "127.0.0.1:$PORT" \
  --registry-url "http://127.0.0.1:$REGISTRY_PORT" \
  --registry-username backbone \
  --registry-password-file "$STACK_DIR/secrets/registry-password" \
  --postgres-url "postgres://backbone:backbone@127.0.0.1:$POSTGRES_PORT/backbone" \
  --log-dir "$STACK_DIR/logs" \
  --state-dir "$STACK_DIR/data/state" \
  --outbox-dir "$STACK_DIR/data/erp-outbox" \
  --run-dir "$STACK_DIR/run" \
  --sandbox-listen "127.0.0.1:${BACKBONE_SANDBOX_PORT:-8090}"
