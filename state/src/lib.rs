//! Partition-local RocksDB state for processors, kept recoverable from Kafka changelogs.
//!
//! Its one job: hold a processor's state for one input partition in RocksDB (one database per
//! processor and partition number, one column family per store) so that it can always be rebuilt
//! from the processor's compacted changelog topic `<processor>.changelog`. It knows nothing of
//! Kafka: the runtime produces and reads the changelog records; this crate says which, and applies them.
//!
//! # Write path
//!
//! `process` reads and writes through a [`StateView`]; writes are only staged in [`StagedWrites`].
//! [`StagedWrites::changelog_records`] are what the runtime must produce to the changelogs, and
//! [`StagedWrites::apply`] writes the batch to RocksDB in one atomic batch. The two may happen in
//! either order: the local state is a cache of the changelog and is trusted only after a
//! [`PartitionState::close`], so a caller that applies first must never close a state whose
//! changelog records were not all committed (it drops it instead, and the next open discards it).
//! Backbone's runtime applies at once, so that the next record sees the writes, and closes cleanly
//! only when nothing is in flight. [`PartitionState::write_checkpoint`] records the changelog
//! offsets (next offset to read) that the state reflects.
//!
//! # Restore protocol
//!
//! 1. [`PartitionState::open`] at [`partition_dir`]. If the previous owner did not
//!    [`close`](PartitionState::close) (crash, kill, error), its state may be ahead of or behind the
//!    committed changelog, so it is discarded and `open` answers [`Restore::Full`]; otherwise it answers
//!    [`Restore::From`] the checkpoint written by `close`, and removes the `CLEAN` marker so that a
//!    crash from here on is detected.
//! 2. The runtime reads the changelog partition (read-committed) from the checkpointed offset, or
//!    from the beginning for `Full` and when a store is not in the checkpoint, up to its end, feeding
//!    each committed write of each store to [`PartitionState::restore`] (a tombstone deletes).
//!    Replaying from an earlier offset than needed is harmless: records are applied in order and
//!    the last one wins.
//! 3. It writes a checkpoint with the end offsets, then starts processing.
//! 4. On revoke or shutdown, after the last commit and apply, [`PartitionState::close`] flushes the
//!    stores, syncs the checkpoint and then writes the `CLEAN` marker.
//!
//! Since local state never outlives an unclean stop, RocksDB's write-ahead log is off.
//!
//! # Dedup
//!
//! [`IdempotencyStore`] keeps first-seen marks per [`IdempotencyKey`] (tenant, source, event id) in
//! one store, answering [`Seen::New`] or [`Seen::Duplicate`] within a TTL ([`DEFAULT_TTL`], 35 days);
//! [`IdempotencyStore::sweep_expired`] stages deletes of expired marks so that expiry reaches the
//! changelog too. Callers pass the time in.

mod error;
mod idempotency;
mod partition;
mod staged;

pub use error::StateError;
pub use idempotency::{IdempotencyKey, IdempotencyStore, Seen, DEFAULT_TTL};
pub use partition::{
    changelog_topic, partition_dir, Checkpoint, Entry, FullRestoreCause, PartitionState, Restore,
};
pub use staged::{ChangelogRecord, StagedValue, StagedWrites, StateView};
