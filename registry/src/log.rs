//! The `_schemas` topic: one partition, compacted, the registry's only durable state.
//!
//! A reader thread applies every record to the shared [`Index`] in log order and publishes the
//! next offset it will read. Writers append a record, then wait until the reader has applied
//! it, so a response never reports something the index does not show yet.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use backbone_core::admin::{ensure_topics, AdminError, TopicSpec};
use backbone_core::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::index::{Index, LogKey};

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A Kafka request failed.
    #[error("schemas topic `{topic}`: {source}")]
    Kafka {
        /// The topic.
        topic: String,
        /// The client's error.
        source: KafkaError,
    },
    /// The topic could not be created.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The reader did not reach an offset in time.
    #[error("schemas topic `{topic}`: not caught up to offset {offset} within {timeout:?}")]
    Timeout {
        /// The topic.
        topic: String,
        /// The offset awaited.
        offset: i64,
        /// How long.
        timeout: Duration,
    },
    /// The reader thread stopped.
    #[error("schemas topic `{topic}`: reader stopped")]
    ReaderStopped {
        /// The topic.
        topic: String,
    },
}

/// Handle on the `_schemas` topic.
pub struct SchemaLog {
    topic: String,
    settings: KafkaSettings,
    producer: FutureProducer,
    applied: watch::Receiver<i64>,
    index: Arc<RwLock<Index>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    timeout: Duration,
}

impl SchemaLog {
    /// Creates the topic when missing, starts the reader, and waits until the index holds
    /// everything the topic held at start.
    pub async fn open(
        settings: &KafkaSettings,
        topic: &str,
        timeout: Duration,
    ) -> Result<Self, LogError> {
        let spec = TopicSpec::new(topic, 1).with_config("cleanup.policy", "compact");
        ensure_topics(settings, &[spec], timeout).await?;
        let kafka = |source| LogError::Kafka {
            topic: topic.to_owned(),
            source,
        };
        let producer: FutureProducer = settings.producer_config().create().map_err(kafka)?;
        let mut config = settings.admin_config();
        config
            .set(
                "group.id",
                format!("schema-registry-reader-{}", std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let consumer: BaseConsumer = config.create().map_err(kafka)?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(kafka)?;
        consumer.assign(&assignment).map_err(kafka)?;

        let index = Arc::new(RwLock::new(Index::default()));
        let (applied_tx, applied) = watch::channel(0i64);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let index = Arc::clone(&index);
            let stop = Arc::clone(&stop);
            let reader_topic = topic.to_owned();
            std::thread::Builder::new()
                .name("schemas-reader".into())
                .spawn(move || read_loop(&consumer, &reader_topic, &index, &applied_tx, &stop))
                .map_err(|e| LogError::Kafka {
                    topic: topic.to_owned(),
                    source: KafkaError::Subscription(e.to_string()),
                })?;
        }
        let log = Self {
            topic: topic.to_owned(),
            settings: settings.clone(),
            producer,
            applied,
            index,
            stop,
            timeout,
        };
        log.catch_up().await?;
        Ok(log)
    }

    /// The shared index.
    pub fn index(&self) -> &Arc<RwLock<Index>> {
        &self.index
    }

    /// Waits until everything written to the topic so far has been applied.
    pub async fn catch_up(&self) -> Result<(), LogError> {
        let end = self.end_offset().await?;
        self.await_applied(end).await
    }

    /// Appends a record and waits until the index has applied it.
    pub async fn append(&self, key: &LogKey, value: Option<&[u8]>) -> Result<(), LogError> {
        let key = serde_json::to_vec(key).unwrap_or_default();
        let mut record = FutureRecord::to(&self.topic).key(&key).partition(0);
        if let Some(value) = value {
            record = record.payload(value);
        }
        let delivered = self
            .producer
            .send(record, self.timeout)
            .await
            .map_err(|(source, _)| LogError::Kafka {
                topic: self.topic.clone(),
                source,
            })?;
        self.await_applied(delivered.offset + 1).await
    }

    async fn end_offset(&self) -> Result<i64, LogError> {
        let settings = self.settings.clone();
        let topic = self.topic.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = settings.admin_config().create()?;
            // A broker that has just started may not have elected the partition's leader yet.
            let deadline = Instant::now() + timeout;
            loop {
                match consumer.fetch_watermarks(&topic, 0, timeout) {
                    Err(err) if leader_pending(&err) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    outcome => return outcome.map(|(_, high)| high),
                }
            }
        })
        .await
        .map_err(|_| LogError::ReaderStopped {
            topic: self.topic.clone(),
        })?
        .map_err(|source| LogError::Kafka {
            topic: self.topic.clone(),
            source,
        })
    }

    async fn await_applied(&self, offset: i64) -> Result<(), LogError> {
        let mut applied = self.applied.clone();
        let outcome = tokio::time::timeout(self.timeout, async {
            applied.wait_for(|next| *next >= offset).await.map(|_| ())
        })
        .await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(LogError::ReaderStopped {
                topic: self.topic.clone(),
            }),
            Err(_) => Err(LogError::Timeout {
                topic: self.topic.clone(),
                offset,
                timeout: self.timeout,
            }),
        }
    }
}

impl Drop for SchemaLog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether `err` says the partition has no leader serving it yet, which passes by itself.
fn leader_pending(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
        )
    )
}

fn read_loop(
    consumer: &BaseConsumer,
    topic: &str,
    index: &RwLock<Index>,
    applied: &watch::Sender<i64>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let started = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let key = message
                    .key()
                    .and_then(|k| serde_json::from_slice::<LogKey>(k).ok());
                match key {
                    Some(key) => {
                        if let Ok(mut index) = index.write() {
                            index.apply(&key, message.payload());
                        }
                    }
                    None => tracing::warn!(
                        topic,
                        offset = message.offset(),
                        "skipping a record whose key is not a registry key"
                    ),
                }
                applied.send_replace(message.offset() + 1);
            }
            Some(Err(err)) => {
                tracing::warn!(topic, error = %err, elapsed = ?started.elapsed(), "schemas topic read error");
            }
            None => {}
        }
        if applied.is_closed() {
            break;
        }
    }
}
