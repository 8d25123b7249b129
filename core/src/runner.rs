//! The consume → process → produce loop shared by every processor.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use backbone_state::changelog_topic;
use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::{oneshot, watch};

use crate::admin::{self, AdminError, TopicSpec};
use crate::config::{ConfigError, Validate};
use crate::dead_letter::{dlq_topic, dlq_topic_spec, DeadLetter, DEFAULT_MAX_DEAD_LETTER_BYTES};
use crate::delivery::{
    enqueue, enqueue_changelog, lock, InFlight, Ledger, Outcome, Pending, RuntimeContext,
    Transaction, Trigger, MAX_IN_FLIGHT,
};
use crate::endpoint::ObservabilitySettings;
use crate::global::GlobalTables;
use crate::kafka::KafkaSettings;
use crate::metrics::{event_age, fatal_kind, MeteredContext, RuntimeMetrics};
use crate::processor::{
    Header, InputRecord, OutputRecord, Prefetch, ProcessError, Processor, Wake,
};
use crate::state::{
    Assignment, ChangelogWrite, Ownership, StateFailure, StateSettings, StateSpec, Tasks,
};

/// How a processor's outputs, state and input offsets become durable together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// At-least-once with content-derived output ids: outputs are acknowledged before state and
    /// offsets commit, and the next stage drops what a redelivery reproduces. Works on every
    /// broker.
    #[default]
    EffectivelyOnce,
    /// Outputs, changelog writes and input offsets commit in one Kafka transaction. Needs a
    /// broker with transactions.
    ExactlyOnce,
}

/// The `[runtime.transaction]` config section, used under exactly-once delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransactionSettings {
    /// Stable id of this instance (one per instance, kept across restarts): a restart with the
    /// same id aborts what the previous run left open and fences it if it still runs.
    pub transactional_id: Option<String>,
    /// Longest a transaction stays open before it commits.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Most inputs in one transaction.
    pub max_records: usize,
    /// How long the broker keeps a transaction open without news before aborting it, and how
    /// long commit and abort calls may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for TransactionSettings {
    fn default() -> Self {
        Self {
            transactional_id: None,
            commit_interval: Duration::from_millis(100),
            max_records: 1000,
            timeout: Duration::from_secs(60),
        }
    }
}

/// The `[runtime]` config section: how the loop runs, the same for every processor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// Consumer group; the processor's name when absent.
    pub group_id: Option<String>,
    /// Partitions of output and dead-letter topics this processor has to create.
    pub topic_partitions: i32,
    /// First wait before retrying a transient failure; doubled per attempt, with jitter.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between retries of a transient failure.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long a produced record may wait for the broker's acknowledgement.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// Attempts at a record failing transiently before it is dead-lettered as
    /// `retries_exhausted`. Outages (registry, broker) are retried without limit.
    pub max_attempts: u32,
    /// Largest output record, as [`OutputRecord::size_bytes`] counts it. An input with a
    /// larger output is dead-lettered as `output_too_large` instead, with none of its outputs
    /// or state changes; keep it within the output topics' `max.message.bytes` less 61 bytes.
    pub max_output_bytes: usize,
    /// Largest dead letter (an input plus headers): the producer sends records this large and
    /// the dead-letter topics this processor creates take them. A larger dead letter stops the
    /// processor without committing its input.
    pub max_dead_letter_bytes: usize,
    /// Effectively-once (default) or exactly-once.
    pub delivery: Delivery,
    /// Transactions under exactly-once delivery.
    pub transaction: TransactionSettings,
    /// Where and how partition state is kept.
    pub state: StateSettings,
}

/// librdkafka's default `message.max.bytes`, below the broker's default topic limit (1 MiB and
/// 12 bytes) by more than a batch's framing.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1_000_000;

/// The range librdkafka accepts for `message.max.bytes`.
const PRODUCER_RECORD_BYTES: std::ops::RangeInclusive<usize> = 1_000..=1_000_000_000;

fn default_partitions() -> i32 {
    3
}

fn default_initial_backoff() -> Duration {
    Duration::from_millis(100)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

fn default_produce_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            group_id: None,
            topic_partitions: default_partitions(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            produce_timeout: default_produce_timeout(),
            max_attempts: 5,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_dead_letter_bytes: DEFAULT_MAX_DEAD_LETTER_BYTES,
            delivery: Delivery::default(),
            transaction: TransactionSettings::default(),
            state: StateSettings::default(),
        }
    }
}

