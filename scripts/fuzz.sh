#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and says which found a crash.
#
# cargo-fuzz builds with sanitizer flags that only a nightly toolchain takes, so this is not
# part of `make test` (CI machines have stable only). Settings, all optional:
#   FUZZ_SECONDS      seconds per target (default 60)
#   FUZZ_TARGETS      targets to run, space-separated (default: all)
#   FUZZ_TARGET_DIR   cargo target dir for the fuzz build (default /var/cache/backbone/fuzz-target)
#   FUZZ_WORK_DIR     where the growing corpora live (default $FUZZ_TARGET_DIR/corpus); the
#                     committed seeds in fuzz/corpus/<target>/ are read, never written
#   FUZZ_MALLOC_LIMIT_MB  largest single allocation before libFuzzer reports it (default 64;
#                     the decoder caps its own at 16 MiB, see wire::MAX_ALLOCATION_BYTES)
#   ROCKSDB_LIB_DIR with ROCKSDB_STATIC=1  link a librocksdb.a built before instead of compiling
#                     RocksDB again for the fuzz build (most of its first 20 minutes on 2 cores)
# Crashing inputs are written to fuzz/artifacts/<target>/ (ignored by git).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
seconds=${FUZZ_SECONDS:-60}
malloc_limit=${FUZZ_MALLOC_LIMIT_MB:-64}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-/var/cache/backbone/fuzz-target}
work=${FUZZ_WORK_DIR:-$CARGO_TARGET_DIR/corpus}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "make fuzz: no nightly Rust toolchain; cargo-fuzz needs one for its sanitizer flags." >&2
  echo "install it with \`rustup toolchain install nightly\` (stable stays the default)" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list | grep -vx seeds)}
# One optimised build (with debug assertions and overflow checks, see fuzz/Cargo.toml) for
# every target and the seed writer.
cargo +nightly fuzz build
# The seeds come from the contracts, so they follow them; unchanged contracts rewrite the
# same files.
"$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/seeds" "$REPO/fuzz/corpus"

failed=()
summary=()
for target in $targets; do
  mkdir -p "$work/$target" "$REPO/fuzz/artifacts/$target"
  log="$work/$target.log"
  echo "== $target: ${seconds}s (log $log)"
  status=0
  # New inputs go to the first corpus directory: the work dir, not the committed seeds.
  cargo +nightly fuzz run "$target" "$work/$target" "$REPO/fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb="$malloc_limit" -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    summary+=("$target: FAILED (exit $status) after ${execs:-?} executions; see $log and fuzz/artifacts/$target/")
    tail -40 "$log" >&2
  else
    summary+=("$target: ${execs:-?} executions in ${seconds}s, no crash")
  fi
done

echo
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
  echo "crashes in: ${failed[*]}; reproduce with \`cargo +nightly fuzz run <target> <artifact>\`" >&2
  exit 1
fi
