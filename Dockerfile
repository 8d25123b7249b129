# One image holding every Backbone binary; each compose service picks its command.
#   docker compose build        (tags it backbone:0.1.0, see docker-compose.yml)
#   docker build -t backbone:0.1.0 .
# Base images are pinned by version so a rebuild gets the same toolchain and libraries. The
# builder and the runtime are the same Debian release (bookworm), so the shared libraries
# the binaries link against are the ones they were built with.

FROM rust:1.95.0-bookworm AS builder

# librdkafka and RocksDB are C/C++ built from source by their -sys crates; bindgen needs libclang.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        cmake clang libclang-dev pkg-config \
        libssl-dev libsasl2-dev libcurl4-openssl-dev \
        zlib1g-dev libzstd-dev liblz4-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
# Every binary of components.toml (the one list of components): what compose runs, and the
# operator CLIs (contracts, replay).
RUN set -eu; \
    BINARIES=$(sed -n 's/^name = "\(.*\)"$/\1/p' components.toml); \
    selection=""; \
    for bin in $BINARIES; do selection="$selection --bin $bin"; done; \
    cargo build --release --locked $selection; \
    mkdir -p /out; \
    for bin in $BINARIES; do install -m 0755 "target/release/$bin" /out/; done

FROM debian:12.11-slim

# curl serves the compose health checks; the libraries are the runtime halves of the -dev
# packages above (RocksDB needs libstdc++).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates curl libstdc++6 \
        libssl3 libsasl2-2 zlib1g libzstd1 liblz4-1 \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid, so volumes and secrets can be granted to it. The state, ledger and outbox
# directories exist here owned by it, so named volumes mounted on them start writable.
RUN groupadd --system --gid 10001 backbone \
    && useradd --system --uid 10001 --gid backbone --home-dir /var/lib/backbone \
        --shell /usr/sbin/nologin backbone \
    && mkdir -p /var/lib/backbone/state /var/lib/backbone/ledger /var/lib/backbone/outbox \
        /etc/backbone \
    && chown -R backbone:backbone /var/lib/backbone

COPY --from=builder /out/ /usr/local/bin/

USER backbone:backbone
WORKDIR /var/lib/backbone
# Processors and sinks serve /metrics, /health and /ready here once
# BACKBONE__OBSERVABILITY__LISTEN=0.0.0.0:9464; the sandbox listens on 8090. No default
# command: each compose service names its binary.
EXPOSE 9464
