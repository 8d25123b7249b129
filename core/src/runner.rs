//! The consume → process → produce loop shared by every processor.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::watch;

use crate::admin::{self, AdminError, TopicSpec};
use crate::config::{ConfigError, Validate};
use crate::dead_letter::{dlq_topic, DeadLetter};
use crate::endpoint::ObservabilitySettings;
use crate::kafka::KafkaSettings;
use crate::metrics::{event_age, fatal_kind, MeteredContext, RuntimeMetrics};
use crate::processor::{Header, InputRecord, OutputRecord, ProcessError, Processor};

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
}

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
        if self.initial_backoff.is_zero() || self.max_backoff < self.initial_backoff {
            return Err(invalid(
                "max_backoff",
                "must be at least initial_backoff, and initial_backoff more than 0s",
            ));
        }
        Ok(())
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
}

impl RuntimeError {
    /// The `kind` label of the alert metric for this stop.
    pub fn fatal_kind(&self) -> &'static str {
        match self {
            Self::Refused(_) => fatal_kind::AUTH,
            Self::Stopped { kind, .. } if *kind == "authorization" => fatal_kind::AUTH,
            Self::Stopped { .. } | Self::Metrics(_) => fatal_kind::CONFIG,
            Self::Client(_) | Self::Topics(_) | Self::Produce { .. } | Self::Fatal(_) => {
                fatal_kind::KAFKA
            }
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
    ensure_topics(processor, kafka, settings).await?;

    let group = settings.group_id.clone().unwrap_or_else(|| name.clone());
    let mut consumer_config = kafka.consumer_config(&group);
    observability.enable_statistics(&mut consumer_config);
    let consumer: StreamConsumer<MeteredContext> = consumer_config
        .create_with_context(MeteredContext::new(Arc::clone(metrics)))
        .map_err(RuntimeError::Client)?;
    let inputs = processor.input_topics();
    let topics: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(RuntimeError::Client)?;
    metrics.register_topics(&inputs, &processor.output_topics());
    // Stateless processors have nothing to restore: ready once subscribed.
    metrics.readiness().set_ready(true);
    let producer: FutureProducer = kafka
        .producer_config()
        .create()
        .map_err(RuntimeError::Client)?;
    tracing::info!(processor = %name, group = %group, topics = ?topics, "processor started");

    let prefetch = processor.prefetch();
    let mut summary = RunSummary::default();
    let ledger = Ledger {
        consumer: &consumer,
        metrics,
    };
    // Outputs of resolved inputs on their way to the broker, oldest first. Offsets are
    // stored strictly in this order, so a crash never skips an input whose outputs were lost.
    let mut in_flight: InFlight = FuturesOrdered::new();
    loop {
        let message = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(settled) = in_flight.next(), if !in_flight.is_empty() => {
                ledger.record(settled?, &mut summary)?;
                continue;
            }
            message = consumer.recv(), if in_flight.len() < MAX_IN_FLIGHT => message,
        };
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
        let outcome = loop {
            attempts += 1;
            let prepared = match &prefetch {
                Some(prefetch) => prefetch.prefetch(input.value).await,
                None => Ok(()),
            };
            let started = Instant::now();
            let result = prepared.and_then(|()| span.in_scope(|| processor.process(&input)));
            metrics.observe_processing(started.elapsed());
            if result.is_err() && first_failed_at.is_none() {
                first_failed_at = Some(SystemTime::now());
            }
            let detail = match &result {
                Err(ProcessError::Unavailable(detail)) => detail.clone(),
                Err(ProcessError::Transient(detail)) if attempts < settings.max_attempts => {
                    detail.clone()
                }
                _ => break result,
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
                    ledger.drain(&mut in_flight, &mut summary).await?;
                    finish(&consumer, &name);
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
        let mut pending = Pending {
            topic: input.topic.to_owned(),
            partition: input.partition,
            offset: input.offset,
            deliveries: Vec::new(),
            dead_letter: None,
            age: input
                .timestamp_ms
                .and_then(|ms| event_age(ms, SystemTime::now())),
        };
        let records = match outcome {
            Ok(mut outputs) => {
                if let Some(trace) = input.header(TRACEPARENT) {
                    carry_trace(&mut outputs, trace);
                }
                outputs
            }
            Err(ProcessError::Permanent { reason, detail }) => {
                tracing::debug!(processor = %name, topic = input.topic, partition = input.partition,
                    offset = input.offset, reason, "dead-lettering record");
                pending.dead_letter = Some(reason);
                vec![letter("permanent", reason, &detail)]
            }
            Err(ProcessError::Transient(detail)) => {
                tracing::warn!(processor = %name, topic = input.topic, partition = input.partition,
                    offset = input.offset, attempts, "retries exhausted, dead-lettering record");
                pending.dead_letter = Some("retries_exhausted");
                vec![letter("transient", "retries_exhausted", &detail)]
            }
            Err(ProcessError::Fatal { kind, detail }) => {
                // Nothing past the last resolved record is committed: after the fix and a
                // restart this record is processed again.
                ledger.drain(&mut in_flight, &mut summary).await?;
                finish(&consumer, &name);
                return Err(RuntimeError::Stopped { kind, detail });
            }
            Err(ProcessError::Unavailable(_)) => {
                unreachable!("outages are retried above until they pass or shutdown")
            }
        };
        for record in &records {
            let delivery = enqueue(&producer, record, settings.produce_timeout).await?;
            pending.deliveries.push((record.topic.clone(), delivery));
        }
        in_flight.push_back(Box::pin(pending.settle()));
    }
    ledger.drain(&mut in_flight, &mut summary).await?;
    finish(&consumer, &name);
    tracing::info!(processor = %name, ?summary, "processor stopped");
    Ok(summary)
}

async fn ensure_topics<P: Processor>(
    processor: &P,
    kafka: &KafkaSettings,
    settings: &RuntimeSettings,
) -> Result<(), AdminError> {
    let names: BTreeSet<String> = processor
        .output_topics()
        .into_iter()
        .chain(processor.input_topics().iter().map(|t| dlq_topic(t)))
        .collect();
    let specs: Vec<TopicSpec> = names
        .into_iter()
        .map(|name| TopicSpec::new(name, settings.topic_partitions))
        .collect();
    admin::ensure_topics(kafka, &specs, Duration::from_secs(30)).await
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

/// Most inputs whose outputs may be awaiting the broker's acknowledgement at once.
const MAX_IN_FLIGHT: usize = 10_000;

type InFlight = FuturesOrdered<Pin<Box<dyn Future<Output = Result<Settled, RuntimeError>> + Send>>>;

/// A resolved input whose output records (or dead letter) were handed to the producer.
struct Pending {
    topic: String,
    partition: i32,
    offset: i64,
    deliveries: Vec<(String, DeliveryFuture)>,
    dead_letter: Option<&'static str>,
    age: Option<Duration>,
}

/// A resolved input whose records the broker acknowledged.
struct Settled {
    topic: String,
    partition: i32,
    offset: i64,
    produced: BTreeMap<String, u64>,
    dead_letter: Option<&'static str>,
    age: Option<Duration>,
}

impl Pending {
    async fn settle(self) -> Result<Settled, RuntimeError> {
        let mut produced: BTreeMap<String, u64> = BTreeMap::new();
        for (topic, delivery) in self.deliveries {
            match delivery.await {
                Ok(Ok(_)) => *produced.entry(topic).or_default() += 1,
                Ok(Err((source, _))) => return Err(RuntimeError::Produce { topic, source }),
                Err(_) => {
                    return Err(RuntimeError::Produce {
                        topic,
                        source: KafkaError::Canceled,
                    })
                }
            }
        }
        Ok(Settled {
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            produced,
            dead_letter: self.dead_letter,
            age: self.age,
        })
    }
}

/// Stores offsets of settled inputs and counts them.
struct Ledger<'a> {
    consumer: &'a StreamConsumer<MeteredContext>,
    metrics: &'a RuntimeMetrics,
}

impl Ledger<'_> {
    /// Settled: only now may the input's offset be committed.
    fn record(&self, settled: Settled, summary: &mut RunSummary) -> Result<(), RuntimeError> {
        self.consumer
            .store_offset(&settled.topic, settled.partition, settled.offset)
            .map_err(RuntimeError::Client)?;
        self.metrics
            .record_consumed(&settled.topic, settled.partition);
        summary.consumed += 1;
        match settled.dead_letter {
            Some(reason) => {
                self.metrics.record_dead_letter(&settled.topic, reason);
                summary.dead_lettered += 1;
            }
            None => {
                for (topic, n) in &settled.produced {
                    self.metrics.record_produced(topic, *n);
                    summary.produced += n;
                    if let Some(age) = settled.age {
                        self.metrics.observe_end_to_end(topic, age);
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits for everything in flight and records it.
    async fn drain(
        &self,
        in_flight: &mut InFlight,
        summary: &mut RunSummary,
    ) -> Result<(), RuntimeError> {
        while let Some(settled) = in_flight.next().await {
            self.record(settled?, summary)?;
        }
        Ok(())
    }
}

/// Hands `record` to the producer; its delivery is awaited later, in order.
async fn enqueue(
    producer: &FutureProducer,
    record: &OutputRecord,
    timeout: Duration,
) -> Result<DeliveryFuture, RuntimeError> {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for (name, value) in &record.headers {
        headers = headers.insert(rdkafka::message::Header {
            key: name,
            value: Some(value),
        });
    }
    let mut future = FutureRecord::to(&record.topic)
        .payload(&record.value)
        .headers(headers);
    if let Some(key) = &record.key {
        future = future.key(key);
    }
    let deadline = Instant::now() + timeout;
    loop {
        match producer.send_result(future) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                if Instant::now() < deadline =>
            {
                // librdkafka's queue is full: give its sender thread a moment to drain it.
                future = returned;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((source, _)) => {
                return Err(RuntimeError::Produce {
                    topic: record.topic.clone(),
                    source,
                })
            }
        }
    }
}

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

/// Commits stored offsets before leaving the group, so the next owner starts after them.
fn finish(consumer: &StreamConsumer<MeteredContext>, name: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing stored since the last automatic commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(err) => {
            tracing::warn!(processor = %name, error = %err, "final commit failed; uncommitted inputs will be redelivered")
        }
    }
    consumer.unsubscribe();
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
fn pause(consumer: &StreamConsumer<MeteredContext>, topic: &str, partition: i32, paused: bool) {
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
            value: Vec::new(),
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
