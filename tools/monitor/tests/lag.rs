//! The monitor against the shared broker: a group that stopped consuming shows its lag in
//! records and the age of its oldest unconsumed record, though it has no member left.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backbone_core::KafkaSettings;
use backbone_monitor::{names, LagGauges, LagMonitor, MonitorError, MonitorSettings, PartitionLag};
use backbone_testkit::{
    create_topic, hold_offset_open, produce, shared_settings, unique_group, unique_topic,
    TestRecord,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

/// One measure of `group` alone: the shared test broker holds every other test's groups too.
async fn measure(kafka: &KafkaSettings, group: &str) -> Result<Vec<PartitionLag>, MonitorError> {
    let settings = MonitorSettings {
        groups: vec![group.to_owned()],
        discover: false,
        ..MonitorSettings::default()
    };
    let monitor = LagMonitor::new(kafka, &settings)?;
    tokio::task::spawn_blocking(move || monitor.measure())
        .await
        .expect("task")
}

#[tokio::test]
async fn a_stopped_group_shows_its_lag_in_records_and_seconds() {
    let kafka = shared_settings();
    let topic = unique_topic("monitor");
    let group = unique_group("monitor");
    create_topic(&kafka, &topic, 2).await.expect("topic");
    let two_minutes_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        - 120_000;
    let records: Vec<TestRecord> = (0..30)
        .map(|i| TestRecord {
            partition: Some(i % 2),
            timestamp_ms: Some(two_minutes_ago + i64::from(i)),
            ..TestRecord::new(format!("k-{i}"), format!("v-{i}"))
        })
        .collect();
    produce(&kafka, &topic, &records).await.expect("produce");

    // The group consumed 5 records of partition 0 and all 15 of partition 1, then stopped.
    let mut config = kafka.admin_config();
    config
        .set("group.id", &group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(5))
        .expect("offset");
    offsets
        .add_partition_offset(&topic, 1, Offset::Offset(15))
        .expect("offset");
    consumer
        .commit(&offsets, CommitMode::Sync)
        .expect("commit the group's offsets");
    drop(consumer);

    let lags = measure(&kafka, &group).await.expect("measure");
    let ours: Vec<_> = lags.iter().filter(|l| l.group == group).collect();
    assert_eq!(ours.len(), 2, "{ours:?}");
    let p0 = ours.iter().find(|l| l.partition == 0).expect("partition 0");
    let p1 = ours.iter().find(|l| l.partition == 1).expect("partition 1");
    assert_eq!((p0.committed, p0.end, p0.records()), (5, 15, 10));
    assert_eq!(p1.records(), 0);
    let age = p0.age.expect("the age of the oldest unconsumed record");
    assert!(
        age >= Duration::from_secs(120) && age < Duration::from_secs(600),
        "{age:?}"
    );
    assert_eq!(p1.age, None, "caught up: no age");

    let registry = prometheus::Registry::new();
    let gauges = LagGauges::new(&registry).expect("gauges");
    gauges.publish(&lags);
    let text = backbone_core::metrics::encode(&registry).expect("encode");
    let series = format!(
        "{}{{group=\"{group}\",partition=\"0\",topic=\"{topic}\"}} 10",
        names::LAG_RECORDS
    );
    assert!(text.contains(&series), "{series} in\n{text}");
}

/// A transaction holding offsets of a group (an exactly-once instance between sending its
/// offsets and committing, or one killed there) does not blind the monitor: it measures the
/// group from its last committed offsets, so a group stuck behind such a transaction shows
/// its lag growing.
#[tokio::test]
async fn a_group_with_offsets_in_an_open_transaction_is_measured_from_its_committed_ones() {
    let kafka = shared_settings();
    let topic = unique_topic("monitor");
    let group = unique_group("monitor");
    create_topic(&kafka, &topic, 1).await.expect("topic");
    let records: Vec<TestRecord> = (0..10)
        .map(|i| TestRecord::new(format!("k-{i}"), format!("v-{i}")))
        .collect();
    produce(&kafka, &topic, &records).await.expect("produce");

    let mut config = kafka.admin_config();
    config
        .set("group.id", &group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().expect("consumer");
    let at = |offset| {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&topic, 0, Offset::Offset(offset))
            .expect("offset");
        offsets
    };
    consumer
        .commit(&at(3), CommitMode::Sync)
        .expect("commit the group's offsets");
    let holder = hold_offset_open(&kafka, &group, &topic, 0, 8).expect("offset held open");

    let lags = measure(&kafka, &group)
        .await
        .expect("measured while the transaction is open");
    let ours: Vec<(i64, i64)> = lags
        .iter()
        .filter(|l| l.group == group)
        .map(|l| (l.committed, l.end))
        .collect();
    assert_eq!(
        ours,
        [(3, 10)],
        "from the committed offset, not the pending one"
    );
    holder
        .abort_transaction(Duration::from_secs(30))
        .expect("abort");
}