impl Validate for RuntimeSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: format!("runtime.{key}"),
            message: message.to_owned(),
        };
        if self.max_attempts < 1 {
            return Err(invalid("max_attempts", "must be at least 1"));
        }
        if self.topic_partitions < 1 {
            return Err(invalid("topic_partitions", "must be at least 1"));
        }
        if !PRODUCER_RECORD_BYTES.contains(&self.max_output_bytes) {
            return Err(invalid(
                "max_output_bytes",
                "must be between 1000 and 1000000000 (librdkafka's range)",
            ));
        }
        if !PRODUCER_RECORD_BYTES.contains(&self.max_dead_letter_bytes) {
            return Err(invalid(
                "max_dead_letter_bytes",
                "must be between 1000 and 1000000000 (librdkafka's range)",
            ));
        }
        if self.initial_backoff.is_zero() || self.max_backoff < self.initial_backoff {
            return Err(invalid(
                "max_backoff",
                "must be at least initial_backoff, and initial_backoff more than 0s",
            ));
        }
        let transaction = &self.transaction;
        if self.delivery == Delivery::ExactlyOnce
            && transaction
                .transactional_id
                .as_deref()
                .is_none_or(|id| id.trim().is_empty())
        {
            return Err(invalid(
                "transaction.transactional_id",
                "required when runtime.delivery = \"exactly-once\": give each instance its own id and keep it across restarts",
            ));
        }
        if transaction.max_records < 1 {
            return Err(invalid("transaction.max_records", "must be at least 1"));
        }
        if transaction.commit_interval.is_zero()
            || transaction.timeout <= transaction.commit_interval
        {
            return Err(invalid(
                "transaction.timeout",
                "must be longer than transaction.commit_interval, which must be more than 0s",
            ));
        }
        self.state.validate()
    }
}

/// What a run did, for the caller's summary and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Inputs consumed and resolved (processed or dead-lettered).
    pub consumed: u64,
    /// Output records produced and acknowledged.
    pub produced: u64,
    /// Inputs sent to a dead-letter topic.
    pub dead_lettered: u64,
    /// Transient failures that were retried.
    pub retries: u64,
    /// Inputs dropped as duplicates (counted in `consumed` too).
    pub duplicates: u64,
}

/// A record the producer or the broker refused for good, and the input it was made from.
#[derive(Debug)]
pub struct RefusedRecord {
    /// The input, as `topic[partition]@offset`.
    pub input: String,
    /// The record's topic.
    pub topic: String,
    /// The record's size, as [`OutputRecord::size_bytes`] counts it.
    pub bytes: usize,
    /// The client's error.
    pub source: KafkaError,
}

