//! `replay trace` on a usage topic of 1,000,000 records spread over five days, 100 tenants,
//! the traced event the last record: how long a trace takes with the default window (the
//! last 24 hours) and with a window over the whole topic, beside a plain rdkafka loop reading
//! the whole topic in the same run. The whole-topic trace shows what the key-prefix test buys
//! (only the tenant's records are decoded); the windowed one what the broker's time index
//! buys (only the window's records are read).
//!
//! Needs a broker and the registry: `make bench` starts them; by hand,
//! `BACKBONE_BENCH_BOOTSTRAP=127.0.0.1:9092 BACKBONE_BENCH_REGISTRY_URL=http://127.0.0.1:8081
//! cargo bench -p backbone-replay --bench trace`. Each is run three times, alternating, and
//! the best run of each kept.

#[path = "baseline.rs"]
mod baseline;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use backbone_calendar::now_ms;
use backbone_core::admin::{ensure_topics, TopicSpec};
use backbone_core::KafkaSettings;
use backbone_replay::trace::{self, TopicNames, TraceRequest, Traced, Window, TRACED_TOPICS};
use backbone_replay::Context;
use backbone_schemas::types::{EventMetadata, Quantity, TraceContext, UsageEvent};
use backbone_schemas::wire::encode_framed;
use backbone_schemas::WireCodec;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

const RECORDS: i64 = 1_000_000;
const PARTITIONS: i32 = 3;
const TENANTS: i64 = 100;
const SPAN_MS: i64 = 5 * 24 * 3_600_000;

fn event(tenant: &str, id: &str, at_ms: i64) -> UsageEvent {
    UsageEvent {
        metadata: EventMetadata {
            tenant_id: tenant.to_owned(),
            event_id: id.to_owned(),
            source: "bench".to_owned(),
            r#type: "backbone.usage.recorded".to_owned(),
            occurred_at: at_ms * 1000,
            produced_at: at_ms * 1000,
            trace: TraceContext {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
                tracestate: None,
            },
            schema_version: None,
        },
        customer_id: "c-1".to_owned(),
        subscription_id: None,
        meter_id: "api_calls".to_owned(),
        quantity: Quantity::from_unscaled(1_000_000_000).unwrap_or(Quantity::ZERO),
        unit: "call".to_owned(),
        dimensions: None,
        unique_value: None,
    }
}

/// Writes the topic: record n of tenant `t<n % 100>`, stamped evenly over the five days up to
/// `end_ms`, the last one the traced event `e-last` of tenant `t0`.
async fn fill(kafka: &KafkaSettings, codec: &WireCodec, topic: &str, end_ms: i64) {
    let id = codec
        .contract_id::<UsageEvent>(&format!("{topic}-value"))
        .await
        .expect("register the usage contract");
    let producer: FutureProducer = kafka.producer_config().create().expect("producer");
    let mut pending = VecDeque::new();
    for n in 0..RECORDS {
        let at = end_ms - SPAN_MS + n * SPAN_MS / RECORDS;
        let (tenant, name) = if n == RECORDS - 1 {
            ("t0".to_owned(), "e-last".to_owned())
        } else {
            (format!("t{}", n % TENANTS), format!("e-{n}"))
        };
        let value = encode_framed(id, &event(&tenant, &name, at)).expect("encode");
        let key = format!("{tenant}:c-1");
        let mut record = FutureRecord::to(topic)
            .key(&key)
            .payload(&value)
            .timestamp(at);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if let Some(oldest) = pending.pop_front() {
                        oldest.await.expect("delivery").expect("delivered");
                    }
                }
                Err((err, _)) => panic!("produce: {err}"),
            }
        }
    }
    for delivery in pending {
        delivery.await.expect("delivery").expect("delivered");
    }
}

