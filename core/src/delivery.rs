//! How resolved inputs become committed: acknowledged outputs, then changelog writes, then the
//! input offset (effectively-once), or all of them in one Kafka transaction (exactly-once); and
//! what happens to work in flight when the group takes partitions away.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tokio::sync::oneshot;

use crate::changelog::{ChangelogWrite, Flush, Heard, Turn, INPUT_END};
use crate::kafka::{hand_over, refuses_size};
use crate::metrics::{MeteredContext, RuntimeMetrics};
use crate::processor::OutputRecord;
use crate::runner::{RefusedRecord, RunSummary, RuntimeError};
use crate::state::{Assignment, InFlightGuard, Ownership};
use crate::transaction::{lock, Transaction};

/// Most inputs whose outputs may be awaiting the broker's acknowledgement at once.
pub(crate) const MAX_IN_FLIGHT: usize = 10_000;

/// Resolved inputs on their way to the broker, oldest first.
pub(crate) type InFlight =
    FuturesOrdered<Pin<Box<dyn Future<Output = Result<Settled, RuntimeError>> + Send>>>;

/// What an outcome resolves.
#[derive(Debug)]
pub(crate) enum Trigger {
    /// The input at `offset` of `topic`, whose offset commits once the outcome settles.
    Input { topic: String, offset: i64 },
    /// A [`Processor::wake`](crate::Processor::wake) call: nothing to commit but its writes.
    Wake,
    /// An input of `topic` held for a paused tenant, now released: its offset committed when
    /// it was held, and it was counted as consumed then.
    Released { topic: String, offset: i64 },
}

/// What one resolved input (or wake) produced, for the metrics and the summary.
#[derive(Debug)]
pub(crate) struct Handled {
    pub(crate) trigger: Trigger,
    pub(crate) partition: i32,
    pub(crate) produced: BTreeMap<String, u64>,
    pub(crate) dead_letter: Option<&'static str>,
    pub(crate) duplicate: bool,
    pub(crate) age: Option<Duration>,
    /// How long ago the event entered the backbone ([`crate::processor::EVENT_TIME`]).
    pub(crate) event_age: Option<Duration>,
    /// Whether the input was republished by a replay.
    pub(crate) replayed: bool,
}

impl Handled {
    /// Where the input was read, as `topic[partition]@offset`, or which wake it was.
    pub(crate) fn input(&self) -> String {
        match &self.trigger {
            Trigger::Input { topic, offset } => format!("{topic}[{}]@{offset}", self.partition),
            Trigger::Wake => format!("the wake of partition {}", self.partition),
            Trigger::Released { topic, offset } => {
                format!("{topic}[{}]@{offset}, released", self.partition)
            }
        }
    }

    /// The error for a record made from this input that the producer or the broker did not
    /// take: a refusal for good names the input, the record's size and what to fix; anything
    /// else stays a produce failure, as for any record.
    pub(crate) fn not_taken(&self, topic: &str, bytes: usize, source: KafkaError) -> RuntimeError {
        let topic = topic.to_owned();
        let Some(refusal) = RefusalKind::of(&source) else {
            return RuntimeError::Produce { topic, source };
        };
        let record = Box::new(RefusedRecord {
            input: self.input(),
            topic,
            bytes,
            source,
        });
        if self.dead_letter.is_some() {
            return RuntimeError::DeadLetterRefused(record);
        }
        RuntimeError::OutputRefused {
            record,
            fix: refusal.fix(),
        }
    }
}

/// Why a record was refused for good: sending it again cannot succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalKind {
    /// Over librdkafka's `message.max.bytes` or the topic's `max.message.bytes`.
    TooLarge,
    /// The broker's validation refused it (a record without a key on a compacted topic).
    Invalid,
}

impl RefusalKind {
    pub(crate) fn of(err: &KafkaError) -> Option<Self> {
        if refuses_size(err) {
            Some(Self::TooLarge)
        } else if err.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidRecord) {
            Some(Self::Invalid)
        } else {
            None
        }
    }

    /// What the operator changes before the restart.
    fn fix(self) -> &'static str {
        match self {
            Self::TooLarge => "the topic takes smaller records than runtime.max_output_bytes: lower that setting to fit the topic's max.message.bytes (the restart then dead-letters the input as `output_too_large`), or raise the topic's limit",
            Self::Invalid => "the topic's configs refuse the record (a compacted topic needs keys): fix the topic or the processor",
        }
    }
}