/// Why the loop stopped before being asked to.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A Kafka client could not be created or subscribed.
    #[error("kafka client: {0}")]
    Client(#[source] KafkaError),
    /// Topics could not be made ready at start-up.
    #[error(transparent)]
    Topics(#[from] AdminError),
    /// The broker did not acknowledge an output; the input was not committed and will be
    /// redelivered after a restart.
    #[error("producing to `{topic}` failed: {source}")]
    Produce {
        /// The output's topic.
        topic: String,
        /// The client's error.
        source: KafkaError,
    },
    /// The broker (or the producer) refused an output for good: larger than its topic takes,
    /// or invalid for it. Neither that input nor any after it was committed.
    #[error("`{}` refused a {}-byte output of {} ({}); nothing from that input on was committed: {fix}, then restart",
        .record.topic, .record.bytes, .record.input, .record.source)]
    OutputRefused {
        /// The output and its input.
        record: Box<RefusedRecord>,
        /// What to change.
        fix: &'static str,
    },
    /// A dead letter was refused for good, so its input could be neither processed nor put
    /// aside. Neither that input nor any after it was committed: nothing is lost.
    #[error("`{}` refused the {}-byte dead letter of {} ({}); nothing from that input on was committed: raise runtime.max_dead_letter_bytes and the topic's max.message.bytes, then restart",
        .0.topic, .0.bytes, .0.input, .0.source)]
    DeadLetterRefused(Box<RefusedRecord>),
    /// The consumer hit an error librdkafka cannot recover from.
    #[error("consumer failed fatally: {0}")]
    Fatal(#[source] KafkaError),
    /// The broker refused our credentials or permissions; nothing was dead-lettered or
    /// committed past the last processed record.
    #[error("the broker refused access, fix credentials or ACLs and restart: {0}")]
    Refused(#[source] KafkaError),
    /// The processor reported it cannot work at all.
    #[error("processor stopped ({kind}): {detail}")]
    Stopped {
        /// Failure kind from a fixed set.
        kind: &'static str,
        /// What to fix.
        detail: String,
    },
    /// The metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(String),
    /// A partition's state could not be opened or restored from its changelog.
    #[error("partition state: {0}")]
    State(#[from] StateFailure),
    /// The input topics do not fit the processor (missing, or not co-partitioned).
    #[error("{0}")]
    Inputs(String),
    /// The broker refuses transactions (our durable broker does, by design).
    #[error(
        "the broker refuses transactions; use runtime.delivery = \"effectively-once\" with it: {0}"
    )]
    TransactionsRefused(#[source] KafkaError),
    /// A newer instance with the same transactional id took over; this one must stop.
    #[error("fenced by a newer instance with the same runtime.transaction.transactional_id: {0}")]
    Fenced(#[source] KafkaError),
    /// A transaction failed; it was aborted and nothing of it is committed. The restart
    /// rebuilds state from the changelog and processes its inputs again.
    #[error("transaction failed and was aborted: {0}")]
    Transaction(#[source] KafkaError),
}

impl RuntimeError {
    /// The `kind` label of the alert metric for this stop.
    pub fn fatal_kind(&self) -> &'static str {
        match self {
            Self::Refused(_) => fatal_kind::AUTH,
            Self::Stopped { kind, .. } if *kind == "authorization" => fatal_kind::AUTH,
            Self::TransactionsRefused(_) => fatal_kind::AUTH,
            Self::Stopped { .. }
            | Self::Metrics(_)
            | Self::Inputs(_)
            | Self::State(_)
            | Self::OutputRefused { .. }
            | Self::DeadLetterRefused(_) => fatal_kind::CONFIG,
            Self::Client(_)
            | Self::Topics(_)
            | Self::Produce { .. }
            | Self::Fatal(_)
            | Self::Fenced(_)
            | Self::Transaction(_) => fatal_kind::KAFKA,
        }
    }
}

/// Runs `processor` until `shutdown` completes, then commits what was processed and returns.
/// Metrics go to a registry of its own; binaries use [`run_with`] to export them.
pub async fn run<P, S>(
    processor: P,
    kafka: &KafkaSettings,
    settings: &RuntimeSettings,
    shutdown: S,
) -> Result<RunSummary, RuntimeError>
where
    P: Processor,
    S: Future<Output = ()> + Send + 'static,
{
    let metrics = RuntimeMetrics::new(&prometheus::Registry::new(), processor.name())
        .map_err(|e| RuntimeError::Metrics(e.to_string()))?;
    let observability = ObservabilitySettings::default();
    run_with(
        processor,
        kafka,
        settings,
        &observability,
        Arc::new(metrics),
        shutdown,
    )
    .await
}

/// Like [`run`], recording into `metrics` (which an endpoint may be serving).
pub async fn run_with<P, S>(
    mut processor: P,
    kafka: &KafkaSettings,
    settings: &RuntimeSettings,
    observability: &ObservabilitySettings,
    metrics: Arc<RuntimeMetrics>,
    shutdown: S,
) -> Result<RunSummary, RuntimeError>
where
    P: Processor,
    S: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop) = watch::channel(false);
    let stopper = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let result = run_loop(
        &mut processor,
        kafka,
        settings,
        observability,
        &metrics,
        stop,
    )
    .await;
    stopper.abort();
    if let Err(err) = &result {
        metrics.record_fatal(err.fatal_kind());
    }
    result
}

