//! A partition's changelog: what one write is, how the writes of consecutive inputs are
//! gathered into one flush, and how a restore reads them back.
//!
//! Every store of a processor writes to one compacted topic, `<group>.changelog`, partition `n`
//! holding partition `n`'s state. A restore applies writes only up to the last one marked as
//! ending an input (or a batch of inputs): what a crash cut short is left out, and its inputs,
//! uncommitted, are processed again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::oneshot;

use backbone_state::PartitionState;

use crate::kafka::is_connection_lost;
use crate::processor::OutputRecord;
use crate::runner::RuntimeError;
use crate::state::StateFailure;

/// Header of the write that ends an input, or a batch of consecutive inputs: it and the
/// writes before it count.
pub const INPUT_END: &str = "backbone.input.end";

/// Key of the record that ended each input's writes in changelogs written before
/// [`INPUT_END`] (one record more per input); a restore still honours it, so state written
/// by an earlier version is kept. No store key starts with a NUL byte.
const COMMIT_MARKER: &[u8] = b"\0commit";

/// The most consecutive inputs of a partition one flush covers: their offsets are stored
/// only once it is acknowledged.
const MAX_BATCH_INPUTS: usize = 1_000;

/// A store's key in the shared changelog: the store name, a NUL byte, the key.
pub(crate) fn changelog_key(store: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(store.len() + 1 + key.len());
    out.extend_from_slice(store.as_bytes());
    out.push(0);
    out.extend_from_slice(key);
    out
}

/// One state change to produce to a changelog partition.
#[derive(Debug, Clone)]
pub(crate) struct ChangelogWrite {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Vec<u8>>,
    /// The last write of its input or batch: produced with the [`INPUT_END`] header.
    pub(crate) ends_input: bool,
}

/// What an input waiting on a flush hears.
#[derive(Debug)]
pub(crate) enum Heard {
    /// The batch holding its writes was acknowledged (or dropped with its partition).
    Done,
    /// It is the last input of the batch gathered while the one before was on its way: it
    /// produces it ([`Ownership::take_flush`](crate::state::Ownership::take_flush)).
    FlushNow,
}

/// What the inputs waiting on a flush hear, or why it failed.
type Flushed = oneshot::Sender<Result<Heard, RuntimeError>>;

/// The writes of a partition's consecutive inputs (effectively-once) not yet produced: each
/// key once, at its newest value, since the batch is restored whole or not at all; and the
/// same for their table outputs (a table topic's readers need only each key's newest
/// record). An input joins at its turn (consumption order) and waits while more of the
/// partition's inputs are in flight behind it, or while the partition's last flush is on its
/// way to the broker (a group commit: the inputs arriving meanwhile make the next batch, which
/// the last of them produces once that flush is acknowledged); otherwise it flushes for all.
#[derive(Default)]
pub(crate) struct Batch {
    writes: Vec<ChangelogWrite>,
    at: HashMap<Vec<u8>, usize>,
    table: Vec<OutputRecord>,
    table_at: HashMap<(String, Vec<u8>), usize>,
    inputs: usize,
    waiting: Vec<Flushed>,
    /// A flush of this partition is on its way and not acknowledged yet.
    flushing: bool,
}

/// What an input does with its changelog writes at its turn.
pub(crate) enum Turn {
    /// Nothing to produce and no earlier input waiting: its offset may be stored now.
    Free,
    /// Joined a batch a later input flushes: its offset waits for that.
    Wait {
        flushed: oneshot::Receiver<Result<Heard, RuntimeError>>,
        topic: String,
    },
    /// Produces the batch (the last write marked as its end), then tells those waiting.
    Flush(Flush),
}

impl Batch {
    /// Adds an input's changelog `writes` and keyed `table` outputs; `behind` counts the
    /// partition's inputs in flight whose turn is still to come.
    pub(crate) fn join(
        &mut self,
        writes: Vec<ChangelogWrite>,
        table: Vec<OutputRecord>,
        behind: usize,
    ) -> Turn {
        if writes.is_empty() && table.is_empty() && self.inputs == 0 {
            return Turn::Free;
        }
        for write in writes {
            match self.at.get(&write.key) {
                Some(&at) => self.writes[at].value = write.value,
                None => {
                    self.at.insert(write.key.clone(), self.writes.len());
                    self.writes.push(write);
                }
            }
        }
        for record in table {
            let key = (record.topic.clone(), record.key.clone().unwrap_or_default());
            match self.table_at.get(&key) {
                Some(&at) => self.table[at] = record,
                None => {
                    self.table_at.insert(key, self.table.len());
                    self.table.push(record);
                }
            }
        }
        self.inputs += 1;
        // While a flush is on its way the next one waits for it, however large it grows (the
        // loop's in-flight limit bounds it): two flushes of a partition on their way at once
        // could reach the broker out of order and leave an older value last.
        if self.flushing || (behind > 0 && self.inputs < MAX_BATCH_INPUTS) {
            let (tx, rx) = oneshot::channel();
            self.waiting.push(tx);
            return Turn::Wait {
                flushed: rx,
                topic: first_topic(&self.writes, &self.table),
            };
        }
        Turn::Flush(self.take())
    }

    /// What is gathered, as a flush on its way.
    pub(crate) fn take(&mut self) -> Flush {
        let mut writes = std::mem::take(&mut self.writes);
        for write in &mut writes {
            write.ends_input = false;
        }
        if let Some(last) = writes.last_mut() {
            last.ends_input = true;
        }
        let flush = Flush {
            writes,
            table: std::mem::take(&mut self.table),
            waiting: std::mem::take(&mut self.waiting),
        };
        self.at.clear();
        self.table_at.clear();
        self.inputs = 0;
        self.flushing = true;
        flush
    }