/// A record handed to the producer, awaiting the broker's acknowledgement.
pub(crate) struct Sent {
    /// Its topic.
    pub(crate) topic: String,
    /// Its size, as [`OutputRecord::size_bytes`] counts it.
    pub(crate) bytes: usize,
    /// The acknowledgement.
    pub(crate) delivery: DeliveryFuture,
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sent")
            .field("topic", &self.topic)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// A resolved input whose records were handed to the producer (effectively-once).
pub(crate) struct Pending {
    pub(crate) outcome: Handled,
    pub(crate) deliveries: Vec<Sent>,
    pub(crate) changelog: Vec<ChangelogWrite>,
    /// Outputs to table topics, written with the changelog batch: each key once.
    pub(crate) table: Vec<OutputRecord>,
    pub(crate) producer: FutureProducer,
    pub(crate) timeout: Duration,
    pub(crate) ownership: Arc<Ownership>,
    pub(crate) guard: InFlightGuard,
    /// Completes once the previous input's changelog writes were enqueued.
    pub(crate) turn: Option<oneshot::Receiver<()>>,
    /// Completed once this input's changelog writes are enqueued.
    pub(crate) next_turn: oneshot::Sender<()>,
}

/// A resolved input whose records the broker acknowledged.
pub(crate) struct Settled {
    outcome: Handled,
    ownership: Option<Arc<Ownership>>,
}

impl Pending {
    /// Waits for the outputs, then produces the changelog writes and table outputs and waits
    /// for them: a crash in between leaves the input uncommitted and its state unrecorded, so
    /// the redelivery produces all of them again. Changelog writes are enqueued in consumption
    /// order (each input waits for the previous one's turn), so that a partition's changelog
    /// holds its inputs' writes in the order the state saw them. A partition revoked meanwhile gets no changelog
    /// write from here: its new owner may already be writing.
    pub(crate) async fn settle(self) -> Result<Settled, RuntimeError> {
        let Pending {
            mut outcome,
            deliveries,
            changelog,
            table,
            producer,
            timeout,
            ownership,
            guard,
            turn,
            next_turn,
        } = self;
        for mut sent in deliveries {
            match (&mut sent.delivery).await {
                Ok(Ok(_)) => {}
                Ok(Err((source, _))) => {
                    return Err(outcome.not_taken(&sent.topic, sent.bytes, source))
                }
                Err(_) => {
                    return Err(outcome.not_taken(&sent.topic, sent.bytes, KafkaError::Canceled))
                }
            }
            *outcome.produced.entry(sent.topic).or_default() += 1;
        }
        if let Some(turn) = turn {
            // An error on the earlier input stops the run; waiting longer would not help.
            let _ = turn.await;
        }
        let batched = Batched {
            producer: &producer,
            ownership: &ownership,
            timeout,
        };
        match ownership.changelog_turn(changelog, table) {
            Turn::Free => {
                let _ = next_turn.send(());
            }
            Turn::Wait { flushed, topic } => {
                let _ = next_turn.send(());
                let heard = flushed.await.unwrap_or(Err(RuntimeError::Produce {
                    topic,
                    source: KafkaError::Canceled,
                }))?;
                if let Heard::FlushNow = heard {
                    if let Some(flush) = ownership.take_flush() {
                        batched.flush(flush, &mut outcome, None).await?;
                    }
                }
            }
            Turn::Flush(flush) => {
                batched.flush(flush, &mut outcome, Some(next_turn)).await?;
            }
        }
        drop(guard);
        Ok(Settled {
            outcome,
            ownership: Some(ownership),
        })
    }
}

/// Where a partition's batches go.
struct Batched<'a> {
    producer: &'a FutureProducer,
    ownership: &'a Ownership,
    timeout: Duration,
}

