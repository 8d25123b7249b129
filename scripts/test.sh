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
if [ $# -gt 0 ]; then
  cargo test --workspace "$@"
else
  # Two lanes, so the waiting overlaps (one lane used 14 of the 37 CPU-minutes its 18.5 minutes
  # offered): the tests that start and kill Apache Kafka brokers of their own, and the rest, on
  # the shared stack. Their output is shown lane by lane.
  own_brokers=(chaos exactly_once sinks replication runtime)
  shared=$(awk '/^\[\[test\]\]/ { t = 1; next } t && /^name = / { gsub(/"/, "", $3); print $3; t = 0 }' \
    tests/Cargo.toml | grep -vxF "$(printf '%s\n' "${own_brokers[@]}")")
  cargo test --workspace --no-run --quiet
  lane_log=$BACKBONE_STACK_DIR/own-brokers-lane.log
  cargo test -p backbone-e2e $(printf -- '--test %s ' "${own_brokers[@]}") >"$lane_log" 2>&1 &
  lane=$!
  shared_status=0
  { cargo test --workspace --exclude backbone-e2e &&
    cargo test -p backbone-e2e --bins $(printf -- '--test %s ' $shared); } || shared_status=$?
  lane_status=0
  wait "$lane" || lane_status=$?
  echo "test: the lane of tests with brokers of their own (${own_brokers[*]}):"
  cat "$lane_log"
  if [ "$shared_status" -ne 0 ] || [ "$lane_status" -ne 0 ]; then
    echo "test: failed (shared stack lane: exit $shared_status, own brokers lane: exit $lane_status)" >&2
    exit 1
  fi
fi
# The whole backbone as `make up` runs it, unless the tests were narrowed down.
if [ $# -eq 0 ]; then
  echo "test: make up, make status and one event by hand (scripts/up-check.sh)"
  "$REPO/scripts/up-check.sh"
fi
