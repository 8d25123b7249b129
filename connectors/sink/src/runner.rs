//! The sink loop: consume, accept, batch, deliver with retries behind the circuit breaker,
//! record outcomes, publish results and dead letters, then store offsets.

use backbone_calendar::now_micros;
use backbone_core::shutdown::{sleep_until, stopped};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use backbone_core::admin::{self, AdminError, TopicSpec};
use backbone_core::dead_letter::{dlq_topic, dlq_topic_spec, headers as dlq_headers, DeadLetter};
use backbone_core::endpoint::ObservabilitySettings;
use backbone_core::kafka::{owned_headers, refuses_size, ConsumerFailure};
use backbone_core::metrics::{fatal_kind, MeteredContext, RuntimeMetrics};
use backbone_core::{
    Header, InputRecord, KafkaSettings, OutputRecord, Prefetch, ProcessError, TRACEPARENT,
};
use backbone_rating::content_id;
use backbone_schemas::types::{
    Contract, DeliveryOutcome, DeliveryResult, EventMetadata, TraceContext,
};
use backbone_schemas::wire::encode_framed;
use backbone_schemas::{OutputContracts, WireCodec};
use futures::future::join_all;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::backoff;
use crate::circuit::{CircuitBreaker, CircuitState};
use crate::ledger::{DeliveryLedger, DeliveryState, LedgerEntry, LedgerError};
use crate::metrics::SinkMetrics;
use crate::settings::SinkSettings;
use crate::{
    Accepted, Delivery, DeliveryError, Money, Outcome, RetryReason, Sink, SinkContext, Source,
};

/// Reason on the dead letters of records the destination refused.
pub const DESTINATION_REJECTED: &str = "destination_rejected";

/// What a run did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkSummary {
    /// Input records settled.
    pub consumed: u64,
    /// Deliveries accepted by the destination now.
    pub delivered: u64,
    /// Deliveries the ledger or the destination already knew.
    pub already_delivered: u64,
    /// Deliveries refused for good.
    pub rejected: u64,
    /// Input records dead-lettered (refused deliveries' sources and undecodable records).
    pub dead_lettered: u64,
    /// Attempts retried.
    pub retries: u64,
    /// Times the circuit opened.
    pub circuit_opened: u64,
}

/// Why a sink stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The consumer hit an error librdkafka cannot recover from.
    #[error("consumer failed fatally: {0}")]
    Fatal(#[source] KafkaError),
    /// The broker refused our credentials or permissions; nothing was delivered, dead-lettered
    /// or committed past the last settled record.
    #[error("the broker refused access, fix credentials or ACLs and restart: {0}")]
    Refused(#[source] KafkaError),
    /// Topics could not be created.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The delivery ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A result or dead letter could not be published.
    #[error("publishing to `{topic}`: {message}")]
    Publish {
        /// Destination topic.
        topic: String,
        /// What failed.
        message: String,
    },
    /// The destination refused the credentials: fix them and restart.
    #[error("stopped: the destination refused the sink's credentials (HTTP {status}): {message}")]
    Unauthorized {
        /// HTTP status.
        status: u16,
        /// The destination's message.
        message: String,
    },
}

impl SinkError {
    /// The `kind` label of the alert metric for this stop, as the processors label theirs.
    pub fn fatal_kind(&self) -> &'static str {
        match self {
            Self::Refused(_) | Self::Unauthorized { .. } => fatal_kind::AUTH,
            Self::Ledger(_) => fatal_kind::CONFIG,
            Self::Kafka(_) | Self::Fatal(_) | Self::Admin(_) | Self::Publish { .. } => {
                fatal_kind::KAFKA
            }
        }
    }

    /// A consumer error the client recovers from by itself, given back to be logged; any
    /// other stops the sink.
    fn passing(err: KafkaError) -> Result<KafkaError, Self> {
        match ConsumerFailure::of(&err) {
            ConsumerFailure::Fatal => Err(Self::Fatal(err)),
            ConsumerFailure::Refused => Err(Self::Refused(err)),
            ConsumerFailure::Passing => Ok(err),
        }
    }
}

/// Everything a run needs besides the sink.
pub struct RunContext<'a> {
    /// Broker connection.
    pub kafka: &'a KafkaSettings,
    /// Batching, retries, circuit, ledger.
    pub settings: &'a SinkSettings,
    /// Statistics interval for consumer lag.
    pub observability: &'a ObservabilitySettings,
    /// Registry the contracts are read from and registered in.
    pub codec: WireCodec,
    /// The runtime's series (records, dead letters, lag, fatal errors, readiness).
    pub metrics: Arc<RuntimeMetrics>,
    /// The sink's own series.
    pub sink_metrics: Arc<SinkMetrics>,
}

