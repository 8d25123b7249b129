//! The broker commits and aborts transactions, and hides the records of an aborted one from
//! `read_committed` readers after they reached it: the basis of the exactly-once tests. A
//! `read_uncommitted` reader of the same partition sees them, so the test shows the broker
//! hiding records, not a producer that never sent them.

use std::time::Duration;

use backbone_core::KafkaSettings;
use backbone_testkit::{consume_while, create_topic, shared_settings, unique_topic};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// Every value of `topic` up to and including `last`, read with `isolation`.
async fn values_through(
    settings: &KafkaSettings,
    topic: &str,
    isolation: &str,
    last: &str,
) -> Vec<String> {
    let mut reader = settings.clone();
    reader
        .consumer_properties
        .insert("isolation.level".to_owned(), isolation.to_owned());
    let last = last.to_owned();
    consume_while(
        &reader,
        topic,
        Duration::from_secs(30),
        format!("{topic} through `{last}` ({isolation})"),
        move |read| {
            read.iter()
                .any(|r| r.value.as_deref() == Some(last.as_bytes()))
        },
    )
    .await
    .expect("records")
    .iter()
    .map(|r| String::from_utf8(r.value.clone().unwrap_or_default()).expect("utf8"))
    .collect()
}

#[tokio::test]
async fn read_committed_hides_aborted_records_that_reached_the_broker() {
    let settings = shared_settings();
    let topic = unique_topic("txn");
    create_topic(&settings, &topic, 1)
        .await
        .expect("create topic");

    let mut config = settings.producer_config();
    config.set("transactional.id", unique_topic("txn-producer"));
    let producer: ThreadedProducer<DefaultProducerContext> = config.create().expect("producer");
    let timeout = Duration::from_secs(30);
    producer
        .init_transactions(timeout)
        .expect("init transactions");
    let send = |value: &str| {
        producer
            .send(BaseRecord::to(&topic).key("k").payload(value))
            .map_err(|(e, _)| e)
            .expect("send");
    };

    producer.begin_transaction().expect("begin");
    send("kept-1");
    send("kept-2");
    producer.commit_transaction(timeout).expect("commit");

    producer.begin_transaction().expect("begin");
    send("aborted");
    // Acknowledged by the broker, in its log, before the abort.
    producer.flush(timeout).expect("flush the aborted record");
    producer.abort_transaction(timeout).expect("abort");

    producer.begin_transaction().expect("begin");
    send("kept-3");
    producer.commit_transaction(timeout).expect("commit");

    assert_eq!(
        values_through(&settings, &topic, "read_committed", "kept-3").await,
        ["kept-1", "kept-2", "kept-3"]
    );
    assert_eq!(
        values_through(&settings, &topic, "read_uncommitted", "kept-3").await,
        ["kept-1", "kept-2", "aborted", "kept-3"],
        "the aborted record is in the log"
    );
}