/// The baseline: every record of `topic` read to the end. Returns seconds.
fn plain_read(kafka: &KafkaSettings, topic: &str) -> f64 {
    let started = Instant::now();
    let consumer = baseline::from_start(kafka, "bench.trace.read", topic, PARTITIONS);
    let (mut ended, mut read) = (HashSet::new(), 0i64);
    while ended.len() < usize::try_from(PARTITIONS).expect("partitions") {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => read += 1,
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            Some(Err(err)) => panic!("consume: {err}"),
            None => {}
        }
    }
    assert_eq!(read, RECORDS, "the baseline read everything");
    started.elapsed().as_secs_f64()
}

/// `replay trace --tenant t0 --event-id e-last` over `window`. Returns seconds and records
/// read.
async fn traced(ctx: &Context, topic: &str, run: u32, window: Window) -> (f64, u64) {
    // Every topic after the usage topic is one that does not exist: only the first hop costs.
    let renamed: BTreeMap<String, String> = TRACED_TOPICS
        .iter()
        .map(|t| {
            let deployed = match *t {
                "usage.events" => topic.to_owned(),
                other => format!("bench.trace.none.{run}.{other}"),
            };
            ((*t).to_owned(), deployed)
        })
        .collect();
    let request = TraceRequest {
        tenant: "t0".to_owned(),
        subject: Traced::Event {
            event_id: "e-last".to_owned(),
            source: None,
        },
        window,
        within_ms: 3_600_000,
        topics: TopicNames::new(renamed, &format!("bench.trace.none.{run}")),
    };
    let started = Instant::now();
    let found = trace::trace(ctx, &request).await.expect("trace");
    assert!(found.found, "the traced event is found");
    (started.elapsed().as_secs_f64(), found.records_read)
}

#[tokio::main]
async fn main() {
    let bootstrap =
        std::env::var("BACKBONE_BENCH_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let registry = std::env::var("BACKBONE_BENCH_REGISTRY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8081".to_owned());
    let kafka = KafkaSettings::for_servers(bootstrap);
    let run = std::process::id();
    let topic = format!("bench.trace.usage.{run}");
    // Kept however old its records are: they are stamped up to five days back.
    let spec = TopicSpec::new(&topic, PARTITIONS).with_config("retention.ms", "-1");
    ensure_topics(&kafka, &[spec], Duration::from_secs(30))
        .await
        .expect("topic");
    let codec = WireCodec::new(registry.as_str());
    let end_ms = now_ms();
    let filled = Instant::now();
    fill(&kafka, &codec, &topic, end_ms).await;
    println!(
        "trace bench: {RECORDS} usage records of {TENANTS} tenants over five days on {PARTITIONS} partitions written in {:.1}s",
        filled.elapsed().as_secs_f64()
    );
    let ctx = Context::new(kafka.clone(), registry.as_str());
    let last_day = Window {
        since_ms: end_ms - 24 * 3_600_000,
        until_ms: end_ms + 60_000,
    };
    let everything = Window {
        since_ms: end_ms - SPAN_MS - 60_000,
        ..last_day
    };
    let (mut plain, mut whole, mut day) = (f64::MAX, f64::MAX, f64::MAX);
    let (mut whole_read, mut day_read) = (0, 0);
    for round in 1..=3 {
        let k = kafka.clone();
        let t = topic.clone();
        let p = tokio::task::spawn_blocking(move || plain_read(&k, &t))
            .await
            .expect("baseline");
        let (w, w_read) = traced(&ctx, &topic, run, everything).await;
        let (d, d_read) = traced(&ctx, &topic, run, last_day).await;
        println!(
            "round {round}: plain read of the topic {p:.2}s; trace over five days {w:.2}s ({w_read} records read), over the last day {d:.2}s ({d_read} read)"
        );
        (plain, whole, day) = (plain.min(p), whole.min(w), day.min(d));
        (whole_read, day_read) = (w_read, d_read);
    }
    println!(
        "trace: baseline (plain rdkafka read of {RECORDS} records) {plain:.2}s; trace over the whole topic {whole:.2}s ({whole_read} read, ratio {:.2}); trace with the default 24-hour window {day:.2}s ({day_read} read, ratio {:.3})",
        whole / plain,
        day / plain
    );
}