/// Runs `sink` until `shutdown` completes or it fails. Deliveries not settled at shutdown are
/// left uncommitted: the next run sends them again under the same keys.
pub async fn run<S, F>(
    mut sink: S,
    context: RunContext<'_>,
    shutdown: F,
) -> Result<SinkSummary, SinkError>
where
    S: Sink,
    F: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop) = watch::channel(false);
    let stopper = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let metrics = Arc::clone(&context.metrics);
    let result = SinkLoop::start(&mut sink, context, stop).await;
    let result = match result {
        Ok(mut running) => running.run().await,
        Err(err) => Err(err),
    };
    stopper.abort();
    if let Err(err) = &result {
        metrics.record_fatal(err.fatal_kind());
    }
    result
}

/// An input record kept until everything made from it is settled.
struct HeldRecord {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<Header>,
    timestamp_ms: Option<i64>,
    /// Settlements still outstanding (one per delivery made from it).
    outstanding: usize,
}

/// Per input partition: the records not yet settled, and how far offsets were stored.
#[derive(Default)]
struct PartitionTrack {
    open: BTreeMap<i64, HeldRecord>,
    highest: Option<i64>,
    stored: Option<i64>,
}

/// A settlement made without a request: a record dead-lettered on arrival or already inside a
/// confirmed delivery.
enum Immediate {
    DeadLetter {
        partition: i32,
        offset: i64,
        reason: &'static str,
        message: String,
    },
    AlreadyDelivered {
        partition: i32,
        offset: i64,
        key: String,
        tenant_id: String,
        money: Option<Money>,
    },
}

/// One delivery's final answer and the attempts it took.
struct Settled<P> {
    delivery: Delivery<P>,
    outcome: Outcome,
    attempts: u32,
}

/// How a delivery round ended.
enum Round<P> {
    Done(Vec<Settled<P>>),
    Stopped,
}

struct SinkLoop<'s, S: Sink> {
    sink: &'s mut S,
    name: String,
    destination: &'static str,
    settings: SinkSettings,
    consumer: StreamConsumer<SinkConsumerContext>,
    producer: FutureProducer,
    contracts: OutputContracts,
    ledger: DeliveryLedger,
    metrics: Arc<RuntimeMetrics>,
    sink_metrics: Arc<SinkMetrics>,
    circuit: CircuitBreaker,
    stop: watch::Receiver<bool>,
    tracks: BTreeMap<i32, PartitionTrack>,
    queue: Vec<Delivery<S::Payload>>,
    immediate: Vec<Immediate>,
    batch_started: Option<Instant>,
    paused: bool,
    summary: SinkSummary,
}

impl<'s, S: Sink> SinkLoop<'s, S> {
    async fn start(
        sink: &'s mut S,
        context: RunContext<'_>,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, SinkError> {
        let name = sink.name().to_owned();
        let settings = context.settings.clone();
        let group = settings.group_id.clone().unwrap_or_else(|| name.clone());
        let input = sink.input_topic().to_owned();
        let specs = [
            dlq_topic_spec(
                dlq_topic(&input),
                settings.topic_partitions,
                settings.max_dead_letter_bytes,
            ),
            TopicSpec::new(settings.results_topic.clone(), settings.topic_partitions),
        ];
        admin::ensure_topics(context.kafka, &specs, Duration::from_secs(30)).await?;
        let ledger_dir = settings.ledger_dir.join(&group).join("ledger");
        std::fs::create_dir_all(&ledger_dir).map_err(|err| SinkError::Publish {
            topic: input.clone(),
            message: format!(
                "cannot create the ledger directory `{}`: {err}",
                ledger_dir.display()
            ),
        })?;
        let ledger = DeliveryLedger::open(&ledger_dir)?;
        let producer: FutureProducer = context
            .kafka
            .producer_config()
            .set(
                "message.max.bytes",
                settings.max_dead_letter_bytes.to_string(),
            )
            .create()?;
        let consumer_context = SinkConsumerContext {
            metered: MeteredContext::new(Arc::clone(&context.metrics)),
            revoked: Arc::new(Mutex::new(Vec::new())),
            assigned: AtomicBool::new(false),
        };
        let mut consumer_config = context.kafka.consumer_config(&group);
        context
            .observability
            .enable_statistics(&mut consumer_config);
        let consumer: StreamConsumer<SinkConsumerContext> =
            consumer_config.create_with_context(consumer_context)?;
        consumer.subscribe(&[input.as_str()])?;
        context.metrics.register_topics(
            std::slice::from_ref(&input),
            &[settings.results_topic.clone(), dlq_topic(&input)],
        );
        context.metrics.readiness().set_ready(true);
        let destination = destination_label(sink.destination());
        tracing::info!(sink = %name, group = %group, topic = %input, destination,
            ledger = %ledger_dir.display(), "sink started");
        let contracts = OutputContracts::new(
            context.codec,
            vec![(settings.results_topic.clone(), DeliveryResult::FULL_NAME)],
        );
        Ok(Self {
            sink,
            name,
            destination,
            circuit: CircuitBreaker::new(settings.circuit.clone()),
            settings,
            consumer,
            producer,
            contracts,
            ledger,
            metrics: context.metrics,
            sink_metrics: context.sink_metrics,
            stop,
            tracks: BTreeMap::new(),
            queue: Vec::new(),
            immediate: Vec::new(),
            batch_started: None,
            paused: false,
            summary: SinkSummary::default(),
        })
    }

