//! Tests of `backbone-state` against real RocksDB databases in temporary directories.

mod idempotency;
mod model;
mod partition;
mod temp;