impl Batched<'_> {
    /// Produces `flush`, tells the inputs waiting for it how it went, and lets the partition's
    /// next batch go once it is acknowledged.
    async fn flush(
        &self,
        flush: Flush,
        outcome: &mut Handled,
        next_turn: Option<oneshot::Sender<()>>,
    ) -> Result<(), RuntimeError> {
        let produced = produce_batch(self.producer, &flush, outcome, self.timeout, next_turn).await;
        flush.done(&produced);
        produced?;
        self.ownership.flushed();
        Ok(())
    }
}

/// Enqueues a partition's batch of table outputs and changelog writes, gives the next input
/// its turn (unless it had it already), then waits for the acknowledgements. The table outputs
/// count as produced by `outcome`, the input that flushes.
async fn produce_batch(
    producer: &FutureProducer,
    flush: &Flush,
    outcome: &mut Handled,
    timeout: Duration,
    next_turn: Option<oneshot::Sender<()>>,
) -> Result<(), RuntimeError> {
    let table = enqueue(producer, &flush.table, outcome, timeout).await?;
    let mut enqueued = Vec::with_capacity(flush.writes.len());
    for write in &flush.writes {
        enqueued.push((
            write.topic.clone(),
            enqueue_changelog(producer, write, timeout).await?,
        ));
    }
    if let Some(next_turn) = next_turn {
        let _ = next_turn.send(());
    }
    for sent in table {
        acknowledged(sent.topic.clone(), sent.delivery).await?;
        *outcome.produced.entry(sent.topic).or_default() += 1;
    }
    for (topic, delivery) in enqueued {
        acknowledged(topic, delivery).await?;
    }
    Ok(())
}

async fn acknowledged(topic: String, delivery: DeliveryFuture) -> Result<(), RuntimeError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((source, _))) => Err(RuntimeError::Produce { topic, source }),
        Err(_) => Err(RuntimeError::Produce {
            topic,
            source: KafkaError::Canceled,
        }),
    }
}

/// Stores offsets of settled inputs (effectively-once) and counts them.
pub(crate) struct Ledger<'a, C: ConsumerContext + 'static> {
    pub(crate) consumer: &'a StreamConsumer<C>,
    pub(crate) metrics: &'a RuntimeMetrics,
    /// False under exactly-once, where offsets travel in the transaction.
    pub(crate) store_offsets: bool,
}

impl<C: ConsumerContext + 'static> Ledger<'_, C> {
    /// Settled: only now may the input's offset be committed.
    pub(crate) fn record(
        &self,
        settled: Settled,
        summary: &mut RunSummary,
    ) -> Result<(), RuntimeError> {
        let outcome = settled.outcome;
        if settled.ownership.is_some_and(|o| o.is_revoked()) {
            // Its new owner processes it again.
            return Ok(());
        }
        if let (true, Trigger::Input { topic, offset }) = (self.store_offsets, &outcome.trigger) {
            self.consumer
                .store_offset(topic, outcome.partition, *offset)
                .map_err(RuntimeError::Client)?;
        }
        self.count(outcome, summary);
        Ok(())
    }

    fn count(&self, outcome: Handled, summary: &mut RunSummary) {
        let input = match &outcome.trigger {
            Trigger::Input { topic, .. } => {
                self.metrics.record_consumed(topic, outcome.partition);
                summary.consumed += 1;
                Some(topic)
            }
            Trigger::Released { topic, .. } => Some(topic),
            Trigger::Wake => None,
        };
        if let Some(topic) = input {
            if outcome.replayed {
                self.metrics.record_replayed(topic);
            }
            if outcome.duplicate {
                self.metrics.record_duplicate(topic);
                summary.duplicates += 1;
            }
            if let Some(reason) = outcome.dead_letter {
                self.metrics.record_dead_letter(topic, reason);
                summary.dead_lettered += 1;
                return;
            }
        }
        for (topic, n) in &outcome.produced {
            self.metrics.record_produced(topic, *n);
            summary.produced += n;
            if let Some(age) = outcome.age {
                self.metrics.observe_end_to_end(topic, age);
            }
            if let Some(age) = outcome.event_age {
                self.metrics.observe_event_latency(topic, age);
            }
        }
    }