    async fn run(&mut self) -> Result<SinkSummary, SinkError> {
        let mut tick = tokio::time::interval(self.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let linger_until = self.batch_started.map(|at| at + self.settings.linger);
            let room = self.queue.len() < self.settings.batch_max;
            let received = tokio::select! {
                biased;
                _ = stopped(&mut self.stop) => break,
                _ = sleep_until(linger_until), if linger_until.is_some() => None,
                _ = tick.tick() => None,
                message = self.consumer.recv(), if room => {
                    Some(message.map(|m| OwnedInput::from(&m)))
                }
            };
            // A rebalance runs inside `recv`: what it revoked goes before the record counts.
            self.forget_revoked();
            self.settle_assignment();
            let go_on = match received {
                Some(Ok(record)) => self.accept(record).await?,
                Some(Err(err)) => {
                    let err = SinkError::passing(err)?;
                    tracing::warn!(sink = %self.name, error = %err, "consumer error, continuing");
                    continue;
                }
                None => true,
            };
            if !go_on {
                break;
            }
            let due = self.sink.due(SystemTime::now(), &self.ledger);
            let forced = !due.is_empty();
            self.queue.extend(due);
            if (!self.queue.is_empty() || !self.immediate.is_empty())
                && self.batch_started.is_none()
            {
                self.batch_started = Some(Instant::now());
            }
            let lingered = self
                .batch_started
                .is_some_and(|at| at.elapsed() >= self.settings.linger);
            let send = forced || lingered || self.queue.len() >= self.settings.batch_max;
            if send && !self.flush().await? {
                break;
            }
        }
        self.finish();
        tracing::info!(sink = %self.name, summary = ?self.summary, "sink stopped");
        Ok(self.summary.clone())
    }