    /// A flush was acknowledged: the inputs gathered meanwhile are handed to the last of them
    /// to produce, or, with none, the next input flushes on its own.
    pub(crate) fn flushed(&mut self) {
        while let Some(last) = self.waiting.pop() {
            if last.send(Ok(Heard::FlushNow)).is_ok() {
                return;
            }
        }
        self.flushing = false;
    }

    /// Drops what is gathered (the partition was revoked; its next owner restores from the
    /// changelog and processes the uncommitted inputs again, table outputs and all) and lets
    /// the inputs waiting go, uncommitted. Whether changelog writes were dropped.
    pub(crate) fn abandon(&mut self) -> bool {
        let dropped = !self.writes.is_empty();
        for waiting in self.waiting.drain(..) {
            let _ = waiting.send(Ok(Heard::Done));
        }
        self.writes.clear();
        self.at.clear();
        self.table.clear();
        self.table_at.clear();
        self.inputs = 0;
        self.flushing = false;
        dropped
    }
}

/// A topic a batch writes to, to name in an error.
fn first_topic(writes: &[ChangelogWrite], table: &[OutputRecord]) -> String {
    writes
        .first()
        .map(|w| &w.topic)
        .or_else(|| table.first().map(|r| &r.topic))
        .cloned()
        .unwrap_or_default()
}

/// A batch to produce and the inputs waiting for it.
pub(crate) struct Flush {
    pub(crate) writes: Vec<ChangelogWrite>,
    pub(crate) table: Vec<OutputRecord>,
    waiting: Vec<Flushed>,
}

impl Flush {
    /// Tells the inputs waiting how it went.
    pub(crate) fn done(self, result: &Result<(), RuntimeError>) {
        for waiting in self.waiting {
            let heard = match result {
                Ok(()) => Ok(Heard::Done),
                Err(RuntimeError::Produce { topic, source }) => Err(RuntimeError::Produce {
                    topic: topic.clone(),
                    source: source.clone(),
                }),
                // Producing a batch fails only as a produce does.
                Err(_) => Err(RuntimeError::Produce {
                    topic: first_topic(&self.writes, &self.table),
                    source: KafkaError::Canceled,
                }),
            };
            let _ = waiting.send(heard);
        }
    }
}

/// Reads `topic`'s partition from `from` to its end and applies every input's writes up to
/// the last one that ends an input ([`INPUT_END`], or an older changelog's commit marker);
/// writes after it (an input cut short by a crash) are left out. Returns the next offset.
pub(crate) fn replay_changelog(
    consumer: &BaseConsumer,
    state: &PartitionState,
    topic: &str,
    partition: i32,
    from: Offset,
    timeout: Duration,
) -> Result<i64, StateFailure> {
    let deadline = Instant::now() + timeout;
    let (low, high) =
        crate::kafka::watermarks(consumer, topic, partition, timeout).map_err(|e| {
            StateFailure::Restore(format!("reading the end of `{topic}` [{partition}]: {e}"))
        })?;
    let start = match from {
        Offset::Offset(offset) => offset.max(low),
        _ => low,
    };
    if start >= high {
        return Ok(high);
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(StateFailure::Kafka)?;
    consumer.assign(&list).map_err(StateFailure::Kafka)?;
    let mut pending: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut apply = |message: &BorrowedMessage<'_>| -> Result<(), StateFailure> {
        let key = message.key().unwrap_or_default();
        if key != COMMIT_MARKER {
            pending.push((key.to_vec(), message.payload().map(<[u8]>::to_vec)));
        }
        let ends = key == COMMIT_MARKER
            || message
                .headers()
                .is_some_and(|headers| headers.iter().any(|h| h.key == INPUT_END));
        if ends {
            for (key, value) in pending.drain(..) {
                let at = key.iter().position(|b| *b == 0).unwrap_or(0);
                let store = std::str::from_utf8(&key[..at]).map_err(|_| {
                    StateFailure::Restore(format!("`{topic}` holds a key without a store"))
                })?;
                state.restore(store, &key[at + 1..], value.as_deref())?;
            }
        }
        Ok(())
    };
    let mut next = start;
    let mut replayed = 0u64;
    while next < high {
        if Instant::now() > deadline {
            return Err(StateFailure::Restore(format!(
                "restoring `{topic}` [{partition}] did not reach offset {high} within {timeout:?} (at {next})"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                apply(&message)?;
                next = message.offset() + 1;
                replayed += 1;
            }
            Some(Err(err)) if is_connection_lost(&err) => {
                tracing::warn!(%topic, partition, error = %err, "broker unreachable while restoring; waiting for it until the restore timeout");
            }
            Some(Err(err)) => {
                return Err(StateFailure::Restore(format!(
                    "reading `{topic}` [{partition}] at {next}: {err}"
                )))
            }
            None => {
                // Transaction markers and aborted records are never returned: follow the position.
                if let Ok(position) = consumer.position() {
                    if let Some(Offset::Offset(at)) = position
                        .find_partition(topic, partition)
                        .map(|e| e.offset())
                    {
                        next = next.max(at);
                    }
                }
            }
        }
    }
    // Some brokers under-report the end as the first offset of the last batch: take the rest of
    // a batch the client already fetched.
    while let Some(Ok(message)) = consumer.poll(Duration::ZERO) {
        apply(&message)?;
        next = message.offset() + 1;
        replayed += 1;
    }
    consumer.unassign().map_err(StateFailure::Kafka)?;
    tracing::debug!(topic, partition, replayed, next, "changelog replayed");
    Ok(next.max(high))
}
