//! The shared test broker keeps records, partitions and order as Kafka does.

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_testkit::{
    consume_until, create_topic, produce, shared_settings, unique_topic, TestRecord,
};

#[tokio::test]
async fn isolated_topic_round_trip_keeps_per_key_order() {
    let settings = shared_settings();
    let topic = unique_topic("roundtrip");
    create_topic(&settings, &topic, 3)
        .await
        .expect("create topic");

    let records: Vec<TestRecord> = (0..60)
        .map(|i| TestRecord::new(format!("key-{}", i % 6), format!("{i}")))
        .collect();
    produce(&settings, &topic, &records).await.expect("produce");

    let consumed = consume_until(&settings, &topic, 60, Duration::from_secs(30))
        .await
        .expect("consume");
    assert_eq!(consumed.len(), 60, "no record lost or added");

    let mut per_key: BTreeMap<Vec<u8>, Vec<u32>> = BTreeMap::new();
    let mut partitions_of_key: BTreeMap<Vec<u8>, i32> = BTreeMap::new();
    let mut ordered = consumed.clone();
    ordered.sort_by_key(|r| (r.partition, r.offset));
    for record in &ordered {
        let key = record.key.clone().expect("key kept");
        let value: u32 = String::from_utf8(record.value.clone().expect("value kept"))
            .expect("utf8")
            .parse()
            .expect("number");
        per_key.entry(key.clone()).or_default().push(value);
        let partition = *partitions_of_key.entry(key).or_insert(record.partition);
        assert_eq!(partition, record.partition, "one key, one partition");
    }
    assert_eq!(per_key.len(), 6);
    for values in per_key.values() {
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "order kept per key: {values:?}"
        );
    }
    let used: std::collections::BTreeSet<i32> = consumed.iter().map(|r| r.partition).collect();
    assert!(used.len() > 1, "keys spread over partitions: {used:?}");
}

#[tokio::test]
async fn topics_of_different_tests_do_not_mix() {
    let settings = shared_settings();
    let first = unique_topic("isolated");
    let second = unique_topic("isolated");
    assert_ne!(first, second);
    create_topic(&settings, &first, 1)
        .await
        .expect("create first");
    create_topic(&settings, &second, 1)
        .await
        .expect("create second");
    produce(&settings, &first, &[TestRecord::new("k", "first")])
        .await
        .expect("produce");
    produce(&settings, &second, &[TestRecord::new("k", "second")])
        .await
        .expect("produce");
    let read = consume_until(&settings, &second, 1, Duration::from_secs(30))
        .await
        .expect("consume");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].value.as_deref(), Some(&b"second"[..]));
}
