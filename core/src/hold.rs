//! Records of a paused tenant, held in partition state until it is resumed.
//!
//! A processor's store [`HOLD_STORE`] (its changelog is the processor's) keeps one queue per
//! tenant: each record under `r\0<tenant>\0<seq>`, the queue's ends and its head's hold time
//! under `q\0<tenant>`, and the tenants with a queue under `tenants`. A record is held when its
//! tenant is paused here, or still has records held (a resumed tenant drains before its new
//! records go through, so its order is kept). Holding is one more state write of the input;
//! its offset commits as any input's, so a crash loses nothing and holds nothing twice.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::dead_letter::tenant_of_key;
use crate::processor::{Header, InputRecord, ProcessError};
use crate::state::State;
use crate::tenant::{control_key, Held};

/// The partition store of held records.
pub(crate) const HOLD_STORE: &str = "tenant_hold";
pub(crate) use crate::tenant::CONTROLS_TABLE;
const TENANTS_KEY: &[u8] = b"tenants";

/// One tenant's queue: sequence numbers of its head and of its next record, and when the head
/// was held.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Queue {
    first: u64,
    next: u64,
    head_held_at_ms: i64,
}

/// An input as it was read, kept until its tenant is resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeldRecord {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Vec<Header>,
    pub(crate) held_at_ms: i64,
}

impl HeldRecord {
    /// The record as its processor sees an input.
    pub(crate) fn input(&self) -> InputRecord<'_> {
        InputRecord {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: &self.headers,
        }
    }
}

fn queue_key(tenant: &str) -> Vec<u8> {
    [b"q\0".as_slice(), tenant.as_bytes()].concat()
}

fn record_key(tenant: &str, seq: u64) -> Vec<u8> {
    format!("r\0{tenant}\0{seq:020}").into_bytes()
}

fn queue(state: &State<'_>, tenant: &str) -> Result<Option<Queue>, ProcessError> {
    state.get_json(HOLD_STORE, &queue_key(tenant))
}

/// The tenants with records held in this partition.
pub(crate) fn held_tenants(state: &State<'_>) -> Result<BTreeSet<String>, ProcessError> {
    Ok(state.get_json(HOLD_STORE, TENANTS_KEY)?.unwrap_or_default())
}

/// Whether `tenant` is paused at `stage`.
pub(crate) fn is_paused(
    state: &State<'_>,
    stage: &str,
    tenant: &str,
) -> Result<bool, ProcessError> {
    Ok(state
        .global(CONTROLS_TABLE, control_key(tenant, stage).as_bytes())?
        .is_some())
}

/// Holds `input` if its tenant is paused at `stage` or has records held; says whether it did.
pub(crate) fn hold_if_paused(
    state: &mut State<'_>,
    stage: &str,
    input: &InputRecord<'_>,
    now_ms: i64,
) -> Result<bool, ProcessError> {
    let Some(tenant) = tenant_of_key(input.key) else {
        return Ok(false);
    };
    let queued = queue(state, tenant)?;
    if queued.is_none() && !is_paused(state, stage, tenant)? {
        return Ok(false);
    }
    let mut queue = match queued {
        Some(queue) => queue,
        None => {
            let mut tenants = held_tenants(state)?;
            tenants.insert(tenant.to_owned());
            state.put_json(HOLD_STORE, TENANTS_KEY, &tenants)?;
            Queue {
                first: 0,
                next: 0,
                head_held_at_ms: now_ms,
            }
        }
    };
    let held = HeldRecord {
        topic: input.topic.to_owned(),
        partition: input.partition,
        offset: input.offset,
        timestamp_ms: input.timestamp_ms,
        key: input.key.map(<[u8]>::to_vec),
        value: input.value.map(<[u8]>::to_vec),
        headers: input.headers.to_vec(),
        held_at_ms: now_ms,
    };
    state.put_json(HOLD_STORE, &record_key(tenant, queue.next), &held)?;
    queue.next += 1;
    state.put_json(HOLD_STORE, &queue_key(tenant), &queue)?;
    Ok(true)
}

/// The first record held for `tenant`, unless it is paused at `stage` again.
pub(crate) fn releasable_head(
    state: &State<'_>,
    stage: &str,
    tenant: &str,
) -> Result<Option<HeldRecord>, ProcessError> {
    let Some(queue) = queue(state, tenant)? else {
        return Ok(None);
    };
    if is_paused(state, stage, tenant)? {
        return Ok(None);
    }
    state.get_json(HOLD_STORE, &record_key(tenant, queue.first))
}

/// Removes the first record held for `tenant`, once it went through.
pub(crate) fn pop_head(state: &mut State<'_>, tenant: &str) -> Result<(), ProcessError> {
    let Some(mut queue) = queue(state, tenant)? else {
        return Ok(());
    };
    state.delete(HOLD_STORE, &record_key(tenant, queue.first))?;
    queue.first += 1;
    if queue.first >= queue.next {
        state.delete(HOLD_STORE, &queue_key(tenant))?;
        let mut tenants = held_tenants(state)?;
        tenants.remove(tenant);
        return state.put_json(HOLD_STORE, TENANTS_KEY, &tenants);
    }
    let head: Option<HeldRecord> = state.get_json(HOLD_STORE, &record_key(tenant, queue.first))?;
    queue.head_held_at_ms = head.map_or(queue.head_held_at_ms, |h| h.held_at_ms);
    state.put_json(HOLD_STORE, &queue_key(tenant), &queue)
}

/// How much is held for `tenant` in this partition.
pub(crate) fn held(state: &State<'_>, tenant: &str) -> Result<Option<Held>, ProcessError> {
    Ok(queue(state, tenant)?.map(|q| Held {
        records: q.next - q.first,
        oldest_held_at_ms: q.head_held_at_ms,
    }))
}
