//! The topics the batch is made of, read from their beginning to the end they had when the
//! read began: what was issued by then is in the batch, what comes later is the next
//! adjusting batch's.

use std::time::{Duration, Instant};

use backbone_core::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;

use crate::MonthEndError;

/// A record as read: its key and value (none for a tombstone).
#[derive(Debug, Clone)]
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Key, as text.
    pub key: String,
    /// Value, as framed on the topic.
    pub value: Option<Vec<u8>>,
}

/// Every committed record of `topics` up to their ends now. A topic that does not exist is an
/// error naming it.
pub fn to_end(
    kafka: &KafkaSettings,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<Record>, MonthEndError> {
    let kafka_error = |e: rdkafka::error::KafkaError| MonthEndError::Kafka(e.to_string());
    let mut config = kafka.admin_config();
    config
        .set("group.id", "backbone-month-end")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = config.create().map_err(kafka_error)?;
    let assignment =
        backbone_core::admin::whole_topics(&consumer, &kafka.bootstrap_servers, topics, timeout)
            .map_err(|e| MonthEndError::Kafka(e.to_string()))?;
    let mut ends = Vec::new();
    for element in assignment.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (_, high) = backbone_core::kafka::watermarks(&consumer, topic, partition, timeout)
            .map_err(kafka_error)?;
        if high > 0 {
            ends.push((topic.to_owned(), partition, high));
        }
    }
    consumer.assign(&assignment).map_err(kafka_error)?;
    let mut records = Vec::new();
    let mut quiet_since = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(message) => {
                let message = message.map_err(kafka_error)?;
                quiet_since = Instant::now();
                records.push(Record {
                    topic: message.topic().to_owned(),
                    key: message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    value: message.payload().map(<[u8]>::to_vec),
                });
            }
            None if quiet_since.elapsed() > timeout => {
                return Err(MonthEndError::Kafka(format!(
                    "nothing read for {timeout:?} with {} partitions short of their end",
                    ends.len()
                )))
            }
            None => {}
        }
        // Positions move only as records are read, and past transaction markers too.
        let position = consumer.position().map_err(kafka_error)?;
        ends.retain(|(topic, partition, high)| {
            position
                .find_partition(topic, *partition)
                .and_then(|e| e.offset().to_raw())
                .is_none_or(|offset| offset < *high)
        });
    }
    Ok(records)
}