async fn run_loop<P: Processor>(
    processor: &mut P,
    kafka: &KafkaSettings,
    settings: &RuntimeSettings,
    observability: &ObservabilitySettings,
    metrics: &Arc<RuntimeMetrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<RunSummary, RuntimeError> {
    let name = processor.name().to_owned();
    let version = env!("CARGO_PKG_VERSION");
    let spec = processor.state();
    // The group is the deployment's identity: state directories and changelogs are named for
    // it, so two deployments of one processor never share state.
    let group = settings.group_id.clone().unwrap_or_else(|| name.clone());
    ensure_topics(processor, &group, &spec, kafka, settings).await?;
    let exactly_once = settings.delivery == Delivery::ExactlyOnce;
    let globals = load_globals(&spec, &group, kafka, settings, metrics).await?;

    let producer = create_producer(kafka, settings)?;
    let transaction = exactly_once.then(|| Arc::new(Mutex::new(Transaction::default())));
    let assignment = Arc::new(Assignment::new(&group, &spec));
    let context = RuntimeContext {
        metered: MeteredContext::new(Arc::clone(metrics)),
        assignment: Arc::clone(&assignment),
        producer: producer.clone(),
        transaction: transaction.clone(),
        timeout: settings.produce_timeout,
    };
    let mut consumer_config = kafka.consumer_config(&group);
    observability.enable_statistics(&mut consumer_config);
    if exactly_once {
        // Input offsets commit inside the transaction, never on their own.
        consumer_config.set("enable.auto.commit", "false");
    }
    if !spec.is_stateless() {
        // Partition n of every input topic must land on the instance holding partition n's state.
        consumer_config.set("partition.assignment.strategy", "range");
    }
    let consumer: StreamConsumer<RuntimeContext> = consumer_config
        .create_with_context(context)
        .map_err(RuntimeError::Client)?;
    let inputs = processor.input_topics();
    let topics: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(RuntimeError::Client)?;
    metrics.register_topics(&inputs, &processor.output_topics());
    // Ready once subscribed; a partition's restore flips it off until it is done.
    metrics.readiness().set_ready(true);
    tracing::info!(processor = %name, group = %group, topics = ?topics, delivery = ?settings.delivery,
        stores = ?spec.all_stores(), "processor started");

    let mut tasks = Tasks::new(
        &group,
        spec,
        &settings.state,
        kafka,
        Arc::clone(&assignment),
        Arc::clone(metrics),
    );
    let prefetch = processor.prefetch();
    // A processor's own dead letters (records it puts aside later, like a parked event) are
    // held to the dead-letter limit, which the producer enforces, not to the output limit.
    let dead_letter_topics: BTreeSet<String> = inputs.iter().map(|t| dlq_topic(t)).collect();
    let mut summary = RunSummary::default();
    let ledger = Ledger {
        consumer: &consumer,
        metrics,
        store_offsets: !exactly_once,
    };
    let mut stage = Stage {
        consumer: &consumer,
        producer: &producer,
        transaction: transaction.as_deref(),
        settings,
        ledger: &ledger,
    };
    // Dropped before the consumer, whose close revokes (and would commit) the partitions.
    let mut on_error = DivergeOnError {
        transaction: transaction.as_deref(),
        producer: &producer,
        assignment: &assignment,
        timeout: settings.transaction.timeout,
        armed: true,
    };
    // Outputs of resolved inputs on their way to the broker, oldest first. Offsets are
    // stored strictly in this order, so a crash never skips an input whose outputs were lost.
    let mut in_flight: InFlight = FuturesOrdered::new();
    // The turn of the latest input to enqueue its changelog writes; see `Pending::settle`.
    let mut last_turn: Option<oneshot::Receiver<()>> = None;
    let wake_interval = processor.wake_interval();
    let mut wake_at = wake_interval.map(|every| Instant::now() + every);
    loop {
        let commit_at = stage
            .transaction
            .and_then(|t| lock(t).due(settings.transaction.commit_interval));
        let message = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(settled) = in_flight.next(), if !in_flight.is_empty() => {
                ledger.record(settled?, &mut summary)?;
                continue;
            }
            _ = sleep_until(commit_at), if commit_at.is_some() => {
                stage.commit(&mut summary)?;
                continue;
            }
            _ = sleep_until(wake_at), if wake_at.is_some() => {
                let woken = Woken {
                    processor: &mut *processor,
                    group: &group,
                    tasks: &mut tasks,
                    globals: globals.as_ref(),
                    prefetch: prefetch.as_deref(),
                };
                if let Err(err) = woken.wake(&mut stage, &mut in_flight, &mut last_turn, &mut summary).await {
                    stage.finish(&mut in_flight, &mut summary).await?;
                    return Err(err);
                }
                wake_at = wake_interval.map(|every| Instant::now() + every);
                continue;
            }
            message = consumer.recv(), if in_flight.len() < MAX_IN_FLIGHT => message,
        };
        // The consumer may have run a rebalance callback inside `recv`.
        stage.after_rebalance(&mut summary)?;
        let message = match message {
            Ok(message) => message,
            Err(err) if is_fatal(&err) => return Err(RuntimeError::Fatal(err)),
            Err(err) if is_refused(&err) => return Err(RuntimeError::Refused(err)),
            Err(err) => {
                tracing::warn!(processor = %name, error = %err, "consumer error, continuing");
                continue;
            }
        };
        let headers = owned_headers(&message);
        let input = InputRecord {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key(),
            value: message.payload(),
            headers: &headers,
        };

        let span = tracing::debug_span!(
            "record",
            topic = input.topic,
            partition = input.partition,
            offset = input.offset,
            traceparent = input
                .header(TRACEPARENT)
                .map(String::from_utf8_lossy)
                .as_deref()
                .unwrap_or("")
        );
        let mut attempts = 0u32;
        let mut first_failed_at = None;
        let mut paused = false;
        let processed = loop {
            attempts += 1;
            let prepared = match &prefetch {
                Some(prefetch) => prefetch.prefetch(input.value).await,
                None => Ok(()),
            };
            let ownership = tasks.task(input.partition).await?;
            let started = Instant::now();
            let tables = globals.as_ref().map(GlobalTables::view);
            let processed = ownership.process(&group, input.partition, tables, |state| {
                let mut outputs =
                    prepared.and_then(|()| span.in_scope(|| processor.process(&input, state)))?;
                if let Some(trace) = input.header(TRACEPARENT) {
                    carry_trace(&mut outputs, trace);
                }
                // Checked before the input's state writes apply and before any output is
                // sent: an output the broker would refuse dead-letters its input whole.
                let limit = settings.max_output_bytes;
                match outputs
                    .iter()
                    .find(|o| o.size_bytes() > limit && !dead_letter_topics.contains(&o.topic))
                {
                    Some(over) => Err(output_too_large(over, limit)),
                    None => Ok(outputs),
                }
            });
            metrics.observe_processing(started.elapsed());
            if processed.result.is_err() && first_failed_at.is_none() {
                first_failed_at = Some(SystemTime::now());
            }
            let detail = match &processed.result {
                Err(ProcessError::Unavailable(detail)) => detail.clone(),
                Err(ProcessError::Transient(detail)) if attempts < settings.max_attempts => {
                    detail.clone()
                }
                _ => break processed,
            };
            summary.retries += 1;
            metrics.record_retry(input.topic);
            if !paused {
                // Stop fetching this partition while its record waits; the loop sleeps
                // instead of spinning.
                pause(&consumer, input.topic, input.partition, true);
                paused = true;
            }
            let wait = backoff(settings, attempts);
            tracing::warn!(processor = %name, topic = input.topic, partition = input.partition,
                offset = input.offset, attempts, ?wait, %detail, "retrying");
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => {
                    // Not resolved: leave its offset unstored so it is redelivered.
                    stage.finish(&mut in_flight, &mut summary).await?;
                    return Ok(summary);
                }
                _ = tokio::time::sleep(wait) => {}
            }
        };
        if paused {
            pause(&consumer, input.topic, input.partition, false);
        }

        let failed_at = first_failed_at.unwrap_or_else(SystemTime::now);
        let letter = |error_class, reason, message: &str| {
            DeadLetter {
                input: &input,
                error_class,
                reason,
                message,
                processor: &name,
                processor_version: version,
                attempts,
                first_failed_at: failed_at,
            }
            .to_record(SystemTime::now())
        };
        let mut outcome = Outcome {
            trigger: Trigger::Input {
                topic: input.topic.to_owned(),
                offset: input.offset,
            },
            partition: input.partition,
            produced: BTreeMap::new(),
            dead_letter: None,
            duplicate: processed.duplicate,
            age: input
                .timestamp_ms
                .and_then(|ms| event_age(ms, SystemTime::now())),
        };
        let records = match processed.result {
            Ok(outputs) => outputs,
            Err(ProcessError::Permanent { reason, detail }) => {
                tracing::debug!(processor = %name, topic = input.topic, partition = input.partition,
                    offset = input.offset, reason, "dead-lettering record");
                outcome.dead_letter = Some(reason);
                vec![letter("permanent", reason, &detail)]
            }
            Err(ProcessError::Transient(detail)) => {
                tracing::warn!(processor = %name, topic = input.topic, partition = input.partition,
                    offset = input.offset, attempts, "retries exhausted, dead-lettering record");
                outcome.dead_letter = Some("retries_exhausted");
                vec![letter("transient", "retries_exhausted", &detail)]
            }
            Err(ProcessError::Fatal { kind, detail }) => {
                // Nothing past the last resolved record is committed: after the fix and a
                // restart this record is processed again.
                stage.finish(&mut in_flight, &mut summary).await?;
                return Err(RuntimeError::Stopped { kind, detail });
            }
            Err(ProcessError::Unavailable(_)) => {
                unreachable!("outages are retried above until they pass or shutdown")
            }
        };
        let ownership = tasks.task(input.partition).await?;
        stage
            .deliver(
                Delivered {
                    records,
                    outcome,
                    changelog: processed.changelog,
                    ownership,
                },
                &mut in_flight,
                &mut last_turn,
                &mut summary,
            )
            .await?;
    }
    stage.finish(&mut in_flight, &mut summary).await?;
    on_error.armed = false;
    tracing::info!(processor = %name, ?summary, "processor stopped");
    Ok(summary)
}

