//! Writes staged by `process`, their changelog records, and reads that see them.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use rocksdb::WriteBatch;

use crate::{Entry, PartitionState, StateError};

/// The state writes of one uncommitted batch, per store.
///
/// Writes to the same key are coalesced: the last one wins, and it keeps the position of the first.
/// So [`changelog_records`](Self::changelog_records) holds one record per key, in a deterministic
/// order, and replaying them gives the same state as applying them.
#[derive(Debug, Default, Clone)]
pub struct StagedWrites {
    /// Store names, in the order first written.
    stores: Vec<String>,
    /// Per entry of `stores`: key to position in `writes`.
    index: Vec<HashMap<Vec<u8>, usize>>,
    writes: Vec<Staged>,
}

#[derive(Debug, Clone)]
struct Staged {
    store: usize,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

/// One state change for the runtime to produce to `<processor>.<store>.changelog`: key and value as
/// they are, `None` as a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangelogRecord<'a> {
    /// The store, which names the changelog topic.
    pub store: &'a str,
    /// The record key.
    pub key: &'a [u8],
    /// The record value; `None` is a delete (tombstone).
    pub value: Option<&'a [u8]>,
}

/// What a batch has staged for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagedValue<'a> {
    /// Set to this value.
    Put(&'a [u8]),
    /// Deleted.
    Delete,
}

impl StagedWrites {
    /// No writes.
    pub fn new() -> StagedWrites {
        StagedWrites::default()
    }

    /// Stages `key = value` in `store`.
    pub fn put(&mut self, store: &str, key: &[u8], value: &[u8]) {
        self.stage(store, key, Some(value.to_vec()));
    }

    /// Stages the deletion of `key` from `store`.
    pub fn delete(&mut self, store: &str, key: &[u8]) {
        self.stage(store, key, None);
    }

