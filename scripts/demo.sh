#!/usr/bin/env bash
# `make demo`: brings up the embedded stack (unless it already runs), runs the demo job,
# and stops what it started.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PORT=${BACKBONE_KAFKA_PORT:-9092}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

if "$REPO/scripts/stack.sh" status | grep -q "registry running"; then
  echo "demo: using the running stack"
else
  trap '"$REPO/scripts/stack.sh" down' EXIT
  "$REPO/scripts/stack.sh" up
fi

"$TARGET_DIR/debug/demo" \
  --bootstrap-servers "127.0.0.1:$PORT" \
  --log-dir "${BACKBONE_STACK_DIR:-$REPO/.backbone/stack}/logs" \
  --state-dir "${BACKBONE_STACK_DIR:-$REPO/.backbone/stack}/data/state"
