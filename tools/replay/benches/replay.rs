//! Replay throughput: records per second republished from a DLQ of 100,000 dead letters to
//! their origin topic by `replay run` (the library call the binary makes), beside a plain
//! rdkafka loop doing the same job in the same run: consume, produce each record's key, value,
//! the headers the DLQ did not add and the six replay headers to its origin partition, await
//! every acknowledgement. The baseline writes the same records; it has no reader thread,
//! filters, checkpoints, audit or resume.
//!
//! Needs a broker: `make bench` starts one; by hand,
//! `BACKBONE_BENCH_BOOTSTRAP=127.0.0.1:9092 cargo bench -p backbone-replay --bench replay`.
//! Each side runs three times, alternating, and the best run of each is kept.

#[path = "baseline.rs"]
mod baseline;

use std::collections::HashSet;
use std::time::{Duration, Instant, UNIX_EPOCH};

use backbone_calendar::{format_rfc3339_ms, now_ms};
use backbone_core::admin::{ensure_topics, TopicSpec};
use backbone_core::dead_letter::{headers as dlq, DeadLetter};
use backbone_core::{InputRecord, KafkaSettings};
use backbone_replay::dlq::is_dlq_header;
use backbone_replay::progress::ProgressMode;
use backbone_replay::republish::{self, headers as replay_headers, RunOptions};
use backbone_replay::Context;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

const RECORDS: usize = 100_000;
const PARTITIONS: i32 = 3;
const VALUE_BYTES: usize = 300;

/// Writes `RECORDS` dead letters of `origin` to `dlq`, as the runtime writes them.
async fn fill_dlq(kafka: &KafkaSettings, origin: &str, dlq: &str) {
    let producer: FutureProducer = kafka.producer_config().create().expect("producer");
    let value = vec![b'x'; VALUE_BYTES];
    let original = vec![(
        "traceparent".to_owned(),
        Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec()),
    )];
    let mut pending = std::collections::VecDeque::new();
    for i in 0..RECORDS {
        let key = format!("tenant:{}", i % 1_000);
        let partition = i32::try_from(i).expect("index") % PARTITIONS;
        let input = InputRecord {
            topic: origin,
            partition,
            offset: i64::try_from(i).expect("offset"),
            timestamp_ms: Some(1_790_000_000_000),
            key: Some(key.as_bytes()),
            value: Some(&value),
            headers: &original,
        };
        let record = DeadLetter {
            input: &input,
            error_class: "permanent",
            reason: "unknown_schema_id",
            message: "schema id 999 is unknown to the registry",
            processor: "usage-validator",
            processor_version: "0.1.0",
            attempts: 1,
            first_failed_at: UNIX_EPOCH + Duration::from_secs(1_790_000_000),
        }
        .to_record(UNIX_EPOCH + Duration::from_secs(1_790_000_001));
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: value.as_deref(),
            });
        }
        let mut future = FutureRecord::<Vec<u8>, Vec<u8>>::to(dlq)
            .headers(headers)
            .partition(partition);
        if let Some(key) = &record.key {
            future = future.key(key);
        }
        if let Some(value) = &record.value {
            future = future.payload(value);
        }
        loop {
            match producer.send_result(future) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    future = back;
                    if let Some(oldest) = pending.pop_front() {
                        oldest
                            .await
                            .expect("delivery")
                            .map_err(|(e, _)| e)
                            .expect("delivered");
                    }
                }
                Err((err, _)) => panic!("produce: {err}"),
            }
        }
    }
    for delivery in pending {
        delivery
            .await
            .expect("delivery")
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
}

