//! The open transaction of an exactly-once processor: its inputs, their offsets, and what it
//! writes only at its commit.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::changelog::{ChangelogWrite, INPUT_END};
use crate::delivery::{Handled, RefusalKind, Sent, Trigger};
use crate::processor::OutputRecord;
use crate::runner::RuntimeError;

/// The open transaction of an exactly-once processor: what it holds and when it must commit.
#[derive(Debug, Default)]
pub(crate) struct Transaction {
    open: bool,
    started: Option<Instant>,
    /// Next offset to consume, per input partition.
    offsets: BTreeMap<(String, i32), i64>,
    outcomes: Vec<Handled>,
    /// The records of each input in `outcomes` (by index): read only when the commit fails, to
    /// name the input of a record the broker refused for good.
    sent: Vec<(usize, Sent)>,
    /// Committed by the rebalance callback, not yet counted by the loop.
    committed: Vec<Handled>,
    /// A commit in the rebalance callback failed: the loop stops with it.
    failure: Option<KafkaError>,
    /// The last failed commit's record the broker refused for good, as the error naming its
    /// input.
    refused: Option<RuntimeError>,
    /// Changelog writes and table records of the open transaction, each key once at its newest
    /// value, written just before it commits.
    held: Held,
}

/// Each key's newest value (`None` deletes it).
type NewestValues = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// What a transaction writes only at its commit, as Kafka Streams' record cache flushes at each
/// commit: a key written by many of its inputs goes to the broker once.
#[derive(Debug, Default)]
struct Held {
    /// Per changelog topic and partition, each key's newest value.
    changelog: BTreeMap<(String, i32), NewestValues>,
    /// Per table topic and key, its newest record.
    table: BTreeMap<(String, Vec<u8>), OutputRecord>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.changelog.is_empty() && self.table.is_empty()
    }

    /// Hands every held write to the producer, inside the open transaction. The last write of
    /// each changelog partition ends an input ([`INPUT_END`]): a restore then keeps them all.
    /// Their acknowledgements are the commit's: it fails if any write failed. Returns the table
    /// records written, by topic.
    fn write(
        self,
        producer: &FutureProducer,
        timeout: Duration,
    ) -> Result<BTreeMap<String, u64>, KafkaError> {
        for ((topic, partition), writes) in &self.changelog {
            let last = writes.len().saturating_sub(1);
            for (n, (key, value)) in writes.iter().enumerate() {
                let mut record = FutureRecord::<[u8], [u8]>::to(topic)
                    .partition(*partition)
                    .key(key.as_slice());
                if let Some(value) = value.as_deref() {
                    record = record.payload(value);
                }
                if n == last {
                    record = record.headers(OwnedHeaders::new().insert(Header {
                        key: INPUT_END,
                        value: Some(&[][..]),
                    }));
                }
                send_now(producer, record, timeout)?;
            }
        }
        let mut written = BTreeMap::new();
        for ((topic, key), output) in &self.table {
            let mut headers = OwnedHeaders::new_with_capacity(output.headers.len());
            for (name, value) in &output.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: value.as_deref(),
                });
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(topic)
                .key(key.as_slice())
                .headers(headers);
            if let Some(value) = output.value.as_deref() {
                record = record.payload(value);
            }
            send_now(producer, record, timeout)?;
            *written.entry(topic.clone()).or_default() += 1;
        }
        Ok(written)
    }
}

/// Hands `record` to the producer from a synchronous caller (the commit runs in the rebalance
/// callback too), waiting while librdkafka's queue is full.
fn send_now(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, [u8], [u8]>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        match producer.send_result(record) {
            // The delivery's outcome is the transaction's: commit_transaction fails if it did.
            Ok(_) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                if Instant::now() < deadline =>
            {
                record = returned;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((err, _)) => return Err(err),
        }
    }
}

/// The first record of a failed transaction whose acknowledgement says the broker refused it
/// for good (too large, invalid), as the error naming its input; `None` when none did or the
/// acknowledgements are not in yet.
fn refused_record(outcomes: &[Handled], sent: Vec<(usize, Sent)>) -> Option<RuntimeError> {
    for (index, mut record) in sent {
        if let Some(Ok(Err((source, _)))) = (&mut record.delivery).now_or_never() {
            if RefusalKind::of(&source).is_some() {
                return Some(
                    outcomes
                        .get(index)?
                        .not_taken(&record.topic, record.bytes, source),
                );
            }
        }
    }
    None
}

impl Transaction {
    /// Begins a transaction unless one is open.
    pub(crate) fn begin(&mut self, producer: &FutureProducer) -> Result<(), KafkaError> {
        if !self.open {
            producer.begin_transaction()?;
            self.open = true;
            self.started = Some(Instant::now());
        }
        Ok(())
    }

    /// Adds a resolved input and the records made from it: its offset commits with the
    /// transaction.
    pub(crate) fn add(&mut self, outcome: Handled, sent: Vec<Sent>) {
        let index = self.outcomes.len();
        self.sent.extend(sent.into_iter().map(|s| (index, s)));
        if let Trigger::Input { topic, offset } = &outcome.trigger {
            self.offsets
                .insert((topic.clone(), outcome.partition), offset + 1);
        }
        self.outcomes.push(outcome);
    }

