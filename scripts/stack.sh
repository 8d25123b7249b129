#!/usr/bin/env bash
# The embedded dev stack: local processes on 127.0.0.1, no containers.
#   stack.sh up | down | status | reset   (reset: stop; delete the broker's and PostgreSQL's data)
#   stack.sh registry-url   the registry's URL with the development credentials in it
#   stack.sh gateway   (after up) the manifest's topics and contracts, then the ingest gateway
#                      with a development key for tenant `demo`
#   stack.sh backbone  (after up) the processors, the sandbox, the sinks, the lag monitor and the
#                      drift reconciler (`demo up`), then Prometheus scraping them all with the
#                      project's alert rules (make up runs up, gateway and backbone)
# Settings (environment):
#   BACKBONE_STACK_DIR   state, logs and pid files (default: <repo>/.backbone/stack)
#   BACKBONE_KAFKA_PORT  broker port (default: 9092)
#   BACKBONE_REGISTRY_PORT  schema registry port (default: 8081)
#   BACKBONE_POSTGRES_PORT  PostgreSQL port, the analytics sink's store (default: 5432)
#   BACKBONE_INGEST_PORT  the ingest gateway's port (default: 8088)
#   BACKBONE_SANDBOX_PORT  the sandbox's APIs (default: 8090)
#   BACKBONE_FIRST_METRICS_PORT  the backbone's metrics endpoints, one port each from this
#                        (default: 19460)
#   BACKBONE_PROMETHEUS_PORT  Prometheus (default: 9090)
#   BACKBONE_KAFKA_CONTROLLER_PORT  the broker's controller port (default: broker port + 1)
#   BACKBONE_TOOLS_DIR   where setup installed the tools (default: ~/.cache/backbone)
# PostgreSQL also takes TLS, with a certificate made at first start; clients that
# want it trust <stack dir>/tls/postgres-ca.pem (plain connections keep working).
# The registry wants basic authentication: user `backbone` (admin), its password made at first
# start in <stack dir>/secrets/registry-password; `source <stack dir>/secrets/registry.env`
# gives every Backbone binary and tool those credentials.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
STACK_DIR=${BACKBONE_STACK_DIR:-$REPO/.backbone/stack}
KAFKA_PORT=${BACKBONE_KAFKA_PORT:-9092}
REGISTRY_PORT=${BACKBONE_REGISTRY_PORT:-8081}
POSTGRES_PORT=${BACKBONE_POSTGRES_PORT:-5432}
INGEST_PORT=${BACKBONE_INGEST_PORT:-8088}
SANDBOX_PORT=${BACKBONE_SANDBOX_PORT:-8090}
FIRST_METRICS_PORT=${BACKBONE_FIRST_METRICS_PORT:-19460}
PROMETHEUS_PORT=${BACKBONE_PROMETHEUS_PORT:-9090}
# A local-test-only credential: the server listens on 127.0.0.1 and holds only test data.
POSTGRES_URL=postgres://backbone:backbone@127.0.0.1:$POSTGRES_PORT/backbone
KAFKA_CONTROLLER_PORT=${BACKBONE_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$REPO/scripts/kafka/pom.xml")
BIN_DIR=${BACKBONE_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/debug}

TLS_DIR=$STACK_DIR/tls
SECRETS_DIR=$STACK_DIR/secrets
REGISTRY_USER=backbone
RUN_DIR=$STACK_DIR/run
LOG_DIR=$STACK_DIR/logs
DATA_DIR=$STACK_DIR/data

say() { echo "stack: $*"; }

# PostgreSQL's cluster (data/) and unix socket directory (socket/). initdb and postgres refuse
# to run as root, so as root they run as the Debian package's `postgres` system user, which must
# be able to reach its data directory; but a clone under /root (mode 700) is not traversable for
# that user, and whether any other stack dir is depends on all of its parents. So as root the
# cluster always lives under /var/lib/backbone-postgres (root-owned, world-traversable), in a
# directory named after the stack dir: one cluster per stack, which `reset` of that stack deletes.
# Otherwise it lives in the stack's data dir, next to the broker's data.
postgres_home() {
  if [ "$(id -u)" -eq 0 ]; then
    local stack
    stack=$(realpath -m "$STACK_DIR")
    echo "/var/lib/backbone-postgres/$(basename "$stack" | tr -c 'A-Za-z0-9._\n-' _ | cut -c1-24)-$(
      printf %s "$stack" | sha256sum | cut -c1-12)"
  else
    echo "$DATA_DIR/postgres"
  fi
}
PG_HOME=$(postgres_home)
# The prefix that runs a command as the cluster's owner. setpriv execs the command, so the pid
# that setsid leaves in $! is the server's own (runuser would stay in between as its parent).
CLUSTER_OWNER=()
[ "$(id -u)" -eq 0 ] && CLUSTER_OWNER=(setpriv --reuid=postgres --regid=postgres --init-groups --)

