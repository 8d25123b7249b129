//! Input dedup: first-seen marks per idempotency key, expiring after a TTL.

use std::time::Duration;

use crate::{StateError, StateView};

/// How long a mark is kept by default: longer than the accepted lateness of any input.
pub const DEFAULT_TTL: Duration = Duration::from_secs(35 * 24 * 60 * 60);

/// What identifies one input event across redeliveries and replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdempotencyKey<'a> {
    /// The tenant the event belongs to.
    pub tenant_id: &'a str,
    /// The system that produced it.
    pub source: &'a str,
    /// Its id, unique within (tenant, source).
    pub event_id: &'a str,
}

impl IdempotencyKey<'_> {
    /// The store key: each field as its length (LEB128) then its bytes, so no two keys share an
    /// encoding whatever characters the fields hold.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.tenant_id.len() + self.source.len() + self.event_id.len() + 6);
        for field in [self.tenant_id, self.source, self.event_id] {
            push_len(&mut out, field.len());
            out.extend_from_slice(field.as_bytes());
        }
        out
    }
}

fn push_len(out: &mut Vec<u8>, mut len: usize) {
    while len >= 0x80 {
        out.push((len & 0x7f) as u8 | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
}

/// The answer of [`IdempotencyStore::check_and_stage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen within the TTL: process it (its mark is staged).
    New,
    /// Seen within the TTL: drop it and count it.
    Duplicate {
        /// When it was first seen, in microseconds since the Unix epoch.
        first_seen_micros: i64,
    },
}

/// First-seen marks in one store of a [`PartitionState`](crate::PartitionState): key =
/// [`IdempotencyKey::encode`], value = first-seen time in microseconds (big-endian `i64`).
///
/// Marks are written and expired only through staged writes, so they reach the changelog like any
/// other state. Time is always passed in, never read from the clock.
#[derive(Debug, Clone)]
pub struct IdempotencyStore {
    store: String,
    ttl: Duration,
    ttl_micros: i64,
    /// Where the next sweep starts; empty means at the first key.
    sweep_from: Vec<u8>,
}

impl IdempotencyStore {
    /// Marks in `store`, kept for `ttl` after they were first seen.
    pub fn new(store: &str, ttl: Duration) -> IdempotencyStore {
        IdempotencyStore {
            store: store.to_owned(),
            ttl,
            ttl_micros: i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX),
            sweep_from: Vec::new(),
        }
    }

    /// The store holding the marks.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// How long a mark is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether `key` was seen within the TTL before `now_micros`, in committed state or earlier in
    /// this batch. If not, stages its mark with `now_micros` as first-seen time. A duplicate's mark is
    /// left as it is: the TTL runs from the first sighting.
    pub fn check_and_stage(
        &self,
        view: &mut StateView<'_>,
        key: &IdempotencyKey<'_>,
        now_micros: i64,
    ) -> Result<Seen, StateError> {
        let encoded = key.encode();
        if let Some(value) = view.get(&self.store, &encoded)? {
            let first_seen_micros = self.decode(view, &value)?;
            if !self.is_expired(first_seen_micros, now_micros) {
                return Ok(Seen::Duplicate { first_seen_micros });
            }
        }
        view.put(&self.store, &encoded, &now_micros.to_be_bytes())?;
        Ok(Seen::New)
    }

    /// Stages deletes for expired marks among the next `limit` committed marks, continuing where the
    /// previous sweep stopped and starting over after the last key; returns how many it staged.
    /// `limit` bounds the work of one call, not the number of deletes. Marks with a write staged in
    /// this batch are left alone: the staged write is newer.
    pub fn sweep_expired(
        &mut self,
        view: &mut StateView<'_>,
        now_micros: i64,
        limit: usize,
    ) -> Result<usize, StateError> {
        if limit == 0 {
            return Ok(0);
        }
        let entries = view.state().scan(&self.store, &self.sweep_from, limit)?;
        self.sweep_from = match entries.last() {
            Some((last, _)) if entries.len() == limit => {
                // The smallest key after `last`.
                let mut next = last.clone();
                next.push(0);
                next
            }
            _ => Vec::new(),
        };
        let mut deleted = 0;
        for (key, value) in entries {
            if view.staged().staged(&self.store, &key).is_some() {
                continue;
            }
            if self.is_expired(self.decode(view, &value)?, now_micros) {
                view.delete(&self.store, &key)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    fn is_expired(&self, first_seen_micros: i64, now_micros: i64) -> bool {
        // A first-seen time in the future (clock skew between instances) counts as age zero.
        now_micros.saturating_sub(first_seen_micros) > self.ttl_micros
    }

    fn decode(&self, view: &StateView<'_>, value: &[u8]) -> Result<i64, StateError> {
        let bytes: [u8; 8] = value.try_into().map_err(|_| StateError::CorruptValue {
            store: self.store.clone(),
            path: view.state().dir().to_path_buf(),
            reason: format!(
                "expected an 8-byte first-seen time, got {} bytes",
                value.len()
            ),
        })?;
        Ok(i64::from_be_bytes(bytes))
    }
}
