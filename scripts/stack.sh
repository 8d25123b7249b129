#!/usr/bin/env bash
# The embedded dev stack: local processes on 127.0.0.1, no containers.
#   stack.sh up | down | status | reset   (reset: stop and delete the broker's data)
# Settings (environment):
#   BACKBONE_STACK_DIR   state, logs and pid files (default: <repo>/.backbone/stack)
#   BACKBONE_KAFKA_PORT  broker port (default: 9092)
#   BACKBONE_REGISTRY_PORT  schema registry port (default: 8081)
#   BACKBONE_BROKER_STORAGE  sqlite (durable, the default) or memory
#   BACKBONE_TOOLS_DIR   where setup installed the tools (default: ~/.cache/backbone)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
STACK_DIR=${BACKBONE_STACK_DIR:-$REPO/.backbone/stack}
KAFKA_PORT=${BACKBONE_KAFKA_PORT:-9092}
REGISTRY_PORT=${BACKBONE_REGISTRY_PORT:-8081}
TOOLS_DIR=${BACKBONE_TOOLS_DIR:-$HOME/.cache/backbone}
NISSHI=$TOOLS_DIR/bin/nisshi
BIN_DIR=${CARGO_TARGET_DIR:-$REPO/target}/debug

RUN_DIR=$STACK_DIR/run
LOG_DIR=$STACK_DIR/logs
DATA_DIR=$STACK_DIR/data

say() { echo "stack: $*"; }

pid_of() {
  local file=$RUN_DIR/$1.pid
  [ -f "$file" ] || return 1
  local pid
  pid=$(cat "$file")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start_broker() {
  local pid
  if pid=$(pid_of broker); then
    say "broker already running (pid $pid) on 127.0.0.1:$KAFKA_PORT"
    return
  fi
  if [ ! -x "$NISSHI" ]; then
    say "nisshi not found at $NISSHI; run 'make setup' first" >&2
    exit 1
  fi
  if port_in_use "$KAFKA_PORT"; then
    say "port 127.0.0.1:$KAFKA_PORT is taken by another process; set BACKBONE_KAFKA_PORT" >&2
    exit 1
  fi
  mkdir -p "$RUN_DIR" "$LOG_DIR" "$DATA_DIR"
  local listener=tcp://127.0.0.1:$KAFKA_PORT storage
  case "${BACKBONE_BROKER_STORAGE:-sqlite}" in
    sqlite) storage="sqlite://broker.db" ;;
    # Nothing survives a broker restart: for benchmarks that measure our code, not the disk.
    memory) storage="memory://nisshi/" ;;
    *)
      say "BACKBONE_BROKER_STORAGE must be sqlite or memory, not '$BACKBONE_BROKER_STORAGE'" >&2
      exit 1
      ;;
  esac
  # setsid: the broker must not receive the terminal's Ctrl-C meant for a test run;
  # `stack.sh down` stops it. Nisshi reads a sqlite:// path relative to its working directory.
  (cd "$DATA_DIR" && exec setsid "$NISSHI" broker \
    --listener-url "$listener" \
    --advertised-listener-url "$listener" \
    --storage-engine "$storage" \
    >>"$LOG_DIR/broker.log" 2>&1 </dev/null) &
  echo $! >"$RUN_DIR/broker.pid"
  await_ready broker "127.0.0.1:$KAFKA_PORT" 60
  say "broker up on 127.0.0.1:$KAFKA_PORT ($storage in $DATA_DIR), log $LOG_DIR/broker.log"
}

start_registry() {
  local pid
  if pid=$(pid_of registry); then
    say "registry already running (pid $pid) on http://127.0.0.1:$REGISTRY_PORT"
    return
  fi
  if [ ! -x "$BIN_DIR/schema-registry" ]; then
    say "schema-registry not built at $BIN_DIR; run 'make build' first" >&2
    exit 1
  fi
  if port_in_use "$REGISTRY_PORT"; then
    say "port 127.0.0.1:$REGISTRY_PORT is taken by another process; set BACKBONE_REGISTRY_PORT" >&2
    exit 1
  fi
  BACKBONE__KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT \
  BACKBONE__REGISTRY__LISTEN=127.0.0.1:$REGISTRY_PORT \
    setsid "$BIN_DIR/schema-registry" >>"$LOG_DIR/registry.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/registry.pid"
  await_ready registry "http://127.0.0.1:$REGISTRY_PORT/health" 60
  say "registry up on http://127.0.0.1:$REGISTRY_PORT (topic _schemas), log $LOG_DIR/registry.log"
}

# Waits until the service answers (Kafka metadata, or HTTP for URLs); fails early if its
# process dies.
answers() {
  case "$1" in
    http://*) curl -fsS -o /dev/null --max-time 1 "$1" ;;
    *) "$REPO/scripts/kafka-ready" "$1" 1 >/dev/null 2>&1 ;;
  esac
}

await_ready() {
  local name=$1 address=$2 timeout=$3 started=$SECONDS
  while ! answers "$address"; do
    if ! pid_of "$name" >/dev/null || (( SECONDS - started >= timeout )); then
      say "$name failed to start within ${timeout}s; last lines of $LOG_DIR/$name.log:" >&2
      tail -n 20 "$LOG_DIR/$name.log" >&2 || true
      stop_service "$name"
      exit 1
    fi
    sleep 0.1
  done
}

stop_service() {
  local name=$1 pid
  if ! pid=$(pid_of "$name"); then
    rm -f "$RUN_DIR/$name.pid"
    return
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name (pid $pid) ignored SIGTERM for 10s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN_DIR/$name.pid"
  say "$name stopped"
}

status() {
  local pid
  if pid=$(pid_of broker); then
    say "broker   running  pid $pid  127.0.0.1:$KAFKA_PORT  log $LOG_DIR/broker.log"
  else
    say "broker   stopped  (would listen on 127.0.0.1:$KAFKA_PORT)"
  fi
  if pid=$(pid_of registry); then
    say "registry running  pid $pid  http://127.0.0.1:$REGISTRY_PORT  log $LOG_DIR/registry.log"
  else
    say "registry stopped  (would listen on http://127.0.0.1:$REGISTRY_PORT)"
  fi
}

case "${1:-}" in
  up)
    start_broker
    start_registry
    ;;
  down)
    stop_service registry
    stop_service broker
    ;;
  status) status ;;
  reset)
    stop_service registry
    stop_service broker
    rm -rf "$DATA_DIR"
    ;;
  *)
    echo "usage: $0 up|down|status|reset" >&2
    exit 2
    ;;
esac