/// Ends a run that stops on an error: the partitions' local state may hold writes whose
/// changelog records were never produced (an input whose output the broker refused) or were
/// aborted, so it is marked diverged and the consumer's close drops it instead of checkpointing
/// it; the next start restores it from the changelog. An open transaction is aborted first, so
/// that the close does not commit it half done.
struct DivergeOnError<'a> {
    transaction: Option<&'a Mutex<Transaction>>,
    producer: &'a FutureProducer,
    assignment: &'a Assignment,
    timeout: Duration,
    /// Cleared once the run finished cleanly.
    armed: bool,
}

impl Drop for DivergeOnError<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(transaction) = self.transaction {
            lock(transaction).abandon(self.producer, self.timeout);
        }
        self.assignment.diverge_all();
    }
}

/// What an input or a wake hands over for delivery: its records, what it resolves, its
/// changelog writes and the partition they belong to.
struct Delivered {
    records: Vec<OutputRecord>,
    outcome: Outcome,
    changelog: Vec<ChangelogWrite>,
    ownership: Arc<Ownership>,
}

/// One round of [`Processor::wake`] calls over the assigned partitions.
struct Woken<'a, P: Processor> {
    processor: &'a mut P,
    group: &'a str,
    tasks: &'a mut Tasks,
    globals: Option<&'a GlobalTables>,
    prefetch: Option<&'a dyn Prefetch>,
}

