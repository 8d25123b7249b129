//! Partition-local RocksDB state for processors.
