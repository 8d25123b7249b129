//! The one error type of this crate.

use std::path::PathBuf;

/// What went wrong with partition state. Every variant names the directory, file or store involved.
///
/// None of these is worth retrying in place: the runtime should stop processing the partition and
/// drop its [`PartitionState`](crate::PartitionState) without `close`, so that the next open discards
/// the local state and restores it from the changelog.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file system operation failed.
    #[error("{action} `{path}`: {source}")]
    Io {
        /// What was being done, e.g. "writing checkpoint".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// RocksDB failed.
    #[error("rocksdb at `{path}`: {action}: {source}")]
    RocksDb {
        /// What was being done, e.g. "applying staged writes".
        action: &'static str,
        /// The database directory.
        path: PathBuf,
        /// The underlying error.
        source: rocksdb::Error,
    },
    /// The database is held by another open `PartitionState` (in this or another process). It is left
    /// untouched: two owners of one partition's state is a bug in the caller or its deployment.
    #[error("state `{path}` is already open elsewhere: {source}")]
    Locked {
        /// The database directory.
        path: PathBuf,
        /// The underlying error.
        source: rocksdb::Error,
    },
    /// A store was used that this partition state was not opened with.
    #[error("store `{store}` is not open in `{path}`")]
    UnknownStore {
        /// The store asked for.
        store: String,
        /// The partition state directory.
        path: PathBuf,
    },
    /// A store name that cannot be used in a changelog topic name, a column family or a checkpoint.
    #[error("store name {name:?}: {reason}")]
    InvalidStoreName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A processor or topic name that cannot be used as a directory name.
    #[error("{what} {name:?}: {reason}")]
    InvalidPathComponent {
        /// "processor" or "topic".
        what: &'static str,
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A checkpoint offset below zero.
    #[error("checkpoint offset for store `{store}`: expected a non-negative offset, got {offset}")]
    NegativeOffset {
        /// The store.
        store: String,
        /// The offset given.
        offset: i64,
    },
    /// A value in a store is not what the store's owner wrote there.
    #[error("store `{store}` in `{path}`: {reason}")]
    CorruptValue {
        /// The store.
        store: String,
        /// The partition state directory.
        path: PathBuf,
        /// What is wrong with the value.
        reason: String,
    },
}