    /// What is staged for `key` in `store`, if anything.
    pub fn staged(&self, store: &str, key: &[u8]) -> Option<StagedValue<'_>> {
        let store = self.stores.iter().position(|s| s == store)?;
        let &at = self.index[store].get(key)?;
        Some(match &self.writes[at].value {
            Some(value) => StagedValue::Put(value),
            None => StagedValue::Delete,
        })
    }

    /// The changelog records of the staged writes, one per (store, key), in the order keys were first
    /// staged.
    pub fn changelog_records(&self) -> impl ExactSizeIterator<Item = ChangelogRecord<'_>> + '_ {
        self.writes.iter().map(|w| ChangelogRecord {
            store: &self.stores[w.store],
            key: &w.key,
            value: w.value.as_deref(),
        })
    }

    /// What is staged in `store` for keys starting with `prefix`, in the order first staged.
    fn staged_with_prefix<'s>(
        &'s self,
        store: &str,
        prefix: &'s [u8],
    ) -> impl Iterator<Item = (&'s [u8], StagedValue<'s>)> + 's {
        let store = self.stores.iter().position(|s| s == store);
        self.writes
            .iter()
            .filter(move |w| Some(w.store) == store && w.key.starts_with(prefix))
            .map(|w| {
                let value = match &w.value {
                    Some(value) => StagedValue::Put(value),
                    None => StagedValue::Delete,
                };
                (w.key.as_slice(), value)
            })
    }

    /// The number of staged writes (after coalescing).
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Forgets every staged write, e.g. after an aborted transaction.
    pub fn clear(&mut self) {
        self.writes.clear();
        self.index.iter_mut().for_each(HashMap::clear);
    }

    /// Writes everything staged to `state` in one atomic RocksDB write batch, then clears. Call it
    /// only after the commit that carried [`changelog_records`](Self::changelog_records) succeeded.
    /// On error nothing is cleared and the state must be treated as lost (drop it without `close`).
    pub fn apply(&mut self, state: &PartitionState) -> Result<(), StateError> {
        // Column families looked up once per store; stores only remembered from earlier batches
        // (no key staged now) are not looked up, so a store refused once does not fail every batch.
        let cfs = self
            .stores
            .iter()
            .zip(&self.index)
            .map(|(store, keys)| {
                if keys.is_empty() {
                    Ok(None)
                } else {
                    state.column_family(store).map(Some)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut batch = WriteBatch::default();
        for write in &self.writes {
            // Every write has its key in its store's index, so its column family was looked up.
            let Some(cf) = cfs[write.store] else { continue };
            match &write.value {
                Some(value) => batch.put_cf(cf, &write.key, value),
                None => batch.delete_cf(cf, &write.key),
            }
        }
        state.write_batch(batch)?;
        self.clear();
        Ok(())
    }

    fn stage(&mut self, store: &str, key: &[u8], value: Option<Vec<u8>>) {
        let store = match self.stores.iter().position(|s| s == store) {
            Some(at) => at,
            None => {
                self.stores.push(store.to_owned());
                self.index.push(HashMap::new());
                self.stores.len() - 1
            }
        };
        match self.index[store].get(key) {
            Some(&at) => self.writes[at].value = value,
            None => {
                self.index[store].insert(key.to_vec(), self.writes.len());
                self.writes.push(Staged {
                    store,
                    key: key.to_vec(),
                    value,
                });
            }
        }
    }
}

/// What `process` sees and changes: committed state overlaid with the batch's staged writes.
/// Reads see the batch's own writes; writes are only staged.
#[derive(Debug)]
pub struct StateView<'a> {
    state: &'a PartitionState,
    staged: &'a mut StagedWrites,
}

impl<'a> StateView<'a> {
    /// A view of `state` through `staged`.
    pub fn new(state: &'a PartitionState, staged: &'a mut StagedWrites) -> StateView<'a> {
        StateView { state, staged }
    }

    /// The value of `key` in `store` as this batch sees it: staged if staged, else committed.
    pub fn get(&self, store: &str, key: &[u8]) -> Result<Option<Cow<'_, [u8]>>, StateError> {
        match self.staged.staged(store, key) {
            Some(StagedValue::Put(value)) => {
                // Still refuse a store the state does not have, as a committed read would.
                self.state.column_family(store)?;
                Ok(Some(Cow::Borrowed(value)))
            }
            Some(StagedValue::Delete) => {
                self.state.column_family(store)?;
                Ok(None)
            }
            None => Ok(self.state.get(store, key)?.map(Cow::Owned)),
        }
    }

    /// Every entry of `store` whose key starts with `prefix`, as this batch sees it, in key
    /// order: the committed ones with the batch's own writes and deletes laid over them.
    pub fn entries_with_prefix(
        &self,
        store: &str,
        prefix: &[u8],
    ) -> Result<Vec<Entry>, StateError> {
        let mut entries: BTreeMap<Vec<u8>, Vec<u8>> = self
            .state
            .entries_with_prefix(store, prefix)?
            .into_iter()
            .collect();
        for (key, value) in self.staged.staged_with_prefix(store, prefix) {
            match value {
                StagedValue::Put(value) => entries.insert(key.to_vec(), value.to_vec()),
                StagedValue::Delete => entries.remove(key),
            };
        }
        Ok(entries.into_iter().collect())
    }

    /// Stages `key = value` in `store`.
    pub fn put(&mut self, store: &str, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.state.column_family(store)?;
        self.staged.put(store, key, value);
        Ok(())
    }

    /// Stages the deletion of `key` from `store`.
    pub fn delete(&mut self, store: &str, key: &[u8]) -> Result<(), StateError> {
        self.state.column_family(store)?;
        self.staged.delete(store, key);
        Ok(())
    }

    /// The committed state underneath.
    pub fn state(&self) -> &'a PartitionState {
        self.state
    }

    /// The staged writes on top.
    pub fn staged(&self) -> &StagedWrites {
        self.staged
    }
}