    /// Takes one input record in. Returns false when asked to stop while waiting.
    async fn accept(&mut self, record: OwnedInput) -> Result<bool, SinkError> {
        let mut attempts = 0u32;
        let prepared = loop {
            attempts += 1;
            match self.contracts.prefetch(record.value.as_deref()).await {
                Ok(()) => break Ok(()),
                Err(ProcessError::Permanent { reason, detail }) => break Err((reason, detail)),
                Err(err) => {
                    let wait = backoff::delay(&self.settings.retry, attempts, None);
                    tracing::warn!(sink = %self.name, error = %err, ?wait, "schema registry unavailable, retrying");
                    tokio::select! {
                        biased;
                        _ = stopped(&mut self.stop) => return Ok(false),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        };
        let input = record.as_input();
        let accepted = match prepared {
            Ok(()) => {
                let context = SinkContext {
                    codec: self.contracts.codec(),
                    ledger: &self.ledger,
                };
                self.sink
                    .accept(&input, &context)
                    .map_err(|rejection| (rejection.reason, rejection.detail))
            }
            Err(failure) => Err(failure),
        };
        let (partition, offset) = (record.partition, record.offset);
        let outstanding = match accepted {
            Ok(Accepted::Deliver(deliveries)) if deliveries.is_empty() => 0,
            Ok(Accepted::Deliver(deliveries)) => {
                let count = deliveries.len();
                for mut delivery in deliveries {
                    if delivery.sources.is_empty() {
                        delivery.sources.push(Source {
                            partition,
                            offset,
                            money: delivery.money.clone(),
                        });
                    }
                    self.queue.push(delivery);
                }
                count
            }
            Ok(Accepted::Held) => 1,
            Ok(Accepted::AlreadyDelivered { key, money }) => {
                self.immediate.push(Immediate::AlreadyDelivered {
                    partition,
                    offset,
                    key,
                    tenant_id: tenant_of(record.key.as_deref()),
                    money,
                });
                1
            }
            Err((reason, message)) => {
                self.immediate.push(Immediate::DeadLetter {
                    partition,
                    offset,
                    reason,
                    message,
                });
                1
            }
        };
        let track = self.tracks.entry(partition).or_default();
        track.highest = Some(track.highest.map_or(offset, |h| h.max(offset)));
        if outstanding > 0 {
            track.open.insert(
                offset,
                HeldRecord {
                    key: record.key,
                    value: record.value,
                    headers: record.headers,
                    timestamp_ms: record.timestamp_ms,
                    outstanding,
                },
            );
        } else {
            // Nothing to deliver: settled now.
            self.summary.consumed += 1;
            self.metrics.record_consumed(&record.topic, partition);
            self.store_offsets(&[partition]);
        }
        Ok(true)
    }

    /// Delivers the queue, records the outcomes, publishes results and dead letters, settles
    /// the sources. Returns false when asked to stop mid-way (nothing of the batch settled).
    async fn flush(&mut self) -> Result<bool, SinkError> {
        self.batch_started = None;
        let queue = std::mem::take(&mut self.queue);
        let immediate = std::mem::take(&mut self.immediate);
        let settled = match self.deliver(queue).await? {
            Round::Done(settled) => settled,
            Round::Stopped => return Ok(false),
        };
        let mut entries = Vec::with_capacity(settled.len());
        let mut members = Vec::new();
        for s in &settled {
            let (state, reference, code, message) = match &s.outcome {
                Outcome::Delivered { reference } | Outcome::AlreadyDelivered { reference } => {
                    for member in &s.delivery.members {
                        members.push((member.as_str(), s.delivery.key.as_str()));
                    }
                    (DeliveryState::Confirmed, reference.clone(), None, None)
                }
                Outcome::Rejected { code, message } => (
                    DeliveryState::Rejected,
                    None,
                    Some(code.clone()),
                    Some(message.clone()),
                ),
                Outcome::Retry { .. } => continue,
            };
            let mut entry = LedgerEntry::new(state, s.attempts);
            entry.reference = reference;
            entry.error_code = code;
            entry.error_message = message;
            entries.push((s.delivery.key.as_str(), entry));
        }
        let refs: Vec<(&str, &LedgerEntry)> = entries.iter().map(|(k, e)| (*k, e)).collect();
        self.ledger.write(&refs, &members, true)?;
        drop(refs);
        drop(entries);

        let mut records = Vec::new();
        let mut touched = Vec::new();
        for s in &settled {
            self.count(&s.outcome);
            for source in &s.delivery.sources {
                let Some(held) = self.held(source.partition, source.offset) else {
                    continue;
                };
                records.push(self.result(&s.delivery, &s.outcome, s.attempts, source, held)?);
                if let Outcome::Rejected { code, message } = &s.outcome {
                    records.push(self.dead_letter(
                        source.partition,
                        source.offset,
                        held,
                        DESTINATION_REJECTED,
                        &format!("{code}: {message}"),
                        s.attempts,
                    ));
                    self.metrics
                        .record_dead_letter(self.sink.input_topic(), DESTINATION_REJECTED);
                    self.summary.dead_lettered += 1;
                }
                touched.push((source.partition, source.offset));
            }
        }
        for item in &immediate {
            match item {
                Immediate::DeadLetter {
                    partition,
                    offset,
                    reason,
                    message,
                } => {
                    let Some(held) = self.held(*partition, *offset) else {
                        continue;
                    };
                    records.push(self.dead_letter(*partition, *offset, held, reason, message, 1));
                    self.metrics
                        .record_dead_letter(self.sink.input_topic(), reason);
                    self.summary.dead_lettered += 1;
                    touched.push((*partition, *offset));
                }
                Immediate::AlreadyDelivered {
                    partition,
                    offset,
                    key,
                    tenant_id,
                    money,
                } => {
                    let Some(held) = self.held(*partition, *offset) else {
                        continue;
                    };
                    let delivery = Delivery {
                        key: key.clone(),
                        tenant_id: tenant_id.clone(),
                        payload: (),
                        money: money.clone(),
                        sources: Vec::new(),
                        members: Vec::new(),
                    };
                    let source = Source {
                        partition: *partition,
                        offset: *offset,
                        money: money.clone(),
                    };
                    let outcome = Outcome::AlreadyDelivered { reference: None };
                    records.push(self.result(&delivery, &outcome, 0, &source, held)?);
                    self.count(&outcome);
                    touched.push((*partition, *offset));
                }
            }
        }
        self.publish(records).await?;
        self.settle(&touched);
        Ok(true)
    }

    /// Sends `queue`, retrying what is not settled, until every delivery has a final outcome or
    /// the sink is asked to stop.
    async fn deliver(
        &mut self,
        queue: Vec<Delivery<S::Payload>>,
    ) -> Result<Round<S::Payload>, SinkError> {
        let mut settled = Vec::with_capacity(queue.len());
        let mut waiting = Vec::with_capacity(queue.len());
        for delivery in queue {
            match self.ledger.get(&delivery.key)? {
                Some(entry) if entry.state == DeliveryState::Confirmed => settled.push(Settled {
                    delivery,
                    outcome: Outcome::AlreadyDelivered {
                        reference: entry.reference,
                    },
                    attempts: entry.attempts,
                }),
                entry => {
                    let attempts = entry.map_or(0, |e| e.attempts);
                    waiting.push((delivery, attempts));
                }
            }
        }
        let mut round = 0u32;
        while !waiting.is_empty() {
            loop {
                let hold = self.circuit.wait(Instant::now());
                if hold.is_zero() {
                    break;
                }
                if !self.wait_paused(hold).await? {
                    return Ok(Round::Stopped);
                }
            }
            self.sink_metrics.set_circuit(self.circuit.state());
            // A half-open circuit sends one delivery as its probe, not the whole batch.
            let held_back = if self.circuit.state() == CircuitState::HalfOpen && waiting.len() > 1 {
                waiting.split_off(1)
            } else {
                Vec::new()
            };
            for (_, attempts) in &mut waiting {
                *attempts += 1;
            }
            self.mark_in_flight(&waiting)?;
            let batch: Vec<&Delivery<S::Payload>> = waiting.iter().map(|(d, _)| d).collect();
            let started = Instant::now();
            let answer = self.sink.deliver(&batch).await;
            self.sink_metrics
                .observe_batch(started.elapsed(), batch.len());
            drop(batch);
            let outcomes = match answer {
                Ok(outcomes) if outcomes.len() == waiting.len() => outcomes,
                Ok(outcomes) => {
                    tracing::error!(sink = %self.name, sent = waiting.len(), answered = outcomes.len(),
                        "the sink answered a batch with the wrong number of outcomes; retrying it");
                    vec![retry_all("outcome count mismatch"); waiting.len()]
                }
                Err(DeliveryError::Unauthorized { status, message }) => {
                    tracing::error!(sink = %self.name, status, %message,
                        "the destination refused the credentials; stopping without committing");
                    return Err(SinkError::Unauthorized { status, message });
                }
                Err(DeliveryError::Transient {
                    reason,
                    message,
                    after,
                }) => vec![
                    Outcome::Retry {
                        reason,
                        message,
                        after
                    };
                    waiting.len()
                ],
            };
            let mut progress = false;
            let mut retry_after: Option<Duration> = None;
            let mut last_retry = None;
            let mut still = Vec::new();
            for ((delivery, attempts), outcome) in waiting.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Retry {
                        reason,
                        message,
                        after,
                    } => {
                        retry_after = retry_after.max(after);
                        last_retry = Some((reason, message));
                        still.push((delivery, attempts));
                    }
                    outcome => {
                        progress = true;
                        settled.push(Settled {
                            delivery,
                            outcome,
                            attempts,
                        });
                    }
                }
            }
            waiting = still;
            waiting.extend(held_back);
            if progress || waiting.is_empty() {
                if self.circuit.success() {
                    tracing::info!(sink = %self.name, "destination answers again; circuit closed");
                }
                self.resume();
            } else if self.circuit.failure(Instant::now()) {
                self.summary.circuit_opened += 1;
                tracing::warn!(sink = %self.name, open_for = ?self.settings.circuit.open_for,
                    "destination keeps failing; circuit open, input paused");
            }
            self.sink_metrics.set_circuit(self.circuit.state());
            let Some((reason, message)) = last_retry else {
                continue;
            };
            round += 1;
            self.summary.retries += 1;
            self.sink_metrics.record_retry(reason);
            self.metrics.record_retry(self.sink.input_topic());
            self.mark(&waiting, DeliveryState::Pending, Some((reason, &message)))?;
            if self.circuit.state() == CircuitState::Open {
                continue;
            }
            let wait = backoff::delay(&self.settings.retry, round, retry_after);
            tracing::warn!(sink = %self.name, waiting = waiting.len(), reason = reason.as_str(),
                %message, ?wait, "delivery not accepted, retrying");
            if !self.wait_paused(wait).await? {
                return Ok(Round::Stopped);
            }
        }
        Ok(Round::Done(settled))
    }

    /// Marks `waiting` as sent, with the items each carries: the destination may apply a
    /// request whose answer never comes back, so a resend after a crash must carry the same.
    fn mark_in_flight(&self, waiting: &[(Delivery<S::Payload>, u32)]) -> Result<(), SinkError> {
        let entries: Vec<(&str, LedgerEntry)> = waiting
            .iter()
            .map(|(delivery, attempts)| {
                (
                    delivery.key.as_str(),
                    LedgerEntry::new(DeliveryState::InFlight, *attempts),
                )
            })
            .collect();
        let refs: Vec<(&str, &LedgerEntry)> = entries.iter().map(|(k, e)| (*k, e)).collect();
        let carried: Vec<(&str, &[String])> = waiting
            .iter()
            .filter(|(delivery, _)| !delivery.members.is_empty())
            .map(|(delivery, _)| (delivery.key.as_str(), delivery.members.as_slice()))
            .collect();
        self.ledger.write_attempt(&refs, &carried)?;
        Ok(())
    }

    /// Writes the state of deliveries still being worked on; not synced, a crash re-sends them.
    fn mark(
        &self,
        waiting: &[(Delivery<S::Payload>, u32)],
        state: DeliveryState,
        failure: Option<(RetryReason, &str)>,
    ) -> Result<(), SinkError> {
        let entries: Vec<(&str, LedgerEntry)> = waiting
            .iter()
            .map(|(delivery, attempts)| {
                let mut entry = LedgerEntry::new(state, *attempts);
                if let Some((reason, message)) = failure {
                    entry.error_code = Some(reason.as_str().to_owned());
                    entry.error_message = Some(message.to_owned());
                }
                (delivery.key.as_str(), entry)
            })
            .collect();
        let refs: Vec<(&str, &LedgerEntry)> = entries.iter().map(|(k, e)| (*k, e)).collect();
        self.ledger.write(&refs, &[], false)?;
        Ok(())
    }

    /// Waits `hold` (an open circuit, a retry's backoff) with the input paused until the next
    /// delivery makes progress. The consumer is polled meanwhile: librdkafka takes a consumer
    /// that has not polled for `max.poll.interval.ms` out of its group, and what it had not
    /// committed would be read and answered again. Returns false when asked to stop.
    async fn wait_paused(&mut self, hold: Duration) -> Result<bool, SinkError> {
        if !self.paused {
            match self.consumer.assignment() {
                Ok(assignment) => {
                    if let Err(err) = self.consumer.pause(&assignment) {
                        tracing::warn!(sink = %self.name, error = %err, "could not pause the input");
                    }
                    self.paused = true;
                }
                Err(err) => {
                    tracing::warn!(sink = %self.name, error = %err, "could not read the assignment to pause it")
                }
            }
        }
        let until = tokio::time::Instant::now() + hold;
        loop {
            let read = tokio::select! {
                biased;
                _ = stopped(&mut self.stop) => return Ok(false),
                _ = tokio::time::sleep_until(until) => return Ok(true),
                message = self.consumer.recv() => {
                    message.map(|m| (m.topic().to_owned(), m.partition(), m.offset()))
                }
            };
            self.settle_assignment();
            match read {
                Ok((topic, partition, offset)) => self.put_back(&topic, partition, offset)?,
                Err(err) => {
                    let err = SinkError::passing(err)?;
                    tracing::warn!(sink = %self.name, error = %err, "consumer error while paused, continuing")
                }
            }
        }
    }

    /// Sends a partition assigned while the input is paused back to `offset`, the record just
    /// read from it, and pauses it too. If it cannot, the sink stops: reading on past a record
    /// it did not take would lose it.
    fn put_back(&self, topic: &str, partition: i32, offset: i64) -> Result<(), SinkError> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        let list = self
            .consumer
            .seek_partitions(list, Duration::from_secs(10))?;
        if let Some(Err(err)) = list.elements().first().map(|e| e.error()) {
            return Err(SinkError::Kafka(err));
        }
        self.consumer.pause(&list)?;
        tracing::info!(sink = %self.name, partition, offset, "partition assigned while paused; it waits with the rest");
        Ok(())
    }

