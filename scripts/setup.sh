#!/usr/bin/env bash
# Installs what Backbone needs on a fresh Debian or Ubuntu machine, and nothing that is
# already there at the right version. Safe to run any number of times.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CONFLUENT_KAFKA_VERSION=2.16.1
TOOLS_DIR=${BACKBONE_TOOLS_DIR:-$HOME/.cache/backbone}

APT_PACKAGES=(
  build-essential cmake clang libclang-dev pkg-config    # C/C++ of librdkafka, RocksDB; bindgen
  libssl-dev libcurl4-openssl-dev libsasl2-dev            # librdkafka's TLS, OAuth and SASL
  zlib1g-dev libzstd-dev liblz4-dev                       # compression codecs
  python3 python3-venv                                    # readiness probe; Python client venv
  postgresql prometheus                                   # analytics sink store; dashboard queries
  docker-compose                                          # validates docker-compose.yml
  curl procps
  openssl                                                 # test certificates (TLS tests)
  wrk                                                     # HTTP load on the ingest gateway (make bench)
  kcat                                                    # records with raw header names (poison tests)
  gdb                                                     # thread stacks of a stage the chaos test finds stuck
)

say() { echo "setup: $*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_system_packages() {
  local missing=()
  for package in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$package")
    fi
  done
  # The broker runs on any Java 17 or later and is fetched by any Maven; a machine that has
  # them from elsewhere (a JDK in /usr/lib/jvm, a Maven on PATH) keeps its own.
  command -v java >/dev/null || missing+=(default-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  if [ ${#missing[@]} -eq 0 ]; then
    say "system packages present"
    return
  fi
  say "installing system packages: ${missing[*]}"
  as_root apt-get update -qq
  # Debian's service packages try to start their daemons; our stack starts its own, on
  # 127.0.0.1 and under our control, so keep theirs from starting.
  as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_rust_components() {
  for component in rustfmt clippy; do
    local probe=fmt
    [ "$component" = clippy ] && probe=clippy
    if ! cargo "$probe" --version >/dev/null 2>&1; then
      say "installing rust component $component"
      rustup component add "$component"
    fi
  done
}

# Apache Kafka from Maven Central: the broker's jars and their dependencies, named by
# scripts/kafka/pom.xml, copied into kafka-<version>/libs. scripts/kafka/broker runs them.
install_kafka() {
  local version libs
  version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$REPO/scripts/kafka/pom.xml")
  libs="$TOOLS_DIR/kafka-$version/libs"
  # The marker is written last: a fetch that was interrupted half-way is fetched again.
  if [ -f "$libs/.complete" ]; then
    say "apache kafka $version present ($libs)"
    return
  fi
  say "installing apache kafka $version from maven central into $libs"
  rm -rf "$libs.partial"
  mkdir -p "$TOOLS_DIR"
  local log=$TOOLS_DIR/kafka-$version-fetch.log
  if ! mvn -B -f "$REPO/scripts/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs.partial" >"$log" 2>&1; then
    say "fetching apache kafka $version failed; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  rm -rf "$libs"
  mv "$libs.partial" "$libs"
  touch "$libs/.complete"
}

install_pyclient() {
  local venv="$TOOLS_DIR/pyclient-$CONFLUENT_KAFKA_VERSION"
  local installed=""
  if [ -x "$venv/bin/python" ]; then
    installed=$("$venv/bin/python" -m pip show confluent-kafka 2>/dev/null | sed -n 's/^Version: //p')
  fi
  if [ "$installed" = "$CONFLUENT_KAFKA_VERSION" ]; then
    say "confluent-kafka $CONFLUENT_KAFKA_VERSION present ($venv)"
  else
    say "installing confluent-kafka[avro] $CONFLUENT_KAFKA_VERSION (independent registry client for tests) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "confluent-kafka[avro]==$CONFLUENT_KAFKA_VERSION"
  fi
  # The test drives the registry client and the Avro serde, so fail here if they do not import.
  "$venv/bin/python" -c 'from confluent_kafka.schema_registry import SchemaRegistryClient;
from confluent_kafka.schema_registry.avro import AvroSerializer, AvroDeserializer'
  # A wrapper, not a symlink: Python looks for its venv beside the path it was started by, so
  # a symlink from outside the venv would start the bare interpreter without the packages.
  mkdir -p "$TOOLS_DIR/bin"
  rm -f "$TOOLS_DIR/bin/pyclient-python"
  printf '#!/bin/sh\nexec "%s/bin/python" "$@"\n' "$venv" >"$TOOLS_DIR/bin/pyclient-python"
  chmod +x "$TOOLS_DIR/bin/pyclient-python"
}

# The Go producer example's modules (examples/producers/go), from the Go module proxy, and a
# build of it, so that its test runs without the network.
install_go_example() {
  if ! command -v go >/dev/null 2>&1; then
    say "go is not installed: the Go producer example's test will fail; install Go 1.26 or newer" >&2
    return
  fi
  (cd "$REPO/examples/producers/go" && go mod download && go build -o /dev/null .)
  say "go producer example builds with $(go version | cut -d' ' -f3)"
}

# The Java producer example's libraries (examples/producers/java/pom.xml), which it runs with
# as a single source file.
install_java_example() {
  local libs="$TOOLS_DIR/java-example-libs"
  mvn -q -B -f "$REPO/examples/producers/java/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs"
  say "java producer example libraries in $libs"
}

# Runs one step and says how long it took.
timed() {
  local started=$SECONDS
  "$@"
  say "${1#install_} took $(( SECONDS - started ))s"
}

started=$SECONDS
timed install_system_packages
timed install_rust_components
timed install_kafka
timed install_pyclient
timed install_go_example
timed install_java_example
say "ready in $(( SECONDS - started ))s: tools in $TOOLS_DIR"