impl<P: Processor> Woken<'_, P> {
    /// Wakes every partition the consumer is assigned, restoring the state of any not held
    /// yet: a partition whose inputs all came before a restart has work too. A failed wake is
    /// logged and left to the next round; a fatal one stops the processor.
    async fn wake(
        self,
        stage: &mut Stage<'_>,
        in_flight: &mut InFlight,
        last_turn: &mut Option<oneshot::Receiver<()>>,
        summary: &mut RunSummary,
    ) -> Result<(), RuntimeError> {
        let assigned: BTreeSet<i32> = stage
            .consumer
            .assignment()
            .map_err(RuntimeError::Client)?
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        if let Some(prefetch) = self.prefetch {
            // Schema ids a decode from state asked for in the last round.
            if let Err(err) = prefetch.prefetch(None).await {
                tracing::warn!(error = %err, "wake postponed: schemas not resolved");
                return Ok(());
            }
        }
        let tables = self.globals.map(GlobalTables::view);
        for partition in assigned {
            let ownership = self.tasks.task(partition).await?;
            let wake = Wake {
                partition,
                global_updates_then: ownership.woken_at(),
            };
            let processed = ownership.process(self.group, partition, tables, |state| {
                self.processor.wake(&wake, state)
            });
            let records = match processed.result {
                Ok(records) => {
                    ownership.set_woken_at(tables.map_or(0, |t| t.updates));
                    records
                }
                Err(ProcessError::Fatal { kind, detail }) => {
                    return Err(RuntimeError::Stopped { kind, detail })
                }
                Err(err) => {
                    tracing::warn!(partition, error = %err, "wake failed; the next one tries again");
                    continue;
                }
            };
            if records.is_empty() && processed.changelog.is_empty() {
                continue;
            }
            let outcome = Outcome {
                trigger: Trigger::Wake,
                partition,
                produced: BTreeMap::new(),
                dead_letter: None,
                duplicate: false,
                age: None,
            };
            stage
                .deliver(
                    Delivered {
                        records,
                        outcome,
                        changelog: processed.changelog,
                        ownership,
                    },
                    in_flight,
                    last_turn,
                    summary,
                )
                .await?;
        }
        Ok(())
    }
}

/// What the loop needs to commit: the clients, the open transaction and the ledger.
struct Stage<'a> {
    consumer: &'a StreamConsumer<RuntimeContext>,
    producer: &'a FutureProducer,
    transaction: Option<&'a Mutex<Transaction>>,
    settings: &'a RuntimeSettings,
    ledger: &'a Ledger<'a, RuntimeContext>,
}

