//! Pass-through throughput of the runtime against plain rdkafka on the same broker, in one run.
//!
//! Needs a broker: `make bench` starts the embedded stack and runs this; by hand,
//! `BACKBONE_BENCH_BOOTSTRAP=127.0.0.1:9092 cargo bench -p backbone-core --bench passthrough`.
//! Both sides move the same records from a topic to another, at least once: the baseline is the
//! plain rdkafka loop (consume, hand to the producer, store the offset once acknowledged), the
//! runtime is `backbone_core::run` with a processor that forwards each record unchanged.
//! Throughput counts from the first record seen on the side's output topic to the last input
//! offset committed, both read from outside the side by one probe client.

use std::time::{Duration, Instant};

use backbone_core::admin::{ensure_topics, TopicSpec};
use backbone_core::{run, KafkaSettings, RunSummary, RuntimeSettings};
use backbone_testkit::Forward;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Enough that the commit interval (100 ms) and the 20 ms poll are small beside a side's run on
/// in-memory storage (200,000 records/s and more).
const RECORDS: usize = 200_000;
const PARTITIONS: i32 = 3;
const VALUE_BYTES: usize = 300;

/// One client that reads `group`'s committed offsets and topics' ends for a whole side.
fn probe_client(kafka: &KafkaSettings, group: &str) -> BaseConsumer {
    let mut config = kafka.admin_config();
    config.set("group.id", group);
    config.create().expect("probe client")
}

fn committed(probe: &BaseConsumer, topic: &str) -> i64 {
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(topic, p);
    }
    probe
        .committed_offsets(list, Duration::from_secs(10))
        .map(|l| {
            l.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn output_end(probe: &BaseConsumer, topic: &str) -> i64 {
    (0..PARTITIONS)
        .map(|p| {
            probe
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("end offsets")
                .1
        })
        .sum()
}

async fn fill(kafka: &KafkaSettings, topic: &str) {
    let producer: FutureProducer = kafka.producer_config().create().expect("producer");
    let value = vec![b'x'; VALUE_BYTES];
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let key = format!("key-{}", i % 1000);
        loop {
            match producer.send_result(FutureRecord::to(topic).key(&key).payload(&value)) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
    for delivery in deliveries {
        delivery.await.expect("delivered").expect("acknowledged");
    }
}

/// The plain rdkafka at-least-once loop: consume, hand to the producer, store each offset
/// once its record is acknowledged (librdkafka commits stored offsets on its interval).
async fn baseline(kafka: KafkaSettings, input: String, output: String, group: String) {
    let consumer: StreamConsumer = kafka.consumer_config(&group).create().expect("consumer");
    consumer.subscribe(&[input.as_str()]).expect("subscribe");
    let producer: FutureProducer = kafka.producer_config().create().expect("producer");
    let mut pending = std::collections::VecDeque::new();
    let mut done = 0usize;
    while done < RECORDS {
        let message = consumer.recv().await.expect("message");
        let record = FutureRecord::to(&output)
            .payload(message.payload().unwrap_or_default())
            .key(message.key().unwrap_or_default());
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("enqueue");
        pending.push_back((message.partition(), message.offset(), delivery));
        while pending.len() > 10_000 || (done + pending.len() == RECORDS && !pending.is_empty()) {
            let (partition, offset, delivery) = pending.pop_front().expect("pending");
            delivery.await.expect("delivered").expect("acknowledged");
            consumer
                .store_offset(&input, partition, offset)
                .expect("store");
            done += 1;
        }
    }
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
}

/// The runtime with a forwarding processor, until `stopped` completes.
async fn runtime(
    kafka: KafkaSettings,
    input: String,
    output: String,
    group: String,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let processor = Forward { input, output };
    let settings = RuntimeSettings {
        group_id: Some(group),
        topic_partitions: PARTITIONS,
        ..RuntimeSettings::default()
    };
    let summary: RunSummary = run(processor, &kafka, &settings, async {
        let _ = stopped.await;
    })
    .await
    .expect("run");
    assert_eq!(summary.consumed as usize, RECORDS);
}

/// Time from the first record on `output` beyond `before` to all of `input` committed by the
/// probe's group, polled every 20 ms; the same clock for both sides.
async fn measure(probe: &BaseConsumer, input: &str, output: &str, before: i64) -> Duration {
    let mut started = None;
    loop {
        if started.is_none() && output_end(probe, output) > before {
            started = Some(Instant::now());
        }
        if committed(probe, input) >= RECORDS as i64 {
            return started.map(|s| s.elapsed()).unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let bootstrap =
        std::env::var("BACKBONE_BENCH_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let mut kafka = KafkaSettings::for_servers(bootstrap.clone());
    kafka.commit_interval = Duration::from_millis(100);
    let run_id = std::process::id();
    let input = format!("bench.passthrough.in.{run_id}");
    let topics: Vec<TopicSpec> = ["in", "out-baseline", "out-runtime"]
        .iter()
        .map(|t| TopicSpec::new(format!("bench.passthrough.{t}.{run_id}"), PARTITIONS))
        .collect();
    ensure_topics(&kafka, &topics, Duration::from_secs(30))
        .await
        .expect("topics");
    fill(&kafka, &input).await;

    // Each side runs twice, alternating, so neither profits alone from a warm broker.
    let mut base = Duration::MAX;
    let mut ours = Duration::MAX;
    for round in 0..2 {
        let group = format!("bench-baseline-{run_id}-{round}");
        let output = format!("bench.passthrough.out-baseline.{run_id}");
        let probe = probe_client(&kafka, &group);
        let before = output_end(&probe, &output);
        let task = tokio::spawn(baseline(
            kafka.clone(),
            input.clone(),
            output.clone(),
            group.clone(),
        ));
        base = base.min(measure(&probe, &input, &output, before).await);
        task.await.expect("baseline");

        let group = format!("bench-runtime-{run_id}-{round}");
        let output = format!("bench.passthrough.out-runtime.{run_id}");
        let probe = probe_client(&kafka, &group);
        let before = output_end(&probe, &output);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(runtime(
            kafka.clone(),
            input.clone(),
            output.clone(),
            group.clone(),
            stopped,
        ));
        ours = ours.min(measure(&probe, &input, &output, before).await);
        let _ = stop.send(());
        task.await.expect("runtime");
    }
    let rate = |d: Duration| RECORDS as f64 / d.as_secs_f64().max(1e-9);
    println!("pass-through, {RECORDS} records of {VALUE_BYTES} bytes, {PARTITIONS} partitions, broker {bootstrap}");
    println!("  plain rdkafka baseline  {:>10.0} records/s", rate(base));
    println!("  backbone runtime        {:>10.0} records/s", rate(ours));
    println!(
        "  ratio runtime/baseline  {:>10.2}",
        rate(ours) / rate(base)
    );
}