    /// Waits for everything in flight and records it.
    pub(crate) async fn drain(
        &self,
        in_flight: &mut InFlight,
        summary: &mut RunSummary,
    ) -> Result<(), RuntimeError> {
        while let Some(settled) = in_flight.next().await {
            self.record(settled?, summary)?;
        }
        Ok(())
    }

    /// Counts the inputs of a committed transaction.
    pub(crate) fn record_committed(&self, committed: Vec<Handled>, summary: &mut RunSummary) {
        if !committed.is_empty() {
            self.metrics.record_transaction(true);
        }
        for outcome in committed {
            self.count(outcome, summary);
        }
    }
}

/// Hands the records made from the input of `outcome` to the producer, in order; their
/// deliveries are awaited later.
pub(crate) async fn enqueue(
    producer: &FutureProducer,
    records: &[OutputRecord],
    outcome: &Handled,
    timeout: Duration,
) -> Result<Vec<Sent>, RuntimeError> {
    let mut sent = Vec::with_capacity(records.len());
    for record in records {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: value.as_deref(),
            });
        }
        let mut future = FutureRecord::<[u8], [u8]>::to(&record.topic).headers(headers);
        if let Some(key) = record.key.as_deref() {
            future = future.key(key);
        }
        if let Some(value) = record.value.as_deref() {
            future = future.payload(value);
        }
        let bytes = record.size_bytes();
        match hand_over(producer, future, timeout).await {
            Ok(delivery) => sent.push(Sent {
                topic: record.topic.clone(),
                bytes,
                delivery,
            }),
            Err(source) => return Err(outcome.not_taken(&record.topic, bytes, source)),
        }
    }
    Ok(sent)
}

/// Hands a changelog write to the producer, to the changelog partition of its input partition.
pub(crate) async fn enqueue_changelog(
    producer: &FutureProducer,
    write: &ChangelogWrite,
    timeout: Duration,
) -> Result<DeliveryFuture, RuntimeError> {
    let mut future = FutureRecord::<[u8], [u8]>::to(&write.topic)
        .partition(write.partition)
        .key(write.key.as_slice());
    if let Some(value) = write.value.as_deref() {
        future = future.payload(value);
    }
    if write.ends_input {
        future = future.headers(OwnedHeaders::new().insert(Header {
            key: INPUT_END,
            value: Some(&[][..]),
        }));
    }
    hand_over(producer, future, timeout)
        .await
        .map_err(|source| RuntimeError::Produce {
            topic: write.topic.clone(),
            source,
        })
}

/// The consumer context of the runtime: lag metrics from statistics, and the hand-over of
/// revoked partitions. librdkafka calls the rebalance callback from inside the consumer's poll,
/// on the loop's own task, so nothing the loop does runs concurrently with it.
pub(crate) struct RuntimeContext {
    pub(crate) metered: MeteredContext,
    pub(crate) assignment: Arc<Assignment>,
    pub(crate) producer: FutureProducer,
    pub(crate) transaction: Option<Arc<Mutex<Transaction>>>,
    pub(crate) timeout: Duration,
}

impl ClientContext for RuntimeContext {
    fn stats_raw(&self, statistics: &[u8]) {
        self.metered.stats_raw(statistics);
    }
}

impl ConsumerContext for RuntimeContext {
    /// Before partitions leave: exactly-once commits the open transaction (outputs, changelog
    /// and offsets); effectively-once waits for what the producer holds and commits stored
    /// offsets. Inputs still unsettled are not committed; the next owner processes them again.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        match &self.transaction {
            Some(transaction) => {
                let committed = lock(transaction).commit_on_revoke(
                    &self.producer,
                    consumer.group_metadata(),
                    self.timeout,
                );
                if committed.is_err() {
                    self.assignment.diverge_all();
                }
            }
            None => {
                if let Err(err) = self.producer.flush(self.timeout) {
                    tracing::warn!(error = %err, "flushing the producer on revocation failed");
                }
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "committing offsets on revocation failed; those inputs will be processed again")
                    }
                }
            }
        }
        self.assignment
            .revoke(list.elements().iter().map(|e| e.partition()), consumer);
    }
}
