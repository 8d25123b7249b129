//! What the benchmarks' plain rdkafka baselines share: a consumer reading every partition of a
//! topic from its start, without a consumer group's coordination, reporting each partition's end.

use backbone_core::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// A consumer assigned partitions `0..partitions` of `topic` from their first offset, that
/// reports reaching each partition's end (`PartitionEOF`).
pub fn from_start(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BaseConsumer {
    let mut config = kafka.admin_config();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "50");
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}
