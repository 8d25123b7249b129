#!/usr/bin/env bash
# The whole backbone as `make up` starts it, on the running stack of BACKBONE_STACK_DIR
# (make test runs this on its own stack, after the tests): the gateway and `stack.sh backbone`
# start; `stack.sh status` shows every process running and ready; Prometheus scrapes every
# metrics endpoint with the project's rules loaded; and one event sent by hand through the
# gateway, as the README shows, is traced by `replay trace` to its charge delivered to the
# billing system. Stopping is the caller's (`stack.sh down`).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
STACK_DIR=${BACKBONE_STACK_DIR:-$REPO/.backbone/stack}
BIN_DIR=${CARGO_TARGET_DIR:-$REPO/target}/debug
export BACKBONE_INGEST_PORT=${BACKBONE_INGEST_PORT:-18088}
export BACKBONE_SANDBOX_PORT=${BACKBONE_SANDBOX_PORT:-18090}
export BACKBONE_FIRST_METRICS_PORT=${BACKBONE_FIRST_METRICS_PORT:-18460}
export BACKBONE_PROMETHEUS_PORT=${BACKBONE_PROMETHEUS_PORT:-18190}
PROCESSES="usage-validator enricher usage-rater fanout sandbox billing-sink crm-sink erp-sink analytics-sink monitor drift"

fail() {
  echo "up-check: FAILED: $*" >&2
  exit 1
}

# Polls `$@` once a second until it succeeds, for at most $TIMEOUT seconds.
within() {
  local started=$SECONDS
  until "$@"; do
    (( SECONDS - started < TIMEOUT )) || return 1
    sleep 1
  done
}

"$REPO/scripts/stack.sh" gateway >/dev/null
"$REPO/scripts/stack.sh" backbone >/dev/null

status=$("$REPO/scripts/stack.sh" status)
for name in $PROCESSES; do
  grep -Eq "^stack: $name +running +pid [0-9]+ +port [0-9]+ +ready +lag " <<<"$status" ||
    fail "$name is not running and ready in stack.sh status:"$'\n'"$status"
done
grep -Eq "^stack: prometheus +running" <<<"$status" || fail "prometheus is not running:"$'\n'"$status"

prometheus=http://127.0.0.1:$BACKBONE_PROMETHEUS_PORT
# Processors, sinks, monitor, drift and the gateway: every component with a metrics port in
# components.toml is a target, each scraped.
targets=$(grep -c '^metrics = ' "$REPO/components.toml")
scraped() {
  curl -fsS "$prometheus/api/v1/query" --data-urlencode 'query=sum(up{job=~"backbone-.*"})' |
    grep -q "\"value\":\[[0-9.]*,\"$targets\"\]"
}
TIMEOUT=60 within scraped || fail "Prometheus does not scrape the $targets endpoints: $(curl -s "$prometheus/api/v1/targets")"
curl -fsS "$prometheus/api/v1/rules" | grep -q '"name":"BackboneConsumerLagGrowing"' ||
  fail "Prometheus has not loaded deploy/prometheus/rules.yml"

# The README's event by hand, for a customer of the master data `stack.sh backbone` publishes.
id=up-check-$(date +%s%N)
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
answer=$(curl -sS "http://127.0.0.1:$BACKBONE_INGEST_PORT/v1/events" \
  -H "Authorization: Bearer $(cat "$STACK_DIR/secrets/ingest-dev-key")" \
  -H 'Content-Type: application/cloudevents+json' \
  -d '{"specversion": "1.0", "id": "'"$id"'", "source": "up-check", "type": "backbone.usage.recorded",
       "time": "'"$now"'", "data": {"customer_id": "cust-0", "meter_id": "api_calls", "quantity": "3", "unit": "call"}}')
grep -q '"accepted":1' <<<"$answer" || fail "the gateway did not accept the event: $answer"
set -a
# shellcheck disable=SC1091
. "$STACK_DIR/secrets/registry.env"
set +a
traced() {
  "$BIN_DIR/replay" --bootstrap-servers "127.0.0.1:${BACKBONE_KAFKA_PORT:-9092}" \
    --registry-url "http://127.0.0.1:${BACKBONE_REGISTRY_PORT:-8081}" \
    trace --tenant demo --event-id "$id" --json 2>/dev/null |
    grep -q '"by":"billing-sink","what":"delivered"'
}
TIMEOUT=60 within traced || fail "event $id never reached the billing system; the trace says:
$("$BIN_DIR/replay" --bootstrap-servers "127.0.0.1:${BACKBONE_KAFKA_PORT:-9092}" \
  --registry-url "http://127.0.0.1:${BACKBONE_REGISTRY_PORT:-8081}" trace --tenant demo --event-id "$id" 2>&1)"
echo "up-check: every process ready, $targets endpoints scraped with the alert rules, event $id delivered to billing (${SECONDS}s)"