pid_of() {
  local file=$RUN_DIR/$1.pid
  [ -f "$file" ] || return 1
  local pid
  pid=$(cat "$file")
  kill -0 "$pid" 2>/dev/null || return 1
  # A killed process nobody has reaped yet (a zombie) answers kill -0 but runs no more.
  if [ -r "/proc/$pid/stat" ] && [ "$(sed -n 's/.*) \([A-Z]\).*/\1/p' "/proc/$pid/stat")" = Z ]; then
    return 1
  fi
  echo "$pid"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The stack's cluster id, made on the first start and kept with the data: a data directory
# formatted for another cluster is then reported by scripts/kafka/broker, never wiped.
kafka_cluster_id() {
  local file=$DATA_DIR/kafka.cluster-id
  if [ ! -s "$file" ]; then
    mkdir -p "$DATA_DIR"
    # A KRaft cluster id: 16 random bytes in URL-safe base64 without padding.
    head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$file"
  fi
  cat "$file"
}

start_broker() {
  local pid
  if pid=$(pid_of broker); then
    say "broker already running (pid $pid) on 127.0.0.1:$KAFKA_PORT"
    return
  fi
  local port
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if port_in_use "$port"; then
      say "port 127.0.0.1:$port is taken by another process;" \
        "set BACKBONE_KAFKA_PORT or BACKBONE_KAFKA_CONTROLLER_PORT" >&2
      exit 1
    fi
  done
  mkdir -p "$RUN_DIR" "$LOG_DIR" "$DATA_DIR"
  local cluster_id
  cluster_id=$(kafka_cluster_id)
  # setsid: the broker must not receive the terminal's Ctrl-C meant for a test run;
  # `stack.sh down` stops it. The launcher execs java, so $! is the broker's pid.
  (exec setsid "$REPO/scripts/kafka/broker" --data "$DATA_DIR/kafka" \
    --port "$KAFKA_PORT" --controller-port "$KAFKA_CONTROLLER_PORT" \
    --log "$LOG_DIR/broker.log" --cluster-id "$cluster_id" \
    >>"$LOG_DIR/broker.log" 2>&1 </dev/null) &
  echo $! >"$RUN_DIR/broker.pid"
  # A JVM, and after a crash a recovery of every log: slower to start than the rest.
  await_ready broker "127.0.0.1:$KAFKA_PORT" 120
  say "broker up: apache kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (data in $DATA_DIR/kafka)," \
    "log $LOG_DIR/broker.log"
}

# The development credentials of the registry: a random password (kept until reset), the users
# file holding its hash, and an env file naming both for clients.
registry_secrets() {
  mkdir -p "$SECRETS_DIR"
  chmod 700 "$SECRETS_DIR"
  if [ ! -s "$SECRETS_DIR/registry-password" ]; then
    (umask 077 && openssl rand -hex 16 >"$SECRETS_DIR/registry-password.tmp")
    mv "$SECRETS_DIR/registry-password.tmp" "$SECRETS_DIR/registry-password"
    rm -f "$SECRETS_DIR/registry-users"
  fi
  if [ ! -s "$SECRETS_DIR/registry-users" ]; then
    local hash
    hash=$("$BIN_DIR/schema-registry" --hash-password <"$SECRETS_DIR/registry-password")
    printf '# The embedded stack'"'"'s registry users (name:role:argon2id hash).\n%s:admin:%s\n' \
      "$REGISTRY_USER" "$hash" >"$SECRETS_DIR/registry-users.tmp"
    mv "$SECRETS_DIR/registry-users.tmp" "$SECRETS_DIR/registry-users"
  fi
  printf 'BACKBONE__SCHEMA_REGISTRY__USERNAME=%s\nBACKBONE__SCHEMA_REGISTRY__PASSWORD_FILE=%s\n' \
    "$REGISTRY_USER" "$SECRETS_DIR/registry-password" >"$SECRETS_DIR/registry.env"
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
  registry_secrets
  BACKBONE__KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT \
  BACKBONE__REGISTRY__LISTEN=127.0.0.1:$REGISTRY_PORT \
  BACKBONE__REGISTRY__USERS_FILE=$SECRETS_DIR/registry-users \
    setsid "$BIN_DIR/schema-registry" >>"$LOG_DIR/registry.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/registry.pid"
  await_ready registry "http://127.0.0.1:$REGISTRY_PORT/health" 60
  say "registry up on http://127.0.0.1:$REGISTRY_PORT (topic _schemas), log $LOG_DIR/registry.log;" \
    "user $REGISTRY_USER, credentials for clients in $SECRETS_DIR/registry.env"
}

# The ingest gateway: the manifest's topics and contracts first (it produces to the one and
# looks up the other), then a development key for tenant `demo`, made once and kept in
# <stack dir>/secrets/ingest-dev-key until reset.
start_gateway() {
  local pid
  if pid=$(pid_of ingest); then
    say "ingest already running (pid $pid) on http://127.0.0.1:$INGEST_PORT"
    return
  fi
  pid_of registry >/dev/null || { say "the registry is not running: run 'stack.sh up' first" >&2; exit 1; }
  if port_in_use "$INGEST_PORT"; then
    say "port 127.0.0.1:$INGEST_PORT is taken by another process; set BACKBONE_INGEST_PORT" >&2
    exit 1
  fi
  "$BIN_DIR/contracts" apply --bootstrap-servers "127.0.0.1:$KAFKA_PORT" >>"$LOG_DIR/ingest.log" 2>&1
  "$BIN_DIR/contracts" register --registry-url "http://127.0.0.1:$REGISTRY_PORT" \
    --registry-username "$REGISTRY_USER" --registry-password-file "$SECRETS_DIR/registry-password" \
    >>"$LOG_DIR/ingest.log" 2>&1
  local keys=$SECRETS_DIR/ingest-keys.jsonl
  if [ ! -s "$SECRETS_DIR/ingest-dev-key" ]; then
    (umask 077 && "$BIN_DIR/ingest" keys --keys-file "$keys" create --tenant demo \
      --type backbone.usage.recorded >"$SECRETS_DIR/ingest-dev-key.tmp" 2>>"$LOG_DIR/ingest.log")
    mv "$SECRETS_DIR/ingest-dev-key.tmp" "$SECRETS_DIR/ingest-dev-key"
  fi
  BACKBONE__KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT \
  BACKBONE__SCHEMA_REGISTRY__URL=http://127.0.0.1:$REGISTRY_PORT \
  BACKBONE__SCHEMA_REGISTRY__USERNAME=$REGISTRY_USER \
  BACKBONE__SCHEMA_REGISTRY__PASSWORD_FILE=$SECRETS_DIR/registry-password \
  BACKBONE__INGEST__LISTEN=127.0.0.1:$INGEST_PORT \
  BACKBONE__INGEST__KEYS_FILE=$keys \
    setsid "$BIN_DIR/ingest" >>"$LOG_DIR/ingest.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/ingest.pid"
  await_ready ingest "http://127.0.0.1:$INGEST_PORT/health" 60
  say "ingest up on http://127.0.0.1:$INGEST_PORT/v1/events, log $LOG_DIR/ingest.log;" \
    "development key for tenant demo in $SECRETS_DIR/ingest-dev-key"
}

# Services of this script; every other pid file in the run directory is a process `demo up`
# started.
SERVICES=" broker registry postgres ingest prometheus "

backbone_processes() {
  local file name
  for file in "$RUN_DIR"/*.pid; do
    [ -e "$file" ] || continue
    name=$(basename "$file" .pid)
    [[ $SERVICES == *" $name "* ]] || echo "$name"
  done
}

start_backbone() {
  pid_of registry >/dev/null || { say "the registry is not running: run 'stack.sh up' first" >&2; exit 1; }
  mkdir -p "$DATA_DIR/state" "$DATA_DIR/erp-outbox"
  "$BIN_DIR/demo" \
    --bootstrap-servers "127.0.0.1:$KAFKA_PORT" \
    --registry-url "http://127.0.0.1:$REGISTRY_PORT" \
    --registry-username "$REGISTRY_USER" \
    --registry-password-file "$SECRETS_DIR/registry-password" \
    --postgres-url "$POSTGRES_URL" \
    --sandbox-listen "127.0.0.1:$SANDBOX_PORT" \
    --log-dir "$LOG_DIR" \
    --state-dir "$DATA_DIR/state" \
    --outbox-dir "$DATA_DIR/erp-outbox" \
    --run-dir "$RUN_DIR" \
    --first-port "$FIRST_METRICS_PORT" \
    up | sed 's/^/stack: /'
  # Master data of tenant `demo` (the gateway's development key): accounts cust-0 to cust-2,
  # each with a running subscription sub-cust-N, a rate card pricing api_calls, GL mappings; the
  # same records on every run, so publishing them again changes nothing.
  BACKBONE__KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT \
  BACKBONE__SCHEMA_REGISTRY__URL=http://127.0.0.1:$REGISTRY_PORT \
  BACKBONE__SCHEMA_REGISTRY__USERNAME=$REGISTRY_USER \
  BACKBONE__SCHEMA_REGISTRY__PASSWORD_FILE=$SECRETS_DIR/registry-password \
    "$BIN_DIR/loadgen" --tenant demo --customers 3 --plans 1 --events 0 \
    --expected "$DATA_DIR/demo-master-data.json" >>"$LOG_DIR/loadgen.log" 2>&1
  say "master data of tenant demo published: customers cust-0, cust-1, cust-2 (log $LOG_DIR/loadgen.log)"
  start_prometheus
}

# Prometheus (the machine's package) with the project's alert rules, scraping every metrics
# endpoint of the run directory under the job names of deploy/prometheus/prometheus.yml.
start_prometheus() {
  local pid bin dir job targets
  if pid=$(pid_of prometheus); then
    say "prometheus already running (pid $pid) on http://127.0.0.1:$PROMETHEUS_PORT"
    return
  fi
  bin=${BACKBONE_PROMETHEUS_BIN:-$(command -v prometheus || echo /usr/bin/prometheus)}
  if [ ! -x "$bin" ]; then
    say "PROMETHEUS IS NOT INSTALLED (make setup installs the Debian package): the backbone runs, nothing scrapes it" >&2
    return
  fi
  if port_in_use "$PROMETHEUS_PORT"; then
    say "port 127.0.0.1:$PROMETHEUS_PORT is taken by another process; set BACKBONE_PROMETHEUS_PORT" >&2
    exit 1
  fi
  dir=$DATA_DIR/prometheus
  mkdir -p "$dir"
  {
    echo "# Written by stack.sh backbone: the processes of $RUN_DIR."
    echo "global: {scrape_interval: 5s, evaluation_interval: 5s}"
    echo "rule_files: [\"$REPO/deploy/prometheus/rules.yml\"]"
    echo "scrape_configs:"
    echo "  - {job_name: prometheus, static_configs: [{targets: [\"127.0.0.1:$PROMETHEUS_PORT\"]}]}"
    for job in backbone-processors backbone-sinks backbone-monitor backbone-drift; do
      targets=$(cat "$RUN_DIR"/*.metrics 2>/dev/null | awk -v job="$job" '$2 == job {printf "%s\"127.0.0.1:%s\"", (n++ ? ", " : ""), $1}')
      [ -n "$targets" ] && echo "  - {job_name: $job, static_configs: [{targets: [$targets]}]}"
    done
    pid_of ingest >/dev/null &&
      echo "  - {job_name: backbone-ingest, static_configs: [{targets: [\"127.0.0.1:$INGEST_PORT\"]}]}"
  } >"$dir/prometheus.yml"
  setsid "$bin" --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/tsdb" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >>"$LOG_DIR/prometheus.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/prometheus.pid"
  await_ready prometheus "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" 60
  say "prometheus up on http://127.0.0.1:$PROMETHEUS_PORT, scraping $(grep -c job_name "$dir/prometheus.yml") jobs" \
    "with deploy/prometheus/rules.yml; log $LOG_DIR/prometheus.log"
}

# One status line per process of the backbone: pid, port, readiness, consumer lag (its group's,
# from the lag monitor), log.
backbone_status() {
  local name pid port state lag monitor_port="" metrics=""
  [ -f "$RUN_DIR/monitor.metrics" ] && monitor_port=$(awk '{print $1}' "$RUN_DIR/monitor.metrics")
  [ -n "$monitor_port" ] && metrics=$(curl -s --max-time 2 "http://127.0.0.1:$monitor_port/metrics" || true)
  for name in $(backbone_processes); do
    if [ "$name" = sandbox ]; then
      port=$SANDBOX_PORT
    else
      port=$(awk '{print $1}' "$RUN_DIR/$name.metrics" 2>/dev/null || echo "?")
    fi
    if ! pid=$(pid_of "$name"); then
      say "$(printf '%-15s' "$name") stopped  log $LOG_DIR/$name.log"
      continue
    fi
    state="not ready"
    if curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$port/ready" 2>/dev/null ||
      { [ "$name" = sandbox ] && curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$port/health"; }; then
      state=ready
    fi
    lag=$(awk -v group="group=\"$name\"" '/^backbone_monitor_consumer_lag_records\{/ && index($0, group) {sum += $NF; n++}
      END {if (n) printf "%d", sum; else printf "-"}' <<<"$metrics")
    say "$(printf '%-15s' "$name") running  pid $pid  port $port  $state  lag $lag  log $LOG_DIR/$name.log"
  done
  if pid=$(pid_of prometheus); then
    say "prometheus      running  pid $pid  http://127.0.0.1:$PROMETHEUS_PORT  log $LOG_DIR/prometheus.log"
  fi
}

stop_backbone() {
  local name
  for name in $(backbone_processes); do
    stop_service "$name"
    rm -f "$RUN_DIR/$name.metrics"
  done
  stop_service prometheus
}

# The binaries of the PostgreSQL major version that created the cluster, or of the newest
# installed one for a new cluster (Debian installs each major in /usr/lib/postgresql/<major>).
find_postgres_bin() {
  local major
  if [ -f "$PG_HOME/data/PG_VERSION" ]; then
    major=$(cat "$PG_HOME/data/PG_VERSION")
    if [ ! -x "/usr/lib/postgresql/$major/bin/postgres" ]; then
      say "the cluster in $PG_HOME/data is PostgreSQL $major, which is not installed" \
        "in /usr/lib/postgresql; 'stack.sh reset' deletes it" >&2
      exit 1
    fi
  else
    major=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null |
      cut -d/ -f5 | sort -V | tail -n 1)
    if [ -z "$major" ] || [ ! -x "/usr/lib/postgresql/$major/bin/postgres" ]; then
      say "PostgreSQL not found in /usr/lib/postgresql; run 'make setup' first" >&2
      exit 1
    fi
  fi
  PG_BIN=/usr/lib/postgresql/$major/bin
}

# Creates the cluster on first start: superuser `backbone` with password `backbone`, password
# The server's certificate for 127.0.0.1 and localhost, issued by a CA of the cluster's own
# whose certificate is copied to $TLS_DIR/postgres-ca.pem for clients (a certificate cannot be
# both: verifiers refuse a CA certificate as a server's). The keys stay with the cluster.
postgres_certificate() {
  local dir=$PG_HOME/tls
  if [ ! -s "$dir/server.key" ] || [ ! -s "$dir/server.pem" ] || [ ! -s "$dir/ca.pem" ]; then
    mkdir -p "$dir"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$dir/server.ext"
    if ! (cd "$dir" &&
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Backbone stack PostgreSQL CA" \
        -keyout ca.key -out ca.pem &&
      openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr &&
      openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile server.ext -out server.pem) >>"$LOG_DIR/postgres.log" 2>&1; then
      say "could not make PostgreSQL's certificate (is openssl installed? run 'make setup')" >&2
      exit 1
    fi
    chmod 600 "$dir/server.key" "$dir/ca.key"
    [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$dir"
  fi
  mkdir -p "$TLS_DIR"
  cp "$dir/ca.pem" "$TLS_DIR/postgres-ca.pem"
}

# (scram) authentication on every connection. initdb writes into data.init, renamed when
# complete, so a start that was interrupted half-way leaves no half-made cluster behind.
init_postgres() {
  [ -f "$PG_HOME/data/PG_VERSION" ] && return
  mkdir -p "$PG_HOME"
  if [ "$(id -u)" -eq 0 ]; then
    chmod 755 "$(dirname "$PG_HOME")"
    chown postgres:postgres "$PG_HOME"
  fi
  chmod 700 "$PG_HOME"
  rm -rf "$PG_HOME/data.init"
  local password_file=$PG_HOME/initdb.password
  echo backbone >"$password_file"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$password_file"
  say "creating the PostgreSQL cluster in $PG_HOME/data"
  if ! (cd "$PG_HOME" && "${CLUSTER_OWNER[@]}" "$PG_BIN/initdb" -D "$PG_HOME/data.init" \
      --username=backbone --pwfile="$password_file" --auth=scram-sha-256 \
      --encoding=UTF8 --locale=C >>"$LOG_DIR/postgres.log" 2>&1); then
    rm -f "$password_file"
    say "initdb failed; last lines of $LOG_DIR/postgres.log:" >&2
    tail -n 20 "$LOG_DIR/postgres.log" >&2 || true
    exit 1
  fi
  rm -f "$password_file"
  mv "$PG_HOME/data.init" "$PG_HOME/data"
}

# The database, on the first start (and after any start that stopped before making it).
create_postgres_database() {
  local admin=postgres://backbone:backbone@127.0.0.1:$POSTGRES_PORT/postgres exists
  exists=$("$PG_BIN/psql" -X -q -tA -d "$admin" \
    -c "SELECT 1 FROM pg_database WHERE datname = 'backbone'") || return 1
  [ "$exists" = 1 ] || "$PG_BIN/psql" -X -q -d "$admin" -c 'CREATE DATABASE backbone'
}

start_postgres() {
  local pid
  if pid=$(pid_of postgres); then
    say "postgres already running (pid $pid) on $POSTGRES_URL"
    return
  fi
  if [ "$(id -u)" -eq 0 ] && ! id -u postgres >/dev/null 2>&1; then
    say "as root, PostgreSQL runs as the 'postgres' user, which does not exist;" \
      "run 'make setup' first" >&2
    exit 1
  fi
  find_postgres_bin
  if port_in_use "$POSTGRES_PORT"; then
    say "port 127.0.0.1:$POSTGRES_PORT is taken by another process; set BACKBONE_POSTGRES_PORT" >&2
    exit 1
  fi
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  init_postgres
  postgres_certificate
  # A private socket directory, so this server never meets a system PostgreSQL's sockets in
  # /var/run/postgresql. A socket path has at most 107 bytes; with a longer one, TCP only.
  local sockets=$PG_HOME/socket
  mkdir -p "$sockets"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$sockets"
  chmod 700 "$sockets"
  if (( ${#sockets} + ${#POSTGRES_PORT} + 10 > 107 )); then
    sockets=""
  fi
  # setsid, like the broker: no terminal Ctrl-C; `stack.sh down` stops it.
  (cd "$PG_HOME" && exec setsid "${CLUSTER_OWNER[@]}" "$PG_BIN/postgres" -D "$PG_HOME/data" \
    -p "$POSTGRES_PORT" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$sockets" \
    -c ssl=on -c ssl_cert_file="$PG_HOME/tls/server.pem" -c ssl_key_file="$PG_HOME/tls/server.key" \
    >>"$LOG_DIR/postgres.log" 2>&1 </dev/null) &
  echo $! >"$RUN_DIR/postgres.pid"
  await_ready postgres "$POSTGRES_URL" 60
  if ! create_postgres_database >>"$LOG_DIR/postgres.log" 2>&1; then
    say "could not create the database backbone; last lines of $LOG_DIR/postgres.log:" >&2
    tail -n 20 "$LOG_DIR/postgres.log" >&2 || true
    stop_service postgres
    exit 1
  fi
  say "postgres up on $POSTGRES_URL (data in $PG_HOME/data, TLS trusting $TLS_DIR/postgres-ca.pem), log $LOG_DIR/postgres.log"
}

# Waits until the service answers (Kafka metadata, PostgreSQL, or HTTP for URLs); fails early,
# naming the log and showing its last lines, if the process dies or the timeout passes.
answers() {
  case "$1" in
    http://*) curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null ;;
    # pg_isready does not log in; the maintenance database exists before `backbone` does.
    postgres://*) "$PG_BIN/pg_isready" -q -t 1 -d "${1%/*}/postgres" ;;
    *) "$REPO/scripts/kafka-ready" "$1" 1 >/dev/null 2>&1 ;;
  esac
}

await_ready() {
  local name=$1 address=$2 timeout=$3 started=$SECONDS
  while ! answers "$address"; do
    local why=""
    if ! pid_of "$name" >/dev/null; then
      why="exited while starting"
    elif (( SECONDS - started >= timeout )); then
      why="did not answer within ${timeout}s"
    fi
    if [ -n "$why" ]; then
      say "$name $why; last lines of $LOG_DIR/$name.log:" >&2
      tail -n 20 "$LOG_DIR/$name.log" >&2 || true
      stop_service "$name"
      exit 1
    fi
    sleep 0.1
  done
}

stop_service() {
  local name=$1 pid signal=TERM force=KILL
  if ! pid=$(pid_of "$name"); then
    rm -f "$RUN_DIR/$name.pid"
    return
  fi
  # PostgreSQL: SIGINT is its fast shutdown (ends the sessions, checkpoints); SIGTERM would wait
  # for every client to disconnect. SIGQUIT, its immediate shutdown, is recovered on the next
  # start; SIGKILL would leave its backends running.
  [ "$name" = postgres ] && signal=INT force=QUIT
  kill -"$signal" "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name (pid $pid) ignored SIG$signal for 10s; sending SIG$force"
    kill -"$force" "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$RUN_DIR/$name.pid"
  say "$name stopped"
}

status() {
  local pid
  if pid=$(pid_of broker); then
    say "broker   running  pid $pid  127.0.0.1:$KAFKA_PORT  apache kafka $KAFKA_VERSION" \
      " data $DATA_DIR/kafka  log $LOG_DIR/broker.log"
  else
    say "broker   stopped  (would listen on 127.0.0.1:$KAFKA_PORT)"
  fi
  if pid=$(pid_of registry); then
    say "registry running  pid $pid  http://127.0.0.1:$REGISTRY_PORT  log $LOG_DIR/registry.log" \
      " user $REGISTRY_USER  password $SECRETS_DIR/registry-password  (source $SECRETS_DIR/registry.env)"
  else
    say "registry stopped  (would listen on http://127.0.0.1:$REGISTRY_PORT)"
  fi
  if pid=$(pid_of postgres); then
    say "postgres running  pid $pid  $POSTGRES_URL  data $PG_HOME/data  TLS CA $TLS_DIR/postgres-ca.pem" \
      " log $LOG_DIR/postgres.log"
  else
    say "postgres stopped  (would listen on 127.0.0.1:$POSTGRES_PORT)"
  fi
  if pid=$(pid_of ingest); then
    say "ingest   running  pid $pid  http://127.0.0.1:$INGEST_PORT/v1/events  log $LOG_DIR/ingest.log" \
      " development key (tenant demo) $SECRETS_DIR/ingest-dev-key  metrics http://127.0.0.1:$INGEST_PORT/metrics"
  else
    say "ingest   stopped  (would listen on http://127.0.0.1:$INGEST_PORT; stack.sh gateway starts it)"
  fi
  backbone_status
}

case "${1:-}" in
  up)
    start_broker
    start_registry
    start_postgres
    ;;
  down)
    stop_backbone
    stop_service ingest
    stop_service registry
    stop_service broker
    stop_service postgres
    ;;
  gateway) start_gateway ;;
  backbone) start_backbone ;;
  status) status ;;
  registry-url)
    [ -s "$SECRETS_DIR/registry-password" ] || { say "no registry credentials yet: run up first" >&2; exit 1; }
    echo "http://$REGISTRY_USER:$(cat "$SECRETS_DIR/registry-password")@127.0.0.1:$REGISTRY_PORT"
    ;;
  reset)
    stop_backbone
    stop_service ingest
    stop_service registry
    stop_service broker
    stop_service postgres
    rm -rf "$DATA_DIR" "$PG_HOME" "$TLS_DIR" "$SECRETS_DIR"
    ;;
  *)
    echo "usage: $0 up|gateway|backbone|down|status|reset|registry-url" >&2
    exit 2
    ;;
esac
