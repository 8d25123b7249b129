//! Topic administration: the topics a component needs are declared and created at start-up,
//! so a fresh cluster works without a separate provisioning step.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{KafkaSettings, Replication};

/// A topic a component relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count used when the topic has to be created.
    pub partitions: i32,
    /// Topic configs (`cleanup.policy`, `retention.ms`, ...) set when it has to be created.
    pub config: Vec<(String, String)>,
    /// Its replication, when not the component's `[kafka.topics]`.
    pub replication: Option<Replication>,
}

impl TopicSpec {
    /// A topic with `partitions` partitions and the broker's default configs.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            config: Vec::new(),
            replication: None,
        }
    }

    /// The same topic replicated as `replication` says, whatever the component's default.
    pub fn with_replication(mut self, replication: Replication) -> Self {
        self.replication = Some(replication);
        self
    }

    /// The same topic with config `key` set to `value`.
    pub fn with_config(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// The topic config that says how many replicas must hold a write.
const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// How long a topic the broker did not know is waited on before it is asked for again.
const ASKED_AGAIN_AFTER: Duration = Duration::from_millis(50);

/// Why topics could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The broker refused or failed a request.
    #[error("topic `{topic}`: {source}")]
    Kafka {
        /// The topic concerned.
        topic: String,
        /// The client's error.
        source: KafkaError,
    },
    /// The broker could not be reached or did not answer in time.
    #[error("broker at {servers} did not answer a metadata request within {timeout:?}: {source}")]
    Unreachable {
        /// The bootstrap servers tried.
        servers: String,
        /// How long we waited.
        timeout: Duration,
        /// The last error.
        source: KafkaError,
    },
    /// A topic to read does not exist.
    #[error("topic `{topic}` does not exist")]
    Missing {
        /// The topic concerned.
        topic: String,
    },
    /// A topic was created but did not appear in metadata in time.
    #[error("topic `{topic}` did not appear in metadata within {timeout:?}")]
    NotVisible {
        /// The topic concerned.
        topic: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Creates the topics that do not exist yet and waits until all are visible in metadata.
/// Topics that already exist are left as they are. Each is replicated as its spec says, else as
/// `settings.topics` says.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<(), AdminError> {
    let admin: AdminClient<DefaultClientContext> =
        settings
            .admin_config()
            .create()
            .map_err(|source| AdminError::Unreachable {
                servers: settings.bootstrap_servers.clone(),
                timeout,
                source,
            })?;
    // NewTopic borrows its config values: they live here for the request.
    let replicated: Vec<(&TopicSpec, Replication, String)> = topics
        .iter()
        .map(|t| {
            let replication = t.replication.unwrap_or(settings.topics);
            (t, replication, replication.min_insync_replicas.to_string())
        })
        .collect();
    let new_topics: Vec<NewTopic<'_>> = replicated
        .iter()
        .map(|(t, replication, min_insync)| {
            let topic = NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(replication.replication_factor),
            );
            let topic = if t.config.iter().any(|(key, _)| key == MIN_INSYNC_REPLICAS) {
                topic
            } else {
                topic.set(MIN_INSYNC_REPLICAS, min_insync)
            };
            t.config
                .iter()
                .fold(topic, |topic, (key, value)| topic.set(key, value))
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .map_err(|source| AdminError::Unreachable {
            servers: settings.bootstrap_servers.clone(),
            timeout,
            source,
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(AdminError::Kafka {
                    topic,
                    source: KafkaError::AdminOp(code),
                })
            }
        }
    }
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || wait_visible(&settings, &names, timeout))
        .await
        .unwrap_or_else(|join| {
            Err(AdminError::NotVisible {
                topic: format!("(metadata task failed: {join})"),
                timeout,
            })
        })
}

/// Every partition of `topics`, each from its first offset: the assignment of a reader that
/// takes topics whole (a tool reading master data or a period's records). A topic the broker
/// does not know is an error naming it.
pub fn whole_topics<C: Consumer>(
    consumer: &C,
    servers: &str,
    topics: &[&str],
    timeout: Duration,
) -> Result<TopicPartitionList, AdminError> {
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|source| AdminError::Unreachable {
                servers: servers.to_owned(),
                timeout,
                source,
            })?;
        let partitions = metadata
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            return Err(AdminError::Missing {
                topic: (*topic).to_owned(),
            });
        }
        for partition in 0..i32::try_from(partitions).unwrap_or(i32::MAX) {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|source| AdminError::Kafka {
                    topic: (*topic).to_owned(),
                    source,
                })?;
        }
    }
    Ok(assignment)
}

/// [`whole_topics`] of topics the caller has just made sure exist: one the broker asked does
/// not know is asked for again for up to `patience`, since a cluster's brokers learn of a new
/// topic one after the other and a new client may ask one that has not yet.
pub fn whole_topics_created<C: Consumer>(
    consumer: &C,
    servers: &str,
    topics: &[&str],
    timeout: Duration,
    patience: Duration,
) -> Result<TopicPartitionList, AdminError> {
    let deadline = Instant::now() + patience;
    loop {
        match whole_topics(consumer, servers, topics, timeout) {
            Err(AdminError::Missing { .. }) if Instant::now() < deadline => {
                std::thread::sleep(ASKED_AGAIN_AFTER);
            }
            found => return found,
        }
    }
}

/// Partition count of `topic`, or `None` when the broker does not know it.
pub fn partition_count(
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, AdminError> {
    let consumer = metadata_client(settings, timeout)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| AdminError::Unreachable {
            servers: settings.bootstrap_servers.clone(),
            timeout,
            source,
        })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len()))
}

fn metadata_client(
    settings: &KafkaSettings,
    timeout: Duration,
) -> Result<BaseConsumer, AdminError> {
    settings
        .admin_config()
        .create()
        .map_err(|source| AdminError::Unreachable {
            servers: settings.bootstrap_servers.clone(),
            timeout,
            source,
        })
}

fn wait_visible(
    settings: &KafkaSettings,
    topics: &[String],
    timeout: Duration,
) -> Result<(), AdminError> {
    let deadline = Instant::now() + timeout;
    for topic in topics {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if partition_count(settings, topic, left.max(Duration::from_millis(100)))?.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(AdminError::NotVisible {
                    topic: topic.clone(),
                    timeout,
                });
            }
            std::thread::sleep(ASKED_AGAIN_AFTER);
        }
    }
    Ok(())
}
