//! The `replay` tool: see what failed in a dead-letter topic, bring records back to where they
//! came from once the cause is fixed, move a consumer group to a point in time, and leave an
//! audit record of every change. `main` parses the command line and calls [`cli::execute`];
//! tests and benchmarks call the modules directly.
//!
//! Delivery guarantee of `replay run`: every selected record is republished at least once,
//! and a replay interrupted at any point and resumed by its id sends no record twice (see
//! [`checkpoint`]), within the limits written down in `docs/replay.md`.

pub mod audit;
pub mod checkpoint;
pub mod cli;
pub mod dlq;
pub mod error;
pub mod filter;
pub mod offsets;
pub mod orders;
pub mod progress;
pub mod registry;
pub mod render;
pub mod republish;
pub mod scan;
pub mod tenant;
pub mod time;
pub mod trace;

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_core::admin::{ensure_topics, AdminError, TopicSpec};
use backbone_core::KafkaSettings;
use backbone_schemas::RegistryAccess;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub use error::ReplayError;

/// Topic holding replay checkpoints, compacted, keyed by replay id.
pub const CHECKPOINT_TOPIC: &str = "_backbone.replay-checkpoints";

/// Topic holding audit records, JSON values keyed by action id.
pub const AUDIT_TOPIC: &str = "_backbone.audit";

/// Where the tool connects and how long it waits.
#[derive(Debug, Clone)]
pub struct Context {
    /// Kafka client settings.
    pub kafka: KafkaSettings,
    /// The schema registry, its credentials and CA.
    pub registry: RegistryAccess,
    /// How long a broker or registry request may take before the tool gives up.
    pub timeout: Duration,
    /// Where checkpoints go.
    pub checkpoint_topic: String,
    /// Where audit records go.
    pub audit_topic: String,
}

/// A topic's partitions and their offsets when it was looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOffsets {
    /// The topic.
    pub topic: String,
    /// Low and high watermark by partition.
    pub partitions: BTreeMap<i32, (i64, i64)>,
}

impl TopicOffsets {
    /// Low and high watermark of `partition`, when the topic has it.
    pub fn watermarks(&self, partition: i32) -> Option<(i64, i64)> {
        self.partitions.get(&partition).copied()
    }

    /// Every offset of every partition (or of `only`), in partition order.
    pub fn spans(&self, only: Option<i32>) -> Vec<scan::Span> {
        self.partitions
            .iter()
            .filter(|(p, _)| only.is_none_or(|o| o == **p))
            .map(|(&partition, &(low, high))| scan::Span {
                partition,
                from: low,
                end: high,
            })
            .collect()
    }

    /// What a `--partition` value may be, for messages.
    pub fn partition_forms(&self) -> String {
        format!(
            "a partition of `{}`, which has {} (0 to {})",
            self.topic,
            self.partitions.len(),
            self.partitions.len().saturating_sub(1)
        )
    }

    /// How many records the topic holds (offsets between the watermarks).
    pub fn total(&self) -> i64 {
        self.partitions.values().map(|(low, high)| high - low).sum()
    }
}

impl Context {
    /// A context for `kafka` and the registry `registry` names (a URL converts), with a
    /// 10-second timeout and the default checkpoint and audit topics.
    pub fn new(kafka: KafkaSettings, registry: impl Into<RegistryAccess>) -> Self {
        Self {
            kafka,
            registry: registry.into(),
            timeout: Duration::from_secs(10),
            checkpoint_topic: CHECKPOINT_TOPIC.to_owned(),
            audit_topic: AUDIT_TOPIC.to_owned(),
        }
    }

    fn unreachable(&self, message: String) -> ReplayError {
        ReplayError::BrokerUnreachable {
            servers: self.kafka.bootstrap_servers.clone(),
            timeout: time::format_duration(self.timeout),
            message,
        }
    }

    /// An idempotent producer (the shared producer settings) that gives up on a record after a
    /// minute rather than librdkafka's five.
    pub fn producer(&self) -> Result<FutureProducer, ReplayError> {
        let mut config = self.kafka.producer_config();
        config.set("message.timeout.ms", "60000");
        config
            .create()
            .map_err(|e| ReplayError::kafka("creating a producer", e))
    }

    /// `topic`'s partitions and watermarks; `role` names the topic in errors (`source`, ...).
    pub fn describe_blocking(
        &self,
        topic: &str,
        role: &'static str,
    ) -> Result<TopicOffsets, ReplayError> {
        let consumer: BaseConsumer = self
            .kafka
            .admin_config()
            .create()
            .map_err(|e| self.unreachable(e.to_string()))?;
        let metadata = consumer
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| self.unreachable(e.to_string()))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        let Some(found) = found else {
            return Err(ReplayError::UnknownTopic {
                role,
                topic: topic.to_owned(),
                servers: self.kafka.bootstrap_servers.clone(),
            });
        };
        let mut partitions = BTreeMap::new();
        for partition in found.partitions() {
            let marks = consumer
                .fetch_watermarks(topic, partition.id(), self.timeout)
                .map_err(|e| {
                    self.unreachable(format!(
                        "watermarks of partition {} of `{topic}`: {e}",
                        partition.id()
                    ))
                })?;
            partitions.insert(partition.id(), marks);
        }
        Ok(TopicOffsets {
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// [`Context::describe_blocking`] off the async threads.
    pub async fn describe(
        &self,
        topic: &str,
        role: &'static str,
    ) -> Result<TopicOffsets, ReplayError> {
        let ctx = self.clone();
        let topic = topic.to_owned();
        blocking(move || ctx.describe_blocking(&topic, role)).await
    }

    /// Creates `topic` (one partition, compacted when `compacted`) unless it exists.
    pub async fn ensure_topic(&self, topic: &str, compacted: bool) -> Result<(), ReplayError> {
        let mut spec = TopicSpec::new(topic, 1);
        if compacted {
            spec = spec.with_config("cleanup.policy", "compact");
        }
        ensure_topics(&self.kafka, &[spec], self.timeout)
            .await
            .map_err(|err| match err {
                AdminError::Unreachable { source, .. } => self.unreachable(source.to_string()),
                other => ReplayError::Other {
                    what: format!("creating `{topic}`"),
                    message: other.to_string(),
                },
            })
    }
}

/// Produces one record and waits for its acknowledgement.
pub(crate) async fn publish(
    ctx: &Context,
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    value: &[u8],
) -> Result<(), ReplayError> {
    producer
        .send(FutureRecord::to(topic).key(key).payload(value), ctx.timeout)
        .await
        .map(|_| ())
        .map_err(|(e, _)| ReplayError::kafka(format!("writing to `{topic}`"), e))
}

/// Runs blocking client calls on tokio's blocking threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ReplayError> + Send + 'static,
) -> Result<T, ReplayError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| {
            Err(ReplayError::Other {
                what: "a Kafka client thread".into(),
                message: join.to_string(),
            })
        })
}