/// The baseline: read every partition of `from` to its end and produce each record's key,
/// value, original headers and replay headers to its origin partition of `to`, awaiting every
/// acknowledgement. Returns records per second.
async fn plain_copy(kafka: &KafkaSettings, from: &str, to: &str) -> f64 {
    let started = Instant::now();
    let producer: FutureProducer = kafka.producer_config().create().expect("producer");
    let consumer = baseline::from_start(kafka, "bench.replay.copy", from, PARTITIONS);
    let mut ended = HashSet::new();
    let mut pending = std::collections::VecDeque::new();
    let mut copied = 0usize;
    while ended.len() < usize::try_from(PARTITIONS).expect("partitions") {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let mut headers = OwnedHeaders::new();
                let mut partition = None;
                if let Some(h) = message.headers() {
                    for header in h.iter() {
                        if header.key == dlq::ORIGIN_PARTITION {
                            partition = header
                                .value
                                .and_then(|v| std::str::from_utf8(v).ok())
                                .and_then(|v| v.parse::<i32>().ok());
                        }
                        if !is_dlq_header(header.key) {
                            headers = headers.insert(Header {
                                key: header.key,
                                value: header.value,
                            });
                        }
                    }
                }
                let at = format_rfc3339_ms(now_ms());
                let (source_partition, source_offset) = (
                    message.partition().to_string(),
                    message.offset().to_string(),
                );
                for (key, value) in [
                    (replay_headers::ID, "r-20261127T030000Z-0000"),
                    (replay_headers::AT, at.as_str()),
                    (replay_headers::OPERATOR, "bench"),
                    (replay_headers::SOURCE_TOPIC, from),
                    (replay_headers::SOURCE_PARTITION, &source_partition),
                    (replay_headers::SOURCE_OFFSET, &source_offset),
                ] {
                    headers = headers.insert(Header {
                        key,
                        value: Some(value.as_bytes()),
                    });
                }
                let mut record = FutureRecord::<[u8], [u8]>::to(to).headers(headers);
                if let Some(partition) = partition {
                    record = record.partition(partition);
                }
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if let Some(value) = message.payload() {
                    record = record.payload(value);
                }
                loop {
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            pending.push_back(delivery);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            if let Some(oldest) = pending.pop_front() {
                                oldest
                                    .await
                                    .expect("delivery")
                                    .map_err(|(e, _)| e)
                                    .expect("delivered");
                            }
                        }
                        Err((err, _)) => panic!("produce: {err}"),
                    }
                }
                copied += 1;
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            Some(Err(err)) => panic!("consume: {err}"),
            None => {}
        }
    }
    for delivery in pending {
        delivery
            .await
            .expect("delivery")
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
    assert_eq!(copied, RECORDS, "the baseline copied everything");
    RECORDS as f64 / started.elapsed().as_secs_f64()
}

/// CPU time this process has used, user and system, all threads (from `/proc/self/stat`, in
/// clock ticks of 10 ms); `None` off Linux.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Runs `work`, returning its records per second and the microseconds of CPU this process
/// spent per record.
async fn measured(work: impl std::future::Future<Output = f64>) -> (f64, f64) {
    let before = cpu_seconds();
    let rate = work.await;
    let cpu = match (before, cpu_seconds()) {
        (Some(a), Some(b)) => (b - a) * 1e6 / RECORDS as f64,
        _ => f64::NAN,
    };
    (rate, cpu)
}

/// `replay run <dlq>`: every dead letter back to its origin. Returns records per second.
async fn replay(ctx: &Context, dlq: &str) -> f64 {
    let started = Instant::now();
    let mut options = RunOptions::new(dlq, "bench");
    options.progress = ProgressMode::Hidden;
    let mut out = std::io::sink();
    let summary = republish::run(ctx, &options, &mut out)
        .await
        .expect("replay");
    assert_eq!(summary.sent, RECORDS as u64, "{summary:?}");
    RECORDS as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let bootstrap =
        std::env::var("BACKBONE_BENCH_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let kafka = KafkaSettings::for_servers(bootstrap);
    let run = std::process::id();
    let origin = format!("bench.replay.origin.{run}");
    let dlq = format!("{origin}.dlq");
    let copy = format!("bench.replay.copy.{run}");
    let specs: Vec<TopicSpec> = [&origin, &dlq, &copy]
        .iter()
        .map(|t| TopicSpec::new(t.as_str(), PARTITIONS))
        .collect();
    ensure_topics(&kafka, &specs, Duration::from_secs(30))
        .await
        .expect("topics");
    let filled = Instant::now();
    fill_dlq(&kafka, &origin, &dlq).await;
    println!(
        "replay bench: {RECORDS} dead letters of {VALUE_BYTES}-byte values on {PARTITIONS} partitions written in {:.1}s",
        filled.elapsed().as_secs_f64()
    );
    let mut ctx = Context::new(kafka.clone(), "http://127.0.0.1:9");
    ctx.checkpoint_topic = format!("bench.replay.checkpoints.{run}");
    ctx.audit_topic = format!("bench.replay.audit.{run}");
    let mut baseline: f64 = 0.0;
    let mut replayed: f64 = 0.0;
    for round in 1..=3 {
        let (b, b_cpu) = measured(plain_copy(&kafka, &dlq, &copy)).await;
        let (r, r_cpu) = measured(replay(&ctx, &dlq)).await;
        println!(
            "round {round}: plain loop {b:.0} records/s ({b_cpu:.1} µs CPU per record), replay run {r:.0} records/s ({r_cpu:.1} µs)"
        );
        baseline = baseline.max(b);
        replayed = replayed.max(r);
    }
    println!(
        "replay throughput: baseline (plain rdkafka loop) {baseline:.0} records/s, replay run {replayed:.0} records/s, ratio {:.2}",
        replayed / baseline
    );
}