    /// Gives a new assignment the sink's own pause state. librdkafka keeps a partition's pause
    /// across its revocation and a new assignment: a partition paused under an open circuit,
    /// lost in a rebalance (a broker restart timed the session out) and assigned again after
    /// the circuit closed was never read again, and the sink stood still with its records
    /// uncommitted (found by the chaos run with broker restarts).
    fn settle_assignment(&mut self) {
        if !self
            .consumer
            .context()
            .assigned
            .swap(false, Ordering::SeqCst)
        {
            return;
        }
        let assignment = match self.consumer.assignment() {
            Ok(assignment) => assignment,
            Err(err) => {
                tracing::warn!(sink = %self.name, error = %err, "could not read the new assignment");
                return;
            }
        };
        let settled = if self.paused {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        if let Err(err) = settled {
            tracing::warn!(sink = %self.name, error = %err, paused = self.paused,
                "could not give the new assignment the input's pause state");
        }
    }

    fn resume(&mut self) {
        if !self.paused {
            return;
        }
        self.paused = false;
        match self.consumer.assignment() {
            Ok(assignment) => {
                if let Err(err) = self.consumer.resume(&assignment) {
                    tracing::warn!(sink = %self.name, error = %err, "could not resume the input");
                }
            }
            Err(err) => {
                tracing::warn!(sink = %self.name, error = %err, "could not read the assignment to resume it")
            }
        }
    }

    fn count(&mut self, outcome: &Outcome) {
        let label = match outcome {
            Outcome::Delivered { .. } => {
                self.summary.delivered += 1;
                "delivered"
            }
            Outcome::AlreadyDelivered { .. } => {
                self.summary.already_delivered += 1;
                "already_delivered"
            }
            Outcome::Rejected { .. } => {
                self.summary.rejected += 1;
                "rejected"
            }
            Outcome::Retry { .. } => return,
        };
        self.sink_metrics.record_delivery(self.destination, label);
    }

    fn held(&self, partition: i32, offset: i64) -> Option<&HeldRecord> {
        self.tracks.get(&partition)?.open.get(&offset)
    }

    fn result<P>(
        &self,
        delivery: &Delivery<P>,
        outcome: &Outcome,
        attempts: u32,
        source: &Source,
        held: &HeldRecord,
    ) -> Result<OutputRecord, SinkError> {
        let topic = self.settings.results_topic.clone();
        let (outcome_symbol, reference, code, message) = match outcome {
            Outcome::Delivered { reference } => {
                (DeliveryOutcome::Delivered, reference.clone(), None, None)
            }
            Outcome::AlreadyDelivered { reference } => (
                DeliveryOutcome::AlreadyDelivered,
                reference.clone(),
                None,
                None,
            ),
            Outcome::Rejected { code, message } => (
                DeliveryOutcome::Rejected,
                None,
                Some(code.clone()),
                Some(message.clone()),
            ),
            Outcome::Retry { .. } => (DeliveryOutcome::Unknown, None, None, None),
        };
        let input = self.sink.input_topic();
        let event_id = content_id(
            "dr-",
            &[
                &delivery.key,
                input,
                &source.partition.to_string(),
                &source.offset.to_string(),
                outcome_label(outcome_symbol),
            ],
        );
        let now = now_micros();
        let traceparent = held
            .headers
            .iter()
            .find(|(name, _)| name == TRACEPARENT)
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_else(|| format!("00-{}-{}-01", &event_id[3..35], &event_id[3..19]));
        let value = DeliveryResult {
            metadata: EventMetadata {
                tenant_id: delivery.tenant_id.clone(),
                event_id,
                source: self.name.clone(),
                r#type: "backbone.delivery.result".to_owned(),
                occurred_at: now,
                produced_at: now,
                trace: TraceContext {
                    traceparent,
                    tracestate: None,
                },
                schema_version: None,
            },
            delivery_key: delivery.key.clone(),
            destination: self.sink.destination(),
            outcome: outcome_symbol,
            attempts: i32::try_from(attempts.max(1)).unwrap_or(i32::MAX),
            destination_reference: reference,
            error_code: code,
            error_message: message,
            source_topic: input.to_owned(),
            source_partition: source.partition,
            source_offset: source.offset,
            amount: source.money.as_ref().map(|m| m.amount),
            currency: source.money.as_ref().map(|m| m.currency.clone()),
        };
        let id = self
            .contracts
            .id(&topic)
            .map_err(|err| SinkError::Publish {
                topic: topic.clone(),
                message: err.to_string(),
            })?;
        let bytes = encode_framed(id, &value).map_err(|err| SinkError::Publish {
            topic: topic.clone(),
            message: err.to_string(),
        })?;
        Ok(OutputRecord {
            key: Some(format!("{}:{}", delivery.tenant_id, delivery.key).into_bytes()),
            topic,
            value: Some(bytes),
            headers: Vec::new(),
        })
    }

    fn dead_letter(
        &self,
        partition: i32,
        offset: i64,
        held: &HeldRecord,
        reason: &str,
        message: &str,
        attempts: u32,
    ) -> OutputRecord {
        let input = InputRecord {
            topic: self.sink.input_topic(),
            partition,
            offset,
            timestamp_ms: held.timestamp_ms,
            key: held.key.as_deref(),
            value: held.value.as_deref(),
            headers: &held.headers,
        };
        let now = SystemTime::now();
        DeadLetter {
            input: &input,
            error_class: "permanent",
            reason,
            message,
            processor: &self.name,
            processor_version: env!("CARGO_PKG_VERSION"),
            attempts: attempts.max(1),
            first_failed_at: now,
        }
        .to_record(now)
    }

    /// Produces `records` and waits until the broker has every one.
    async fn publish(&mut self, records: Vec<OutputRecord>) -> Result<(), SinkError> {
        let timeout = self.settings.produce_timeout;
        let mut sends = Vec::with_capacity(records.len());
        for record in &records {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                headers = headers.insert(rdkafka::message::Header {
                    key: name,
                    value: Some(value),
                });
            }
            let mut future = FutureRecord::<Vec<u8>, Vec<u8>>::to(&record.topic).headers(headers);
            if let Some(key) = &record.key {
                future = future.key(key);
            }
            if let Some(value) = &record.value {
                future = future.payload(value);
            }
            sends.push(self.producer.send(future, timeout));
        }
        let mut produced: BTreeMap<&str, u64> = BTreeMap::new();
        for (record, sent) in records.iter().zip(join_all(sends).await) {
            if let Err((err, _)) = sent {
                return Err(SinkError::Publish {
                    topic: record.topic.clone(),
                    message: not_published(record, &err),
                });
            }
            *produced.entry(record.topic.as_str()).or_default() += 1;
        }
        for (topic, n) in produced {
            self.metrics.record_produced(topic, n);
        }
        Ok(())
    }

