//! The commit side of the loop: the clients, the open transaction and the ledger.

use std::collections::BTreeSet;
use std::sync::Mutex;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::oneshot;

use crate::delivery::{enqueue, InFlight, Ledger, Pending, RuntimeContext};
use crate::kafka::KafkaSettings;
use crate::processor::OutputRecord;
use crate::transaction::{lock, Transaction};

use super::{Delivered, Delivery, RunSummary, RuntimeError, RuntimeSettings};

/// What the loop needs to commit: the clients, the open transaction and the ledger.
pub(super) struct Stage<'a> {
    pub(super) consumer: &'a StreamConsumer<RuntimeContext>,
    pub(super) producer: &'a FutureProducer,
    pub(super) transaction: Option<&'a Mutex<Transaction>>,
    pub(super) settings: &'a RuntimeSettings,
    pub(super) ledger: &'a Ledger<'a, RuntimeContext>,
    /// The processor's [`table_topics`](crate::Processor::table_topics).
    pub(super) table_topics: &'a BTreeSet<String>,
}

impl Stage<'_> {
    /// Commits the open transaction, if any, and counts its inputs.
    pub(super) fn commit(&mut self, summary: &mut RunSummary) -> Result<(), RuntimeError> {
        let Some(transaction) = self.transaction else {
            return Ok(());
        };
        let committed = lock(transaction).commit(
            self.producer,
            self.consumer.group_metadata(),
            self.settings.transaction.timeout,
        );
        match committed {
            Ok(outcomes) => {
                self.ledger.record_committed(outcomes, summary);
                Ok(())
            }
            Err(err) => {
                self.ledger.metrics.record_transaction(false);
                // A record the broker refused for good names its input, as it does without
                // transactions; any other failure is the transaction's.
                let refused = lock(transaction).take_refused();
                Err(refused.unwrap_or_else(|| commit_error(self.producer, err)))
            }
        }
    }

    /// Hands records and changelog writes to the producer: into the open transaction, the
    /// changelog writes and a table topic's records held for its commit, each key once
    /// (exactly-once); or in flight until acknowledged, changelog after outputs
    /// (effectively-once; a table topic's records go with the changelog batch, each key once).
    pub(super) async fn deliver(
        &mut self,
        delivered: Delivered,
        in_flight: &mut InFlight,
        last_turn: &mut Option<oneshot::Receiver<()>>,
        summary: &mut RunSummary,
    ) -> Result<(), RuntimeError> {
        let Delivered {
            records,
            mut outcome,
            changelog,
            ownership,
        } = delivered;
        let timeout = self.settings.produce_timeout;
        let (table, records): (Vec<OutputRecord>, Vec<OutputRecord>) = records
            .into_iter()
            .partition(|record| record.key.is_some() && self.table_topics.contains(&record.topic));
        match self.transaction {
            Some(transaction) => {
                lock(transaction)
                    .begin(self.producer)
                    .map_err(transaction_error)?;
                let sent = enqueue(self.producer, &records, &outcome, timeout)
                    .await
                    .map_err(|err| fenced_or(self.producer, err))?;
                for record in &records {
                    *outcome.produced.entry(record.topic.clone()).or_default() += 1;
                }
                let full = {
                    let mut transaction = lock(transaction);
                    transaction.hold(changelog, table);
                    transaction.add(outcome, sent);
                    transaction.len() >= self.settings.transaction.max_records
                };
                if full {
                    self.commit(summary)?;
                }
            }
            None => {
                let deliveries = enqueue(self.producer, &records, &outcome, timeout).await?;
                let (next_turn, turn) = oneshot::channel();
                let pending = Pending {
                    outcome,
                    deliveries,
                    changelog,
                    table,
                    producer: self.producer.clone(),
                    timeout,
                    guard: ownership.track(),
                    ownership,
                    turn: last_turn.replace(turn),
                    next_turn,
                };
                in_flight.push_back(Box::pin(pending.settle()));
            }
        }
        Ok(())
    }

    /// The partitions the consumer is assigned now.
    pub(super) fn assigned(&self) -> Result<BTreeSet<i32>, RuntimeError> {
        Ok(self
            .consumer
            .assignment()
            .map_err(RuntimeError::Client)?
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect())
    }

    /// Picks up what a rebalance callback committed or failed to commit.
    pub(super) fn after_rebalance(&mut self, summary: &mut RunSummary) -> Result<(), RuntimeError> {
        if let Some(transaction) = self.transaction {
            let (committed, failure) = {
                let mut transaction = lock(transaction);
                (transaction.take_committed(), transaction.take_failure())
            };
            if let Some(err) = failure {
                self.ledger.metrics.record_transaction(false);
                return Err(commit_error(self.producer, err));
            }
            self.ledger.record_committed(committed, summary);
        }
        Ok(())
    }

    /// Settles and commits everything, closes the partitions' state and leaves the group.
    pub(super) async fn finish(
        &mut self,
        in_flight: &mut InFlight,
        summary: &mut RunSummary,
    ) -> Result<(), RuntimeError> {
        self.ledger.drain(in_flight, summary).await?;
        self.after_rebalance(summary)?;
        self.commit(summary)?;
        if self.transaction.is_none() {
            match self.consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {}
                // Nothing stored since the last automatic commit.
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "final commit failed; uncommitted inputs will be redelivered")
                }
            }
        }
        self.consumer.context().assignment.close_all(self.consumer);
        self.consumer.unsubscribe();
        Ok(())
    }
}

