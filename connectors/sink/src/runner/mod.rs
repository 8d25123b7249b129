//! The sink loop: consume, accept, batch, deliver behind the circuit breaker, record outcomes,
//! publish results and dead letters, then store offsets. A delivery the destination did not
//! take waits for its retry beside the loop, and a flush's results for the broker's answer,
//! while the loop goes on with the records after them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use backbone_core::admin::{self, AdminError, TopicSpec};
use backbone_core::dead_letter::{dlq_topic, dlq_topic_spec};
use backbone_core::endpoint::ObservabilitySettings;
use backbone_core::kafka::ConsumerFailure;
use backbone_core::metrics::{fatal_kind, MeteredContext, RuntimeMetrics};
use backbone_core::shutdown::{sleep_until, stopped};
use backbone_core::state::StateFailure;
use backbone_core::tenant::{controls_topic_spec, TenantControls};
use backbone_core::{Header, KafkaSettings};
use backbone_schemas::types::{Contract, DeliveryResult};
use backbone_schemas::{OutputContracts, WireCodec};
use futures::StreamExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::watch;

mod accept;
mod deliver;
mod hold;
mod offsets;
mod results;
mod retry;

use crate::circuit::CircuitBreaker;
use crate::ledger::{DeliveryLedger, LedgerError};
use crate::metrics::SinkMetrics;
use crate::settings::SinkSettings;
use crate::{Announcements, Delivery, Money, Outcome, Sink};
use accept::OwnedInput;
use hold::Holds;
use offsets::OpenRecords;
use results::Publishing;
use retry::Retrying;