    /// Settles one outstanding share of each `(partition, offset)` and stores what became
    /// committable.
    fn settle(&mut self, settled: &[(i32, i64)]) {
        let input = self.sink.input_topic().to_owned();
        let mut partitions = BTreeSet::new();
        for (partition, offset) in settled {
            let Some(track) = self.tracks.get_mut(partition) else {
                continue;
            };
            let Some(held) = track.open.get_mut(offset) else {
                continue;
            };
            held.outstanding = held.outstanding.saturating_sub(1);
            if held.outstanding == 0 {
                if let Some(held) = track.open.remove(offset) {
                    if let Some(age) = held
                        .timestamp_ms
                        .and_then(|ms| backbone_core::metrics::event_age(ms, SystemTime::now()))
                    {
                        self.metrics.observe_end_to_end(&input, age);
                    }
                }
                self.metrics.record_consumed(&input, *partition);
                self.summary.consumed += 1;
            }
            partitions.insert(*partition);
        }
        let partitions: Vec<i32> = partitions.into_iter().collect();
        self.store_offsets(&partitions);
    }

    /// Stores, per partition, the offset below its oldest unsettled record.
    fn store_offsets(&mut self, partitions: &[i32]) {
        let topic = self.sink.input_topic().to_owned();
        for partition in partitions {
            let Some(track) = self.tracks.get_mut(partition) else {
                continue;
            };
            let last_settled = match track.open.keys().next() {
                Some(first_open) => first_open - 1,
                None => match track.highest {
                    Some(highest) => highest,
                    None => continue,
                },
            };
            if last_settled < 0 || track.stored.is_some_and(|s| s >= last_settled) {
                continue;
            }
            match self.consumer.store_offset(&topic, *partition, last_settled) {
                Ok(()) => track.stored = Some(last_settled),
                // Revoked meanwhile: its next owner starts from the last commit.
                Err(err) => {
                    tracing::debug!(sink = %self.name, partition, error = %err, "offset not stored")
                }
            }
        }
    }

