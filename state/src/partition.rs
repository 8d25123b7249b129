//! One RocksDB database per (processor, partition number), its checkpoint and its clean marker.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    FlushOptions, Options, WriteBatch, WriteBufferManager, WriteOptions, DB,
};

use crate::StateError;

/// A key and its value, as read by a scan.
pub type Entry = (Vec<u8>, Vec<u8>);

/// RocksDB's own column family, which always exists; a store may not be called that.
const DEFAULT_COLUMN_FAMILY: &str = "default";
const DB_DIR: &str = "db";
const CLEAN_MARKER: &str = "CLEAN";
const CHECKPOINT_FILE: &str = "CHECKPOINT";
const CHECKPOINT_TMP: &str = "CHECKPOINT.tmp";
const CHECKPOINT_HEADER: &str = "backbone-state checkpoint v1";

/// Memtables of every partition database in the process, together. RocksDB's default is 64 MiB
/// per column family and two of them, per database: with a database per partition and a column
/// family per store that grows with the partitions a process owns, not with what it holds.
const MEMTABLE_BUDGET_BYTES: usize = 64 << 20;
/// One column family's memtable, flushed when full (or earlier, when the budget is reached).
const MEMTABLE_BYTES: usize = 16 << 20;
/// Data blocks read back from disk, shared by every partition database in the process.
const BLOCK_CACHE_BYTES: usize = 32 << 20;

/// The process's one memory budget for state, shared by every [`PartitionState`] it opens.
struct StateMemory {
    memtables: WriteBufferManager,
    block_cache: Cache,
}

static STATE_MEMORY: LazyLock<StateMemory> = LazyLock::new(|| StateMemory {
    // No stall: past the budget RocksDB flushes the largest memtables instead of blocking writers.
    memtables: WriteBufferManager::new_write_buffer_manager(MEMTABLE_BUDGET_BYTES, false),
    block_cache: Cache::new_lru_cache(BLOCK_CACHE_BYTES),
});

/// The directory of one partition's state: `<state_dir>/<processor>/partition-<n>`.
///
/// State belongs to a partition number, not to one input topic: a processor reading several
/// co-partitioned topics (usage and the accounts it is joined with) keeps partition `n` of all of
/// them in one database, restored from partition `n` of each store's changelog.
///
/// Refuses processor names that could escape `state_dir` or collide (empty, `.`, `..`, path
/// separators, characters Kafka does not allow in topic names), and negative partitions.
pub fn partition_dir(
    state_dir: &Path,
    processor: &str,
    partition: i32,
) -> Result<PathBuf, StateError> {
    check_path_component("processor", processor)?;
    if partition < 0 {
        return Err(StateError::InvalidPathComponent {
            what: "partition",
            name: partition.to_string(),
            reason: "expected a non-negative partition number",
        });
    }
    Ok(state_dir
        .join(processor)
        .join(format!("partition-{partition}")))
}

/// The changelog topic of a processor's stores: `<processor>.changelog` (compacted, one partition
/// per input partition, the same partition number). Every store writes to it, each record's key
/// prefixed with its store, so that one input's writes to several stores sit in one partition,
/// in order, and can be applied all or none.
pub fn changelog_topic(processor: &str) -> String {
    format!("{processor}.changelog")
}