pub(super) fn create_producer(
    kafka: &KafkaSettings,
    settings: &RuntimeSettings,
) -> Result<FutureProducer, RuntimeError> {
    // Outputs are held to `max_output_bytes` before they reach the producer; dead letters,
    // larger by their headers, only to the producer's limit.
    let max_record_bytes = settings
        .max_dead_letter_bytes
        .max(settings.max_output_bytes)
        .to_string();
    let Delivery::ExactlyOnce = settings.delivery else {
        return kafka
            .stage_producer_config()
            .set("message.max.bytes", max_record_bytes)
            .create()
            .map_err(RuntimeError::Client);
    };
    let id = settings
        .transaction
        .transactional_id
        .as_deref()
        .unwrap_or_default();
    let producer: FutureProducer = kafka
        .transactional_producer_config(id, settings.transaction.timeout)
        .set("message.max.bytes", max_record_bytes)
        .create()
        .map_err(RuntimeError::Client)?;
    // Fences any older instance with the same id and aborts what it left open.
    producer
        .init_transactions(settings.transaction.timeout)
        .map_err(|err| match err.rdkafka_error_code() {
            Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed) => {
                RuntimeError::TransactionsRefused(err)
            }
            _ => transaction_error(err),
        })?;
    Ok(producer)
}

pub(super) fn transaction_error(err: KafkaError) -> RuntimeError {
    match err.rdkafka_error_code() {
        Some(code) if is_fencing(code) => RuntimeError::Fenced(err),
        _ => RuntimeError::Transaction(err),
    }
}

/// A failed commit: the fencing when the producer's fatal error says a newer instance fenced it
/// (the held writes the commit sends meet it as a fatal error of their own), else the
/// transaction's failure.
fn commit_error(producer: &FutureProducer, err: KafkaError) -> RuntimeError {
    match producer.client().fatal_error() {
        Some((code, _)) if is_fencing(code) => RuntimeError::Fenced(err),
        _ => transaction_error(err),
    }
}

/// A record refused inside a transaction because a newer instance fenced the producer (its
/// fatal error says so) is that fencing, however the refusal reached us: whether the fenced
/// instance learns it from a record or from the commit is a matter of timing.
fn fenced_or(producer: &FutureProducer, err: RuntimeError) -> RuntimeError {
    match (err, producer.client().fatal_error()) {
        (RuntimeError::Produce { source, .. }, Some((code, _))) if is_fencing(code) => {
            RuntimeError::Fenced(source)
        }
        (err, _) => err,
    }
}

fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
    )
}
