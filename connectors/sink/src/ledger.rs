//! The delivery ledger: per idempotency key, where its delivery stands, in a RocksDB database
//! local to the sink instance.
//!
//! It is what lets a sink answer a replay without a request, and what a journal sink numbers
//! its adjustment batches from. It is not the only guard: the billing and ERP sinks ask their
//! destination by business identity before they create, and the CRM keeps the newest `as_of`
//! per account, so a ledger lost with its disk costs requests, never double postings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backbone_calendar::now_ms;
use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

const DELIVERY_PREFIX: &[u8] = b"d/";
const MEMBER_PREFIX: &[u8] = b"m/";
/// One memtable; with at most two, the ledger's unflushed writes stay under 16 MiB. RocksDB's
/// default of 64 MiB each let a sink's memory climb for minutes with no backlog behind it.
const MEMTABLE_BYTES: usize = 8 << 20;
/// Blocks read back from disk: lookups are of recent keys, mostly still in the memtables.
const BLOCK_CACHE_BYTES: usize = 8 << 20;

/// Why the ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// RocksDB refused (another instance holds the directory, a full disk, ...).
    #[error("delivery ledger at `{path}`: {source}")]
    Store {
        /// The ledger directory.
        path: PathBuf,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// An entry could not be read back.
    #[error("delivery ledger at `{path}`: entry `{key}` is unreadable: {message}")]
    Corrupt {
        /// The ledger directory.
        path: PathBuf,
        /// The entry's key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Where one delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt after a failed one.
    Pending,
    /// Sent; the answer is not known yet (a crash here re-sends under the same key).
    InFlight,
    /// The destination accepted it, now or before.
    Confirmed,
    /// The destination refused it for good; its records went to the dead-letter topic. A
    /// replay of them is sent again.
    Rejected,
}

/// One delivery's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made so far, over every run.
    pub attempts: u32,
    /// The destination's id for it, once confirmed.
    pub reference: Option<String>,
    /// The destination's error code, when rejected or last failed.
    pub error_code: Option<String>,
    /// The destination's message, when rejected or last failed.
    pub error_message: Option<String>,
    /// When the entry was last written, milliseconds since the epoch.
    pub updated_at_ms: i64,
}

impl LedgerEntry {
    /// An entry in `state` after `attempts`, stamped now.
    pub fn new(state: DeliveryState, attempts: u32) -> Self {
        Self {
            state,
            attempts,
            reference: None,
            error_code: None,
            error_message: None,
            updated_at_ms: now_ms(),
        }
    }
}

/// The ledger of one sink instance.
pub struct DeliveryLedger {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for DeliveryLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryLedger")
            .field("path", &self.path)
            .finish()
    }
}

