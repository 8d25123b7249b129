#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test against a fresh private stack
# that is stopped afterwards, whether the tests pass or not.
#   scripts/test.sh [cargo test arguments...]
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

echo "test: cargo fmt --check"
cargo fmt --all --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The compose stack is validated, not run (no Docker engine here); tests/compose.rs checks the rest.
echo "test: docker-compose config"
docker-compose -f docker-compose.yml config -q
echo "test: promtool"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/rules.yml
promtool test rules deploy/prometheus/rules.test.yml

# A stack of its own, so a running dev stack (make up) is neither used nor disturbed.
export BACKBONE_STACK_DIR=$REPO/.backbone/test-stack
export BACKBONE_KAFKA_PORT=${BACKBONE_TEST_KAFKA_PORT:-19092}
export BACKBONE_REGISTRY_PORT=${BACKBONE_TEST_REGISTRY_PORT:-18081}
export BACKBONE_POSTGRES_PORT=${BACKBONE_TEST_POSTGRES_PORT:-15432}
export BACKBONE_TEST_BOOTSTRAP=127.0.0.1:$BACKBONE_KAFKA_PORT
export BACKBONE_TEST_POSTGRES_URL=postgres://backbone:backbone@127.0.0.1:$BACKBONE_POSTGRES_PORT/backbone
# The CA of the certificate the stack's PostgreSQL serves TLS with (scripts/stack.sh).
export BACKBONE_TEST_POSTGRES_CA=$BACKBONE_STACK_DIR/tls/postgres-ca.pem
"$REPO/scripts/stack.sh" reset >/dev/null
trap '"$REPO/scripts/stack.sh" down' EXIT
cargo build --workspace --bins --quiet
"$REPO/scripts/stack.sh" up
# The stack's registry wants its development credentials; they exist once it is up.
BACKBONE_TEST_REGISTRY_URL=$("$REPO/scripts/stack.sh" registry-url)
export BACKBONE_TEST_REGISTRY_URL

echo "test: cargo test"
# Most tests wait on brokers and child processes rather than compute: with two at a time per
# test binary a whole run used 7.5 CPU-minutes of the 32 its 16 minutes on two cores offered.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-3}
cargo test --workspace "$@"
# The whole backbone as `make up` runs it, unless the tests were narrowed down.
if [ $# -eq 0 ]; then
  echo "test: make up, make status and one event by hand (scripts/up-check.sh)"
  "$REPO/scripts/up-check.sh"
fi