    /// Holds `changelog` writes and `table` records for the commit, each key at its newest.
    pub(crate) fn hold(&mut self, changelog: Vec<ChangelogWrite>, table: Vec<OutputRecord>) {
        for write in changelog {
            self.held
                .changelog
                .entry((write.topic, write.partition))
                .or_default()
                .insert(write.key, write.value);
        }
        for record in table {
            let key = record.key.clone().unwrap_or_default();
            self.held.table.insert((record.topic.clone(), key), record);
        }
    }

    /// Inputs in the open transaction.
    pub(crate) fn len(&self) -> usize {
        self.outcomes.len()
    }

    /// When the open transaction must commit at the latest.
    pub(crate) fn due(&self, interval: Duration) -> Option<Instant> {
        self.started.filter(|_| self.open).map(|at| at + interval)
    }

    /// Commits the open transaction with the input offsets; returns its inputs for counting.
    /// On failure the transaction is aborted where librdkafka allows it.
    pub(crate) fn commit(
        &mut self,
        producer: &FutureProducer,
        group: Option<ConsumerGroupMetadata>,
        timeout: Duration,
    ) -> Result<Vec<Handled>, KafkaError> {
        if !self.open {
            return Ok(Vec::new());
        }
        let held = std::mem::take(&mut self.held);
        let written = if held.is_empty() {
            Ok(BTreeMap::new())
        } else {
            held.write(producer, timeout)
        };
        let result = written.and_then(|written| {
            self.send_offsets_and_commit(producer, group, timeout)
                .map(|()| written)
        });
        self.open = false;
        self.started = None;
        self.offsets.clear();
        let mut outcomes = std::mem::take(&mut self.outcomes);
        let sent = std::mem::take(&mut self.sent);
        match result {
            Ok(written) => {
                // The table records count as produced by the transaction's last input.
                if let Some(last) = outcomes.last_mut() {
                    for (topic, n) in written {
                        *last.produced.entry(topic).or_default() += n;
                    }
                }
                Ok(outcomes)
            }
            Err(err) => {
                self.refused = refused_record(&outcomes, sent);
                if let KafkaError::Transaction(rd) = &err {
                    // A fatal error (fenced) leaves nothing to abort: the broker already did.
                    if rd.txn_requires_abort() && !rd.is_fatal() {
                        if let Err(abort) = producer.abort_transaction(timeout) {
                            tracing::warn!(error = %abort, "aborting the failed transaction failed");
                        }
                    }
                }
                Err(err)
            }
        }
    }

    fn send_offsets_and_commit(
        &self,
        producer: &FutureProducer,
        group: Option<ConsumerGroupMetadata>,
        timeout: Duration,
    ) -> Result<(), KafkaError> {
        let group = group.ok_or(KafkaError::Canceled)?;
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in &self.offsets {
            offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        producer.send_offsets_to_transaction(&offsets, &group, timeout)?;
        producer.commit_transaction(timeout)
    }

    /// The error naming the input of a record the last failed commit's broker refused, if any.
    pub(crate) fn take_refused(&mut self) -> Option<RuntimeError> {
        self.refused.take()
    }

    /// Aborts the open transaction, if any, and forgets it: the run is ending on an error, and
    /// the consumer's close must not commit what it half holds.
    pub(crate) fn abandon(&mut self, producer: &FutureProducer, timeout: Duration) {
        if !self.open {
            return;
        }
        if let Err(err) = producer.abort_transaction(timeout) {
            tracing::warn!(error = %err, "aborting the abandoned transaction failed; the broker aborts it at its timeout");
        }
        self.open = false;
        self.started = None;
        self.offsets.clear();
        self.outcomes.clear();
        self.held = Held::default();
    }

    /// Inputs committed by the rebalance callback since the last call.
    pub(crate) fn take_committed(&mut self) -> Vec<Handled> {
        std::mem::take(&mut self.committed)
    }

    /// The rebalance callback's commit failure, if any.
    pub(crate) fn take_failure(&mut self) -> Option<KafkaError> {
        self.failure.take()
    }

    /// Commits the open transaction from the rebalance callback: its inputs are counted, or
    /// its failure reported, by the loop later.
    pub(crate) fn commit_on_revoke(
        &mut self,
        producer: &FutureProducer,
        group: Option<ConsumerGroupMetadata>,
        timeout: Duration,
    ) -> Result<(), ()> {
        match self.commit(producer, group, timeout) {
            Ok(outcomes) => {
                self.committed.extend(outcomes);
                Ok(())
            }
            Err(err) => {
                tracing::warn!(error = %err, "committing the transaction on revocation failed");
                self.failure = Some(err);
                Err(())
            }
        }
    }
}

/// Locks `transaction`, surviving a panic elsewhere (the data stays consistent: every change
/// is a single assignment).
pub(crate) fn lock(transaction: &Mutex<Transaction>) -> MutexGuard<'_, Transaction> {
    transaction.lock().unwrap_or_else(|e| e.into_inner())
}