    /// Drops everything of partitions revoked in the last rebalance.
    fn forget_revoked(&mut self) {
        let revoked: Vec<i32> = std::mem::take(&mut *lock(&self.consumer.context().revoked));
        if revoked.is_empty() {
            return;
        }
        for partition in &revoked {
            self.tracks.remove(partition);
        }
        self.queue
            .retain(|d| d.sources.iter().all(|s| !revoked.contains(&s.partition)));
        self.immediate.retain(|i| {
            let partition = match i {
                Immediate::DeadLetter { partition, .. }
                | Immediate::AlreadyDelivered { partition, .. } => *partition,
            };
            !revoked.contains(&partition)
        });
        self.sink.revoked(&revoked);
        tracing::info!(sink = %self.name, partitions = ?revoked, "partitions revoked; their unsettled records go to the next owner");
    }

    /// Commits what was stored and leaves the group.
    fn finish(&mut self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => {
                tracing::warn!(sink = %self.name, error = %err, "final commit failed; unsettled records will be delivered again")
            }
        }
        self.consumer.unsubscribe();
    }
}

/// An input record, owned.
struct OwnedInput {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<Header>,
}

impl OwnedInput {
    fn from<M: Message>(message: &M) -> Self {
        let headers = owned_headers(message);
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    fn as_input(&self) -> InputRecord<'_> {
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

/// The consumer's context: lag from statistics, the partitions each rebalance revokes, and
/// whether one assigned partitions since the loop last looked.
struct SinkConsumerContext {
    metered: MeteredContext,
    revoked: Arc<Mutex<Vec<i32>>>,
    assigned: AtomicBool,
}

impl ClientContext for SinkConsumerContext {
    fn stats_raw(&self, statistics: &[u8]) {
        self.metered.stats_raw(statistics);
    }
}

impl ConsumerContext for SinkConsumerContext {
    /// Commits what is stored before partitions leave; what is unsettled is not stored, so
    /// the next owner delivers it again under the same keys.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => tracing::warn!(error = %err, "commit before revocation failed"),
        }
        lock(&self.revoked).extend(partitions_of(list));
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.assigned.store(true, Ordering::SeqCst);
        }
    }
}