impl Stage<'_> {
    /// Commits the open transaction, if any, and counts its inputs.
    fn commit(&mut self, summary: &mut RunSummary) -> Result<(), RuntimeError> {
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
                Err(transaction_error(err))
            }
        }
    }

    /// Hands records and changelog writes to the producer: into the open transaction
    /// (exactly-once), or in flight until acknowledged, changelog after outputs (effectively-once).
    async fn deliver(
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
        match self.transaction {
            Some(transaction) => {
                lock(transaction)
                    .begin(self.producer)
                    .map_err(transaction_error)?;
                enqueue(self.producer, &records, &outcome, timeout).await?;
                for record in &records {
                    *outcome.produced.entry(record.topic.clone()).or_default() += 1;
                }
                for write in &changelog {
                    enqueue_changelog(self.producer, write, timeout).await?;
                }
                let full = {
                    let mut transaction = lock(transaction);
                    transaction.add(outcome);
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

    /// Picks up what a rebalance callback committed or failed to commit.
    fn after_rebalance(&mut self, summary: &mut RunSummary) -> Result<(), RuntimeError> {
        if let Some(transaction) = self.transaction {
            let (committed, failure) = {
                let mut transaction = lock(transaction);
                (transaction.take_committed(), transaction.take_failure())
            };
            if let Some(err) = failure {
                self.ledger.metrics.record_transaction(false);
                return Err(transaction_error(err));
            }
            self.ledger.record_committed(committed, summary);
        }
        Ok(())
    }

    /// Settles and commits everything, closes the partitions' state and leaves the group.
    async fn finish(
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

/// Loads the processor's global tables before it joins its group; not ready until then.
async fn load_globals(
    spec: &StateSpec,
    group: &str,
    kafka: &KafkaSettings,
    settings: &RuntimeSettings,
    metrics: &RuntimeMetrics,
) -> Result<Option<GlobalTables>, RuntimeError> {
    if spec.globals().is_empty() {
        return Ok(None);
    }
    metrics.readiness().set_ready(false);
    let dir = settings.state.dir.join(group).join("global");
    let tables = spec.globals().to_vec();
    let kafka = kafka.clone();
    let group = group.to_owned();
    let timeout = settings.state.restore_timeout;
    let globals = tokio::task::spawn_blocking(move || {
        GlobalTables::start(&dir, &tables, &kafka, &group, timeout)
    })
    .await
    .map_err(|e| StateFailure::Restore(format!("loading global tables: {e}")))??;
    Ok(Some(globals))
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

fn create_producer(
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

fn transaction_error(err: KafkaError) -> RuntimeError {
    match err.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced,
        ) => RuntimeError::Fenced(err),
        _ => RuntimeError::Transaction(err),
    }
}

async fn ensure_topics<P: Processor>(
    processor: &P,
    group: &str,
    spec: &StateSpec,
    kafka: &KafkaSettings,
    settings: &RuntimeSettings,
) -> Result<(), RuntimeError> {
    let inputs = processor.input_topics();
    let outputs: BTreeSet<String> = processor.output_topics().into_iter().collect();
    // An output the processor also reads is a repartition topic: records re-keyed so that
    // state keyed differently from the inputs is whole on one partition. It is created with
    // the other inputs' partition count, as the changelog is.
    let (repartition, sources): (Vec<String>, Vec<String>) =
        inputs.iter().cloned().partition(|t| outputs.contains(t));
    let partitions = if spec.is_stateless() {
        None
    } else {
        Some(input_partitions(&sources, kafka)?)
    };
    let mut specs: Vec<TopicSpec> = outputs
        .iter()
        .map(|name| {
            let count = partitions
                .filter(|_| repartition.contains(name))
                .unwrap_or(settings.topic_partitions);
            TopicSpec::new(name.clone(), count)
        })
        .collect();
    let dlqs: BTreeSet<String> = inputs
        .iter()
        .map(|t| dlq_topic(t))
        .filter(|t| !outputs.contains(t))
        .collect();
    specs.extend(dlqs.into_iter().map(|name| {
        dlq_topic_spec(
            name,
            settings.topic_partitions,
            settings.max_dead_letter_bytes,
        )
    }));
    if let Some(partitions) = partitions {
        specs.push(
            TopicSpec::new(changelog_topic(group), partitions)
                .with_config("cleanup.policy", "compact"),
        );
    }
    admin::ensure_topics(kafka, &specs, Duration::from_secs(30)).await?;
    if partitions.is_some() && !repartition.is_empty() {
        // A repartition topic left by an earlier deployment may be sized differently.
        input_partitions(&inputs, kafka)?;
    }
    Ok(())
}

/// The partition count all inputs of a stateful processor share: state of partition n covers
/// partition n of every input, so they must be co-partitioned.
fn input_partitions(inputs: &[String], kafka: &KafkaSettings) -> Result<i32, RuntimeError> {
    let mut counts = BTreeMap::new();
    for topic in inputs {
        let count = admin::partition_count(kafka, topic, Duration::from_secs(10))?.ok_or_else(
            || RuntimeError::Inputs(format!("input topic `{topic}` does not exist; a stateful processor sizes its changelogs from its inputs")),
        )?;
        counts.insert(topic.clone(), count);
    }
    let distinct: BTreeSet<usize> = counts.values().copied().collect();
    match distinct.len() {
        1 => Ok(i32::try_from(counts.values().copied().next().unwrap_or(1)).unwrap_or(i32::MAX)),
        0 => Err(RuntimeError::Inputs("a stateful processor needs at least one input topic".to_owned())),
        _ => Err(RuntimeError::Inputs(format!(
            "input topics of a stateful processor must have the same partition count, found {counts:?}"
        ))),
    }
}

fn owned_headers(message: &BorrowedMessage<'_>) -> Vec<Header> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

/// Completes once shutdown was asked for. Returns `()` rather than the watch's read guard,
/// which must not live across the awaits of the handler that stops the loop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Why an input whose output `over` is larger than `limit` is dead-lettered.
fn output_too_large(over: &OutputRecord, limit: usize) -> ProcessError {
    ProcessError::permanent(
        OUTPUT_TOO_LARGE,
        format!(
            "its output to `{}` is {} bytes, over runtime.max_output_bytes ({limit})",
            over.topic,
            over.size_bytes()
        ),
    )
}

/// Reason of an input dead-lettered because an output of it is over `runtime.max_output_bytes`.
pub const OUTPUT_TOO_LARGE: &str = "output_too_large";

/// The W3C trace-context header.
pub const TRACEPARENT: &str = "traceparent";

/// Gives outputs without a `traceparent` the input's, so a trace follows the event through
/// every stage.
fn carry_trace(outputs: &mut [OutputRecord], trace: &[u8]) {
    for output in outputs {
        if !output.headers.iter().any(|(name, _)| name == TRACEPARENT) {
            output
                .headers
                .push((TRACEPARENT.to_owned(), trace.to_vec()));
        }
    }
}

fn is_fatal(err: &KafkaError) -> bool {
    err.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
}

/// Authorization and authentication failures: retrying cannot help, and dead-lettering would
/// empty the topic into the DLQ, so the processor stops.
fn is_refused(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::Authentication
        )
    )
}

/// Pauses (or resumes) fetching one partition.
fn pause(consumer: &StreamConsumer<RuntimeContext>, topic: &str, partition: i32, paused: bool) {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let result = if paused {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    if let Err(err) = result {
        tracing::warn!(topic, partition, paused, error = %err, "could not change the partition's fetch state");
    }
}

/// Exponential backoff with full jitter, capped at `max_backoff`.
fn backoff(settings: &RuntimeSettings, attempts: u32) -> Duration {
    let exp = settings
        .initial_backoff
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
    let cap = exp.min(settings.max_backoff);
    cap.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_inherit_the_trace_unless_they_carry_their_own() {
        let record = |headers: Vec<Header>| OutputRecord {
            topic: "t".into(),
            key: None,
            value: None,
            headers,
        };
        let own = (TRACEPARENT.to_owned(), b"00-own".to_vec());
        let mut outputs = vec![record(Vec::new()), record(vec![own.clone()])];
        carry_trace(&mut outputs, b"00-input");
        assert_eq!(
            outputs[0].headers,
            vec![(TRACEPARENT.to_owned(), b"00-input".to_vec())]
        );
        assert_eq!(outputs[1].headers, vec![own]);
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        let settings = RuntimeSettings::default();
        for attempts in 1..40 {
            let wait = backoff(&settings, attempts);
            assert!(wait <= settings.max_backoff, "{wait:?}");
            assert!(wait >= settings.initial_backoff / 2, "{wait:?}");
        }
        assert!(backoff(&settings, 30) >= settings.max_backoff / 2);
    }

    #[test]
    fn record_limits_outside_librdkafkas_range_are_refused() {
        let refused = |settings: RuntimeSettings| settings.validate().unwrap_err().to_string();
        assert!(refused(RuntimeSettings {
            max_output_bytes: 999,
            ..RuntimeSettings::default()
        })
        .starts_with("config key `runtime.max_output_bytes`"));
        assert!(refused(RuntimeSettings {
            max_dead_letter_bytes: 1_000_000_001,
            ..RuntimeSettings::default()
        })
        .starts_with("config key `runtime.max_dead_letter_bytes`"));
        assert!(RuntimeSettings::default().validate().is_ok());
    }

    #[test]
    fn backoff_below_initial_is_refused() {
        let settings = RuntimeSettings {
            max_backoff: Duration::from_millis(1),
            ..RuntimeSettings::default()
        };
        assert!(settings
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("config key `runtime.max_backoff`"));
    }
}