impl DeliveryLedger {
    /// Opens or creates the ledger at `path`. Fails while another process has it open.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let mut table = BlockBasedOptions::default();
        // Most lookups are of keys never delivered: the filter answers them without a read.
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES));
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_write_buffer_size(MEMTABLE_BYTES);
        options.set_max_write_buffer_number(2);
        options.set_block_based_table_factory(&table);
        options.set_compression_type(DBCompressionType::Lz4);
        let db = DB::open(&options, path).map_err(|source| LedgerError::Store {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    /// Where the ledger lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry of delivery `key`, if it was ever attempted.
    pub fn get(&self, key: &str) -> Result<Option<LedgerEntry>, LedgerError> {
        self.read_json(DELIVERY_PREFIX, key)
    }

    /// The confirmed delivery that holds item `id`, if any.
    pub fn member(&self, id: &str) -> Result<Option<String>, LedgerError> {
        let raw = self
            .db
            .get(prefixed(MEMBER_PREFIX, id))
            .map_err(|source| self.store_error(source))?;
        Ok(raw.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Writes `entries` and `members` (item id → delivery key) atomically. With `durable` the
    /// write is synced to disk before it returns: outcomes are, since offsets follow them.
    pub fn write(
        &self,
        entries: &[(&str, &LedgerEntry)],
        members: &[(&str, &str)],
        durable: bool,
    ) -> Result<(), LedgerError> {
        let mut batch = self.entries_batch(entries)?;
        for (id, key) in members {
            batch.put(prefixed(MEMBER_PREFIX, id), key.as_bytes());
        }
        self.commit(batch, durable)
    }

    fn entries_batch(&self, entries: &[(&str, &LedgerEntry)]) -> Result<WriteBatch, LedgerError> {
        let mut batch = WriteBatch::default();
        for (key, entry) in entries {
            batch.put(prefixed(DELIVERY_PREFIX, key), self.to_json(key, entry)?);
        }
        Ok(batch)
    }

    /// The value under `prefix` + `key`, read back from JSON.
    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        key: &str,
    ) -> Result<Option<T>, LedgerError> {
        let raw = self
            .db
            .get(prefixed(prefix, key))
            .map_err(|source| self.store_error(source))?;
        raw.map(|bytes| serde_json::from_slice(&bytes).map_err(|err| self.corrupt(key, &err)))
            .transpose()
    }

    /// `value` as JSON for the entry `key`.
    fn to_json<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, LedgerError> {
        serde_json::to_vec(value).map_err(|err| self.corrupt(key, &err))
    }

    fn corrupt(&self, key: &str, err: &serde_json::Error) -> LedgerError {
        LedgerError::Corrupt {
            path: self.path.clone(),
            key: key.to_owned(),
            message: err.to_string(),
        }
    }

    fn commit(&self, batch: WriteBatch, durable: bool) -> Result<(), LedgerError> {
        let mut options = WriteOptions::default();
        options.set_sync(durable);
        self.db
            .write_opt(batch, &options)
            .map_err(|source| self.store_error(source))
    }

    /// How many deliveries stand in each state; a full scan, for reports and tests.
    pub fn count_by_state(&self) -> Result<BTreeMap<DeliveryState, u64>, LedgerError> {
        let mut counts = BTreeMap::new();
        for item in self.db.prefix_iterator(DELIVERY_PREFIX) {
            let (key, value) = item.map_err(|source| self.store_error(source))?;
            if !key.starts_with(DELIVERY_PREFIX) {
                break;
            }
            let entry: LedgerEntry =
                serde_json::from_slice(&value).map_err(|err| LedgerError::Corrupt {
                    path: self.path.clone(),
                    key: String::from_utf8_lossy(&key).into_owned(),
                    message: err.to_string(),
                })?;
            *counts.entry(entry.state).or_default() += 1;
        }
        Ok(counts)
    }

    fn store_error(&self, source: rocksdb::Error) -> LedgerError {
        LedgerError::Store {
            path: self.path.clone(),
            source,
        }
    }
}

fn prefixed(prefix: &[u8], key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(prefix.len() + key.len());
    bytes.extend_from_slice(prefix);
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "backbone-ledger-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn entries_and_members_survive_a_reopen() {
        let dir = temp_dir("reopen");
        {
            let ledger = DeliveryLedger::open(&dir).expect("open");
            let mut confirmed = LedgerEntry::new(DeliveryState::Confirmed, 2);
            confirmed.reference = Some("JE-1".into());
            let in_flight = LedgerEntry::new(DeliveryState::InFlight, 1);
            ledger
                .write(
                    &[("jb-1", &confirmed), ("jb-2", &in_flight)],
                    &[("line-a", "jb-1")],
                    true,
                )
                .expect("write");
        }
        let ledger = DeliveryLedger::open(&dir).expect("reopen");
        let entry = ledger.get("jb-1").expect("read").expect("present");
        assert_eq!(entry.state, DeliveryState::Confirmed);
        assert_eq!(entry.reference.as_deref(), Some("JE-1"));
        assert_eq!(
            ledger.member("line-a").expect("read").as_deref(),
            Some("jb-1")
        );
        assert_eq!(ledger.member("line-b").expect("read"), None);
        assert_eq!(ledger.get("jb-3").expect("read"), None);
        let counts = ledger.count_by_state().expect("scan");
        assert_eq!(counts.get(&DeliveryState::Confirmed), Some(&1));
        assert_eq!(counts.get(&DeliveryState::InFlight), Some(&1));
    }

    #[test]
    fn a_second_instance_cannot_open_the_same_ledger() {
        let dir = temp_dir("lock");
        let _first = DeliveryLedger::open(&dir).expect("open");
        let err = DeliveryLedger::open(&dir).expect_err("locked");
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
    }
}