/// Why `record` was not published: for a dead letter, the input it carries (from its origin
/// headers), its size and, when the topic refused the size, what to raise. Its input and those
/// after it are not committed, so nothing is lost.
fn not_published(record: &OutputRecord, err: &KafkaError) -> String {
    let origin = |name: &str| {
        record
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let (Some(topic), Some(partition), Some(offset)) = (
        origin(dlq_headers::ORIGIN_TOPIC),
        origin(dlq_headers::ORIGIN_PARTITION),
        origin(dlq_headers::ORIGIN_OFFSET),
    ) else {
        return err.to_string();
    };
    let fix = if refuses_size(err) {
        ": raise runtime.max_dead_letter_bytes and the topic's max.message.bytes, then restart"
    } else {
        ""
    };
    format!(
        "the {}-byte dead letter of {topic}[{partition}]@{offset} was not taken ({err}); nothing from that input on was committed{fix}",
        record.size_bytes()
    )
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn retry_all(message: &str) -> Outcome {
    Outcome::Retry {
        reason: RetryReason::Unavailable,
        message: message.to_owned(),
        after: None,
    }
}

pub(crate) fn destination_label(destination: backbone_schemas::types::Destination) -> &'static str {
    use backbone_schemas::types::Destination;
    match destination {
        Destination::Billing => "billing",
        Destination::Crm => "crm",
        Destination::Analytics => "analytics",
        Destination::Erp => "erp",
        Destination::Unknown => "unknown",
    }
}

fn outcome_label(outcome: DeliveryOutcome) -> &'static str {
    match outcome {
        DeliveryOutcome::Delivered => "delivered",
        DeliveryOutcome::AlreadyDelivered => "already_delivered",
        DeliveryOutcome::Rejected => "rejected",
        DeliveryOutcome::Unknown => "unknown",
    }
}

/// The tenant of a `<tenant>:<id>` key.
fn tenant_of(key: Option<&[u8]>) -> String {
    key.map(String::from_utf8_lossy)
        .and_then(|k| k.split_once(':').map(|(tenant, _)| tenant.to_owned()))
        .unwrap_or_default()
}