fn check_path_component(what: &'static str, name: &str) -> Result<(), StateError> {
    let reason = if name.is_empty() {
        Some("expected a non-empty name")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not names")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("expected only ASCII letters, digits, `.`, `_` and `-` (as in Kafka topic names)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StateError::InvalidPathComponent {
            what,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Store names go into column family names, changelog topic names and the checkpoint file, whose
/// lines are `<store> <offset>`: letters, digits, `_` and `-` keep all three unambiguous.
fn check_store_name(name: &str) -> Result<(), StateError> {
    let reason = if name.is_empty() {
        Some("expected a non-empty name")
    } else if name == DEFAULT_COLUMN_FAMILY {
        Some("`default` is RocksDB's own column family")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        Some("expected only ASCII letters, digits, `_` and `-`")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StateError::InvalidStoreName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// How the runtime must bring the local state up to date with the changelog after [`PartitionState::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// The local state is empty: replay every store's changelog partition from the beginning.
    Full(FullRestoreCause),
    /// The local state is what it was at the last clean close: replay each store's changelog from
    /// its checkpointed offset, or from the beginning for a store the checkpoint does not name.
    From(Checkpoint),
}

/// Why [`PartitionState::open`] started from empty state, for the runtime's log line and metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullRestoreCause {
    /// There was no local state (first start here, or the partition moved to this instance).
    NoLocalState,
    /// The last run did not `close` (crash, kill, error): its state may be ahead of or behind the
    /// committed changelog, so it was discarded.
    UncleanStop,
    /// The last run closed cleanly but its checkpoint is missing or unreadable; the state was discarded.
    BadCheckpoint,
    /// The last run closed cleanly but RocksDB could not open its database; the state was discarded.
    UnreadableDatabase,
}

/// Changelog offsets per store: the next offset to read from each store's changelog partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    offsets: BTreeMap<String, i64>,
}

impl Checkpoint {
    /// The next changelog offset to read for `store`; `None` means from the beginning.
    pub fn next_offset(&self, store: &str) -> Option<i64> {
        self.offsets.get(store).copied()
    }

    /// All offsets, by store.
    pub fn offsets(&self) -> &BTreeMap<String, i64> {
        &self.offsets
    }

    fn to_text(&self) -> String {
        let mut text = format!("{CHECKPOINT_HEADER}\n");
        for (store, offset) in &self.offsets {
            text.push_str(&format!("{store} {offset}\n"));
        }
        text
    }

    /// `None` if the text is not a checkpoint this version wrote.
    fn from_text(text: &str) -> Option<Checkpoint> {
        let mut lines = text.lines();
        if lines.next()? != CHECKPOINT_HEADER {
            return None;
        }
        let mut offsets = BTreeMap::new();
        for line in lines {
            let (store, offset) = line.split_once(' ')?;
            check_store_name(store).ok()?;
            let offset: i64 = offset.parse().ok()?;
            if offset < 0 || offsets.insert(store.to_owned(), offset).is_some() {
                return None;
            }
        }
        Some(Checkpoint { offsets })
    }
}

/// The RocksDB state of one processor for one input partition, one column family per store.
///
/// Writes reach it only through [`StagedWrites::apply`](crate::StagedWrites::apply) after a commit and
/// through [`restore`](Self::restore) during changelog replay. It is never trusted after an unclean
/// stop, so RocksDB's write-ahead log is switched off: it would only cost time.
pub struct PartitionState {
    dir: PathBuf,
    db_dir: PathBuf,
    db: DB,
    stores: Vec<String>,
    checkpoint: Checkpoint,
    write_options: WriteOptions,
}

impl std::fmt::Debug for PartitionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionState")
            .field("dir", &self.dir)
            .field("stores", &self.stores)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl PartitionState {
    /// Opens (creating if needed) the state in `dir` with one column family per store, and says how
    /// to restore it.
    ///
    /// Without a `CLEAN` marker from a previous [`close`](Self::close) the database and checkpoint in
    /// `dir` are deleted first and the answer is [`Restore::Full`]. With one, the marker is removed
    /// (so that a crash from now on is detected) and the answer is [`Restore::From`] the checkpoint.
    /// Stores that the database has but `stores` does not name are dropped; new ones start empty
    /// and restore from the beginning of their changelog. Only `db/`, `CHECKPOINT*` and `CLEAN`
    /// inside `dir` are ever deleted.
    pub fn open(
        dir: impl AsRef<Path>,
        stores: &[&str],
    ) -> Result<(PartitionState, Restore), StateError> {
        let dir = dir.as_ref().to_path_buf();
        let mut names: Vec<String> = Vec::with_capacity(stores.len());
        for &store in stores {
            check_store_name(store)?;
            if names.iter().any(|n| n == store) {
                return Err(StateError::InvalidStoreName {
                    name: store.to_owned(),
                    reason: "named twice",
                });
            }
            names.push(store.to_owned());
        }
        fs::create_dir_all(&dir).map_err(io_error("creating state directory", &dir))?;
        let db_dir = dir.join(DB_DIR);
        let clean_path = dir.join(CLEAN_MARKER);
        let clean = exists(&clean_path)?;
        let db_exists = exists(&db_dir)?;

        let restore = if !db_exists {
            Restore::Full(FullRestoreCause::NoLocalState)
        } else if !clean {
            Restore::Full(FullRestoreCause::UncleanStop)
        } else {
            match read_checkpoint(&dir)? {
                Some(checkpoint) => Restore::From(checkpoint),
                None => Restore::Full(FullRestoreCause::BadCheckpoint),
            }
        };

        let (db, restore) = match restore {
            Restore::From(checkpoint) => match open_db(&db_dir, &names) {
                Ok(db) => (db, Restore::From(checkpoint)),
                Err(error) if is_lock_error(&error) => {
                    return Err(StateError::Locked {
                        path: db_dir,
                        source: error,
                    })
                }
                Err(_) => {
                    wipe(&dir)?;
                    let db = open_db(&db_dir, &names)
                        .map_err(rocks_error("creating database", &db_dir))?;
                    (db, Restore::Full(FullRestoreCause::UnreadableDatabase))
                }
            },
            Restore::Full(cause) => {
                if db_exists && !clean {
                    // Never wipe a database that a live owner holds: RocksDB's lock says if there is one.
                    match open_db(&db_dir, &names) {
                        Err(error) if is_lock_error(&error) => {
                            return Err(StateError::Locked {
                                path: db_dir,
                                source: error,
                            })
                        }
                        other => drop(other),
                    }
                }
                wipe(&dir)?;
                let db =
                    open_db(&db_dir, &names).map_err(rocks_error("creating database", &db_dir))?;
                (db, Restore::Full(cause))
            }
        };

        if clean {
            // Gone already if the state was wiped above.
            remove_if_exists(&clean_path, "removing clean marker")?;
            sync_dir(&dir)?;
        }
        let checkpoint = match &restore {
            Restore::From(checkpoint) => checkpoint.clone(),
            Restore::Full(_) => Checkpoint::default(),
        };
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        let state = PartitionState {
            dir,
            db_dir,
            db,
            stores: names,
            checkpoint,
            write_options,
        };
        Ok((state, restore))
    }

    /// The partition state directory given to [`open`](Self::open).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stores, in the order given to [`open`](Self::open).
    pub fn stores(&self) -> impl Iterator<Item = &str> {
        self.stores.iter().map(String::as_str)
    }

    /// The offsets last passed to [`write_checkpoint`](Self::write_checkpoint), or read on open.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The committed value of `key` in `store`: staged writes are not seen (use
    /// [`StateView`](crate::StateView) for that).
    pub fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let cf = self.column_family(store)?;
        self.db
            .get_cf(cf, key)
            .map_err(rocks_error("reading", &self.db_dir))
    }

    /// Every committed entry of `store` whose key starts with `prefix`, in key order.
    pub fn entries_with_prefix(
        &self,
        store: &str,
        prefix: &[u8],
    ) -> Result<Vec<Entry>, StateError> {
        let cf = self.column_family(store)?;
        let mut iter = self.db.raw_iterator_cf(cf);
        iter.seek(prefix);
        let mut entries = Vec::new();
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if !key.starts_with(prefix) {
                break;
            }
            entries.push((key.to_vec(), value.to_vec()));
            iter.next();
        }
        iter.status()
            .map_err(rocks_error("scanning", &self.db_dir))?;
        Ok(entries)
    }

    /// Applies one changelog record during replay: a value is a put, `None` (a tombstone) a delete.
    pub fn restore(&self, store: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), StateError> {
        let cf = self.column_family(store)?;
        let result = match value {
            Some(value) => self.db.put_cf_opt(cf, key, value, &self.write_options),
            None => self.db.delete_cf_opt(cf, key, &self.write_options),
        };
        result.map_err(rocks_error("restoring a changelog record", &self.db_dir))
    }

    /// Records the changelog offsets (next offset to read, per store) that the applied state now
    /// reflects. Call it after [`StagedWrites::apply`](crate::StagedWrites::apply) for each commit,
    /// and once a replay has reached the end of the changelog.
    ///
    /// The file is replaced atomically (write, then rename) but not synced: it is only trusted after
    /// [`close`](Self::close), which syncs it.
    pub fn write_checkpoint(&mut self, offsets: &BTreeMap<String, i64>) -> Result<(), StateError> {
        for (store, &offset) in offsets {
            self.column_family(store)?;
            if offset < 0 {
                return Err(StateError::NegativeOffset {
                    store: store.clone(),
                    offset,
                });
            }
        }
        self.checkpoint = Checkpoint {
            offsets: offsets.clone(),
        };
        self.persist_checkpoint(false)
    }

    /// Shuts down cleanly: flushes every store to disk, writes the checkpoint, then the `CLEAN`
    /// marker, each synced, so the next [`open`](Self::open) keeps the state. Dropping a
    /// `PartitionState` without `close` makes the next open discard it.
    pub fn close(self) -> Result<(), StateError> {
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        for store in &self.stores {
            let cf = self.column_family(store)?;
            self.db
                .flush_cf_opt(cf, &flush)
                .map_err(rocks_error("flushing on close", &self.db_dir))?;
        }
        self.persist_checkpoint(true)?;
        // The marker goes last, once RocksDB has closed and released its lock.
        let PartitionState { dir, db, .. } = self;
        drop(db);
        write_synced(&dir.join(CLEAN_MARKER), b"")?;
        sync_dir(&dir)
    }

    pub(crate) fn column_family(&self, store: &str) -> Result<&ColumnFamily, StateError> {
        self.db
            .cf_handle(store)
            .filter(|_| self.stores.iter().any(|s| s == store))
            .ok_or_else(|| StateError::UnknownStore {
                store: store.to_owned(),
                path: self.dir.clone(),
            })
    }

    pub(crate) fn write_batch(&self, batch: WriteBatch) -> Result<(), StateError> {
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(rocks_error("applying staged writes", &self.db_dir))
    }

    /// Up to `limit` committed entries of `store` from `start` (inclusive) in key order.
    pub(crate) fn scan(
        &self,
        store: &str,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StateError> {
        let cf = self.column_family(store)?;
        let mut iter = self.db.raw_iterator_cf(cf);
        iter.seek(start);
        let mut entries = Vec::new();
        while entries.len() < limit {
            match (iter.key(), iter.value()) {
                (Some(key), Some(value)) => entries.push((key.to_vec(), value.to_vec())),
                _ => break,
            }
            iter.next();
        }
        iter.status()
            .map_err(rocks_error("scanning", &self.db_dir))?;
        Ok(entries)
    }

    fn persist_checkpoint(&self, sync: bool) -> Result<(), StateError> {
        let tmp = self.dir.join(CHECKPOINT_TMP);
        let path = self.dir.join(CHECKPOINT_FILE);
        let text = self.checkpoint.to_text();
        if sync {
            write_synced(&tmp, text.as_bytes())?;
        } else {
            fs::write(&tmp, text).map_err(io_error("writing checkpoint", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_error("replacing checkpoint", &path))?;
        if sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn open_db(db_dir: &Path, stores: &[String]) -> Result<DB, rocksdb::Error> {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_write_buffer_manager(&STATE_MEMORY.memtables);
    let existing = if db_dir.exists() {
        DB::list_cf(&options, db_dir).unwrap_or_default()
    } else {
        Vec::new()
    };
    let descriptors = stores
        .iter()
        .map(|store| ColumnFamilyDescriptor::new(store, store_options()))
        .chain(
            existing
                .iter()
                .filter(|cf| *cf != DEFAULT_COLUMN_FAMILY && !stores.contains(cf))
                .map(|cf| ColumnFamilyDescriptor::new(cf, store_options())),
        );
    let mut db = DB::open_cf_descriptors(&options, db_dir, descriptors)?;
    // A store the processor no longer declares: its changelog is the truth, the local copy is garbage.
    for cf in existing {
        if cf != DEFAULT_COLUMN_FAMILY && !stores.contains(&cf) {
            db.drop_cf(&cf)?;
        }
    }
    Ok(db)
}

/// Mostly point lookups, most of them misses (new events): a bloom filter answers those without
/// reading blocks. Memory comes from the process's [`StateMemory`].
fn store_options() -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_block_cache(&STATE_MEMORY.block_cache);
    let mut options = Options::default();
    options.set_write_buffer_size(MEMTABLE_BYTES);
    options.set_block_based_table_factory(&table);
    options.set_compression_type(DBCompressionType::Lz4);
    options
}

/// RocksDB reports a held lock as an I/O error on the `LOCK` file, from this process or another.
fn is_lock_error(error: &rocksdb::Error) -> bool {
    error.kind() == rocksdb::ErrorKind::IOError && error.as_ref().contains("LOCK")
}

fn wipe(dir: &Path) -> Result<(), StateError> {
    let db_dir = dir.join(DB_DIR);
    if exists(&db_dir)? {
        fs::remove_dir_all(&db_dir).map_err(io_error("discarding local state", &db_dir))?;
    }
    for name in [CHECKPOINT_FILE, CHECKPOINT_TMP, CLEAN_MARKER] {
        remove_if_exists(&dir.join(name), "discarding local state")?;
    }
    sync_dir(dir)
}

fn remove_if_exists(path: &Path, action: &'static str) -> Result<(), StateError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(StateError::Io {
            action,
            path: path.to_path_buf(),
            source: error,
        }),
        _ => Ok(()),
    }
}

/// `None` if the checkpoint is missing or not one this version wrote.
fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, StateError> {
    let path = dir.join(CHECKPOINT_FILE);
    match fs::read(&path) {
        Ok(bytes) => Ok(std::str::from_utf8(&bytes)
            .ok()
            .and_then(Checkpoint::from_text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(StateError::Io {
            action: "reading checkpoint",
            path,
            source: error,
        }),
    }
}

fn exists(path: &Path) -> Result<bool, StateError> {
    path.try_exists().map_err(io_error("checking", path))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let mut file = fs::File::create(path).map_err(io_error("creating", path))?;
    file.write_all(bytes).map_err(io_error("writing", path))?;
    file.sync_all().map_err(io_error("syncing", path))
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StateError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("syncing directory", dir))
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io {
        action,
        path,
        source,
    }
}

pub(crate) fn rocks_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(rocksdb::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::RocksDb {
        action,
        path,
        source,
    }
}