/// Longest wait for the control topic to be read at start-up.
const CONTROLS_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// The control topic could not be read.
    #[error("tenant controls: {0}")]
    Controls(#[from] backbone_core::state::StateFailure),
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
            Self::Kafka(_)
            | Self::Fatal(_)
            | Self::Admin(_)
            | Self::Publish { .. }
            | Self::Controls(_) => fatal_kind::KAFKA,
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
    announcements: Option<Announcements>,
    ledger: DeliveryLedger,
    metrics: Arc<RuntimeMetrics>,
    sink_metrics: Arc<SinkMetrics>,
    circuit: CircuitBreaker,
    stop: watch::Receiver<bool>,
    open: OpenRecords<HeldRecord>,
    holds: Holds,
    queue: Vec<Delivery<S::Payload>>,
    retrying: Retrying<S::Payload>,
    publishing: Publishing,
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
        let announcements = sink.announcements();
        let mut specs = vec![
            dlq_topic_spec(
                dlq_topic(&input),
                settings.topic_partitions,
                settings.max_dead_letter_bytes,
            ),
            TopicSpec::new(settings.results_topic.clone(), settings.topic_partitions),
        ];
        let mut outputs = vec![settings.results_topic.clone(), dlq_topic(&input)];
        let mut contracts = vec![(settings.results_topic.clone(), DeliveryResult::FULL_NAME)];
        if let Some(announced) = &announcements {
            specs.push(TopicSpec::new(
                announced.topic.clone(),
                settings.topic_partitions,
            ));
            outputs.push(announced.topic.clone());
            contracts.push((announced.topic.clone(), announced.contract));
        }
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
        let controls = {
            let dir = settings.ledger_dir.join(&group).join("controls");
            let (topic, kafka, group) = (
                settings.tenant_controls.clone(),
                context.kafka.clone(),
                group.clone(),
            );
            admin::ensure_topics(
                context.kafka,
                &[controls_topic_spec(&topic)],
                Duration::from_secs(30),
            )
            .await?;
            tokio::task::spawn_blocking(move || {
                TenantControls::follow(&dir, &topic, &kafka, &group, CONTROLS_TIMEOUT)
            })
            .await
            .map_err(|e| StateFailure::Restore(format!("reading tenant controls: {e}")))??
        };
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
        context
            .metrics
            .register_topics(std::slice::from_ref(&input), &outputs);
        context
            .metrics
            .register_event_topics(std::slice::from_ref(&input));
        context.metrics.readiness().set_ready(true);
        let destination = destination_label(sink.destination());
        tracing::info!(sink = %name, group = %group, topic = %input, destination,
            ledger = %ledger_dir.display(), "sink started");
        let contracts = OutputContracts::new(context.codec, contracts);
        Ok(Self {
            sink,
            name,
            destination,
            circuit: CircuitBreaker::new(settings.circuit.clone()),
            settings,
            consumer,
            producer,
            contracts,
            announcements,
            ledger,
            metrics: context.metrics,
            sink_metrics: context.sink_metrics,
            stop,
            open: OpenRecords::default(),
            holds: Holds::new(controls),
            queue: Vec::new(),
            retrying: Retrying::default(),
            publishing: Publishing::new(),
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
            // The input pauses while deliveries wait on an open circuit. With none left (the
            // ledger answered them, or their partitions were revoked), the records read next
            // make the probe; kept paused, the sink would wait for nothing.
            if self.retrying.is_empty() && self.queue.is_empty() {
                self.resume();
            }
            let linger_until = self.batch_started.map(|at| at + self.settings.linger);
            let retry_due = self.retrying.next_due();
            let room = self.queue.len() < self.settings.batch_max
                && self.holds.count() < self.settings.max_held
                && self.retrying.len() < self.settings.max_retrying;
            let publishing = !self.publishing.is_empty();
            let (received, acknowledged) = tokio::select! {
                biased;
                _ = stopped(&mut self.stop) => break,
                Some(done) = self.publishing.next(), if publishing => (None, Some(done)),
                _ = sleep_until(linger_until), if linger_until.is_some() => (None, None),
                _ = sleep_until(retry_due), if retry_due.is_some() => (None, None),
                _ = tick.tick() => (None, None),
                message = self.consumer.recv(), if room => {
                    (Some(message.map(|m| OwnedInput::from(&m))), None)
                }
            };
            if let Some(done) = acknowledged {
                self.acknowledged(done?);
            }
            // A rebalance runs inside `recv`: what it revoked goes before the record counts.
            self.forget_revoked();
            self.settle_assignment();
            let go_on = match received {
                Some(Ok(record)) => self.take_in(record).await?,
                Some(Err(err)) => {
                    let err = SinkError::passing(err)?;
                    tracing::warn!(sink = %self.name, error = %err, "consumer error, continuing");
                    continue;
                }
                None => true,
            };
            if !go_on || !self.release_held().await? {
                break;
            }
            // A scheduled delivery is built from what the ledger holds confirmed (the ERP's
            // adjustment takes the number after the last batch posted), so the sink is asked
            // for one only when no delivery waits for a retry.
            let due = if self.retrying.is_empty() {
                self.sink.due(SystemTime::now(), &self.ledger)
            } else {
                Vec::new()
            };
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
            let retry_is_due = self
                .retrying
                .next_due()
                .is_some_and(|due| due <= Instant::now());
            let send =
                forced || lingered || retry_is_due || self.queue.len() >= self.settings.batch_max;
            if send && !self.flush().await? {
                break;
            }
        }
        // What the broker takes now is committed now, not delivered again by the next run.
        self.published().await?;
        self.finish();
        tracing::info!(sink = %self.name, summary = ?self.summary, "sink stopped");
        Ok(self.summary.clone())
    }

    /// Drops everything of partitions revoked in the last rebalance.
    fn forget_revoked(&mut self) {
        let revoked: Vec<i32> = std::mem::take(&mut *lock(&self.consumer.context().revoked));
        if revoked.is_empty() {
            return;
        }
        self.open.forget(&revoked);
        self.holds.forget(&revoked);
        self.queue
            .retain(|d| d.sources.iter().all(|s| !revoked.contains(&s.partition)));
        self.retrying.forget(&revoked);
        self.sink_metrics.set_retrying(self.retrying.len());
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

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn destination_label(destination: backbone_schemas::types::Destination) -> &'static str {
    use backbone_schemas::types::Destination;
    match destination {
        Destination::Billing => "billing",
        Destination::Crm => "crm",
        Destination::Analytics => "analytics",
        Destination::Erp => "erp",
        Destination::OrderSystems => "order_systems",
        Destination::InvoiceSystems => "invoice_systems",
        Destination::Unknown => "unknown",
    }
}

/// The tenant of a `<tenant>:<id>` key.
fn tenant_of(key: Option<&[u8]>) -> String {
    backbone_core::dead_letter::tenant_of_key(key)
        .map(str::to_owned)
        .unwrap_or_default()
}
