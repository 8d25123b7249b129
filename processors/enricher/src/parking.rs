//! Parked events in partition state. Each customer's parked events form a queue, each event
//! under a key of its own, so parking appends one event and a release or expiry reads only the
//! events it moves: a customer whose master data is late by thousands of events costs the same
//! per event as one late by a few. An index holds when each queue's head was parked, and one
//! more key the earliest of those, so that the check for expired events, made on every record,
//! reads a single number until something is due.

use std::collections::{BTreeMap, VecDeque};

use backbone_core::{ProcessError, State};
use serde::{Deserialize, Serialize};

/// Queues and their events.
pub(crate) const PARKED: &str = "parked";
/// The index of queue heads, and the earliest of them.
pub(crate) const PARKED_INDEX: &str = "parked_index";
const HEADS_KEY: &[u8] = b"heads";
const EARLIEST_KEY: &[u8] = b"earliest";

/// A usage event waiting for its master data, with everything its dead letter would need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Parked {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Vec<u8>,
    /// JSON in state: a null header value is `null`; events parked before nulls were kept read
    /// their values as present.
    pub(crate) headers: Vec<backbone_core::Header>,
    pub(crate) reason: String,
    pub(crate) detail: String,
    pub(crate) parked_at_ms: i64,
    /// The wall clock when it was parked; 0 for an event parked before this was kept.
    #[serde(default)]
    pub(crate) parked_at_wall_ms: i64,
}

/// One customer's queue: the sequence number of its head and when each event was parked.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Queue {
    first: u64,
    parked_at_ms: VecDeque<i64>,
}

fn event_key(customer: &str, seq: u64) -> Vec<u8> {
    format!("{customer}\0{seq:020}").into_bytes()
}

fn queue(state: &State<'_>, customer: &str) -> Result<Option<Queue>, ProcessError> {
    state.get_json(PARKED, customer.as_bytes())
}

/// Whether `customer` has events waiting.
pub(crate) fn has_parked(state: &State<'_>, customer: &str) -> Result<bool, ProcessError> {
    Ok(state.get(PARKED, customer.as_bytes())?.is_some())
}

/// Queues `event` behind the customer's earlier parked events.
pub(crate) fn park(
    state: &mut State<'_>,
    customer: &str,
    event: &Parked,
) -> Result<(), ProcessError> {
    let mut queue = queue(state, customer)?.unwrap_or_default();
    let seq = queue.first + queue.parked_at_ms.len() as u64;
    state.put_json(PARKED, &event_key(customer, seq), event)?;
    queue.parked_at_ms.push_back(event.parked_at_ms);
    state.put_json(PARKED, customer.as_bytes(), &queue)?;
    if queue.parked_at_ms.len() == 1 {
        set_head(state, customer, Some(event.parked_at_ms))?;
    }
    Ok(())
}

/// The customer's oldest parked event.
pub(crate) fn head(state: &State<'_>, customer: &str) -> Result<Option<Parked>, ProcessError> {
    let Some(queue) = queue(state, customer)? else {
        return Ok(None);
    };
    state.get_json(PARKED, &event_key(customer, queue.first))
}

/// Stores a changed head (a new reason to wait) in place.
pub(crate) fn replace_head(
    state: &mut State<'_>,
    customer: &str,
    event: &Parked,
) -> Result<(), ProcessError> {
    if let Some(queue) = queue(state, customer)? {
        state.put_json(PARKED, &event_key(customer, queue.first), event)?;
    }
    Ok(())
}

/// Removes the customer's oldest parked event, once it was enriched or dead-lettered. Call
/// [`refresh_head`] after the last removal of a run.
pub(crate) fn pop_head(state: &mut State<'_>, customer: &str) -> Result<(), ProcessError> {
    let Some(mut queue) = queue(state, customer)? else {
        return Ok(());
    };
    state.delete(PARKED, &event_key(customer, queue.first))?;
    queue.first += 1;
    queue.parked_at_ms.pop_front();
    if queue.parked_at_ms.is_empty() {
        state.delete(PARKED, customer.as_bytes())
    } else {
        state.put_json(PARKED, customer.as_bytes(), &queue)
    }
}

/// Brings the index in step with the customer's queue after removals.
pub(crate) fn refresh_head(state: &mut State<'_>, customer: &str) -> Result<(), ProcessError> {
    let head = queue(state, customer)?.and_then(|q| q.parked_at_ms.front().copied());
    set_head(state, customer, head)
}

/// Every customer with events waiting.
pub(crate) fn customers(state: &State<'_>) -> Result<Vec<String>, ProcessError> {
    let heads: BTreeMap<String, i64> = state.get_json(PARKED_INDEX, HEADS_KEY)?.unwrap_or_default();
    Ok(heads.into_keys().collect())
}

/// Customers whose oldest parked event was parked at or before `cutoff_ms`.
pub(crate) fn due(state: &State<'_>, cutoff_ms: i64) -> Result<Vec<String>, ProcessError> {
    let earliest: Option<i64> = state.get_json(PARKED_INDEX, EARLIEST_KEY)?;
    if earliest.is_none_or(|at| at > cutoff_ms) {
        return Ok(Vec::new());
    }
    let heads: BTreeMap<String, i64> = state.get_json(PARKED_INDEX, HEADS_KEY)?.unwrap_or_default();
    Ok(heads
        .into_iter()
        .filter(|(_, at)| *at <= cutoff_ms)
        .map(|(customer, _)| customer)
        .collect())
}

/// Records when the customer's head was parked (`None`: its queue is empty).
fn set_head(state: &mut State<'_>, customer: &str, at: Option<i64>) -> Result<(), ProcessError> {
    let mut heads: BTreeMap<String, i64> =
        state.get_json(PARKED_INDEX, HEADS_KEY)?.unwrap_or_default();
    match at {
        Some(at) => heads.insert(customer.to_owned(), at),
        None => heads.remove(customer),
    };
    match heads.values().min() {
        Some(earliest) => {
            state.put_json(PARKED_INDEX, EARLIEST_KEY, earliest)?;
            state.put_json(PARKED_INDEX, HEADS_KEY, &heads)
        }
        None => {
            state.delete(PARKED_INDEX, EARLIEST_KEY)?;
            state.delete(PARKED_INDEX, HEADS_KEY)
        }
    }
}
