//! The usage-validator binary against the real broker and registry: every input ends up
//! forwarded or dead-lettered, a graceful stop commits everything, and a crash redelivers,
//! never skips.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use backbone_core::KafkaSettings;
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::types::{EventMetadata, TraceContext, UsageEvent};
use backbone_schemas::wire::{frame, split_frame};
use backbone_schemas::WireCodec;
use backbone_testkit::{
    committed_offsets, consume_until, consume_while, create_topic, end_offsets_total, produce,
    shared_settings, unique_group, unique_topic, ChildProcess, ConsumedRecord, TestRecord,
};

const BINARY: &str = env!("CARGO_BIN_EXE_usage-validator");
const DEADLINE: Duration = Duration::from_secs(60);

struct Topics {
    input: String,
    output: String,
    group: String,
    registry: LocalRegistry,
    codec: WireCodec,
}

impl Topics {
    async fn new() -> Self {
        let registry = LocalRegistry::start(&RegistryConfig::ephemeral(
            shared_settings(),
            &unique_topic("schemas"),
        ))
        .await
        .expect("registry starts");
        let codec = WireCodec::new(registry.url());
        Self {
            input: unique_topic("usage.events"),
            output: unique_topic("usage.validated"),
            group: unique_group("usage-validator"),
            registry,
            codec,
        }
    }

    async fn event(&self, i: usize) -> TestRecord {
        let bytes = self
            .codec
            .encode_contract(&format!("{}-value", self.input), &usage_event(i))
            .await
            .expect("encode");
        TestRecord::new(format!("c-{}", i % 7), bytes)
    }

    /// Publishes `total` valid events to the input topic.
    async fn publish(&self, settings: &KafkaSettings, total: usize) {
        let mut records = Vec::with_capacity(total);
        for i in 0..total {
            records.push(self.event(i).await);
        }
        produce(settings, &self.input, &records)
            .await
            .expect("produce");
    }

    /// Waits until the group has committed `total` inputs.
    async fn await_committed(&self, settings: &KafkaSettings, total: usize) {
        let started = std::time::Instant::now();
        while self.committed_total(settings) < total as i64 {
            assert!(
                started.elapsed() < DEADLINE,
                "the group never committed all {total} inputs"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn spawn(&self, settings: &KafkaSettings) -> ChildProcess {
        self.spawn_listening(settings, "127.0.0.1:0")
    }

    fn spawn_listening(&self, settings: &KafkaSettings, listen: &str) -> ChildProcess {
        let log = std::env::temp_dir().join(format!("{}.log", self.group));
        ChildProcess::spawn(
            Path::new(BINARY),
            &[],
            &[
                (
                    "BACKBONE__KAFKA__BOOTSTRAP_SERVERS",
                    &settings.bootstrap_servers,
                ),
                ("BACKBONE__KAFKA__SESSION_TIMEOUT", "6s"),
                ("BACKBONE__KAFKA__COMMIT_INTERVAL", "200ms"),
                ("BACKBONE__RUNTIME__GROUP_ID", &self.group),
                ("BACKBONE__PROCESSOR__INPUT_TOPIC", &self.input),
                ("BACKBONE__PROCESSOR__OUTPUT_TOPIC", &self.output),
                ("BACKBONE__SCHEMA_REGISTRY__URL", self.registry.url()),
                ("BACKBONE__OBSERVABILITY__LISTEN", listen),
                ("BACKBONE__OBSERVABILITY__STATISTICS_INTERVAL", "200ms"),
                ("BACKBONE__RUNTIME__STATE__DIR", &self.state_dir()),
            ],
            Some(&log),
        )
        .expect("start usage-validator")
    }

    /// This test's state directory, shared by its instances as on one host.
    fn state_dir(&self) -> String {
        std::env::temp_dir()
            .join("backbone-state")
            .join(&self.group)
            .to_string_lossy()
            .into_owned()
    }

    fn committed_total(&self, settings: &KafkaSettings) -> i64 {
        committed_offsets(settings, &self.group, &self.input)
            .expect("committed offsets")
            .iter()
            .map(|(_, offset)| offset.unwrap_or(0))
            .sum()
    }
}

fn usage_event(i: usize) -> UsageEvent {
    UsageEvent {
        metadata: EventMetadata {
            tenant_id: "acme".into(),
            event_id: format!("e-{i}"),
            source: "api".into(),
            r#type: "usage.recorded".into(),
            occurred_at: 1_790_000_000_000_000 + i as i64,
            produced_at: 1_790_000_000_000_000 + i as i64,
            trace: TraceContext {
                traceparent: format!("00-{:032x}-{:016x}-01", i + 1, i + 1),
                tracestate: None,
            },
            schema_version: None,
        },
        customer_id: format!("c-{}", i % 7),
        subscription_id: None,
        meter_id: "api_calls".into(),
        quantity: format!("{}.5", i % 10).parse().expect("quantity"),
        unit: "call".into(),
        dimensions: None,
        unique_value: None,
    }
}

#[tokio::test]
async fn every_input_is_forwarded_or_dead_lettered_and_committed() {
    let settings = shared_settings();
    let topics = Topics::new().await;
    create_topic(&settings, &topics.input, 3)
        .await
        .expect("input topic");

    let mut records = Vec::new();
    for i in 0..40 {
        records.push(topics.event(i).await);
    }
    let good = records[0].value.clone();
    let (id, body) = split_frame(&good).expect("framed");
    let mut negative = usage_event(99);
    negative.quantity = "-3".parse().expect("quantity");
    let negative = topics
        .codec
        .encode_contract(&format!("{}-value", topics.input), &negative)
        .await
        .expect("encode");
    records.push(TestRecord::new("c-1", "{not avro"));
    records.push(TestRecord::new("c-1", negative));
    records.push(TestRecord::new("c-2", frame(id + 500, body)));
    records.push(TestRecord::new("c-2", frame(id, &body[..body.len() - 2])));
    produce(&settings, &topics.input, &records)
        .await
        .expect("produce");

    let mut processor = topics.spawn(&settings);
    let forwarded = consume_until(&settings, &topics.output, 40, DEADLINE)
        .await
        .expect("forwarded events");
    let dead = consume_until(&settings, &format!("{}.dlq", topics.input), 4, DEADLINE)
        .await
        .expect("dead letters");

    let keys: BTreeSet<String> = forwarded
        .iter()
        .map(|r| {
            r.header("backbone.idempotency.key")
                .expect("idempotency key")
        })
        .collect();
    let expected: BTreeSet<String> = (0..40).map(|i| format!("acme/api/e-{i}")).collect();
    assert_eq!(keys, expected);

    let mut reasons: Vec<String> = dead
        .iter()
        .map(|r| r.header("backbone.dlq.reason").expect("reason header"))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "invalid_quantity",
            "undecodable_body",
            "unknown_schema_id",
            "wrong_magic_byte"
        ]
    );
    for letter in &dead {
        assert_eq!(
            letter.header("backbone.origin.topic").as_deref(),
            Some(topics.input.as_str())
        );
        assert!(letter.header("backbone.origin.offset").is_some());
        assert_eq!(
            letter.header("backbone.dlq.processor").as_deref(),
            Some("usage-validator")
        );
    }
    let bad = dead
        .iter()
        .find(|r| r.header("backbone.dlq.reason").as_deref() == Some("wrong_magic_byte"))
        .expect("non-Avro record dead-lettered");
    assert_eq!(
        bad.value.as_deref(),
        Some(&b"{not avro"[..]),
        "payload kept as it was"
    );
    // Valid records are forwarded byte for byte.
    assert!(forwarded
        .iter()
        .any(|r| r.value.as_deref() == Some(good.as_slice())));

    let status = processor.stop(DEADLINE).expect("graceful stop");
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        topics.committed_total(&settings),
        44,
        "every input committed on stop"
    );
}

#[tokio::test]
async fn crash_redelivers_and_never_skips() {
    let settings = shared_settings();
    let topics = Topics::new().await;
    create_topic(&settings, &topics.input, 2)
        .await
        .expect("input topic");
    let total = 3000;
    topics.publish(&settings, total).await;

    let mut first = topics.spawn(&settings);
    consume_until(&settings, &topics.output, 50, DEADLINE)
        .await
        .expect("first instance makes progress");
    first.crash().expect("kill -9");

    let mut second = topics.spawn(&settings);
    // Redelivered duplicates are allowed (the next stage drops them by idempotency key);
    // a missing event is not: wait for every distinct key.
    let forwarded = consume_while(
        &settings,
        &topics.output,
        DEADLINE,
        format!("{total} distinct events"),
        move |records| idempotency_keys(records).len() >= total,
    )
    .await
    .expect("second instance catches up");
    let expected: BTreeSet<String> = (0..total).map(|i| format!("acme/api/e-{i}")).collect();
    assert_eq!(
        idempotency_keys(&forwarded),
        expected,
        "no event lost across the crash"
    );

    // The outputs may all predate the crash; the second instance still has to work through
    // the uncommitted inputs.
    topics.await_committed(&settings, total).await;

    // The dedup state, rebuilt from its changelog after the unclean stop, knows every event.
    let forwarded_before = end_offsets_total(&settings, &topics.output).expect("output end");
    topics.publish(&settings, total).await;
    topics.await_committed(&settings, 2 * total).await;
    let status = second.stop(DEADLINE).expect("graceful stop");
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(topics.committed_total(&settings), 2 * total as i64);
    assert_eq!(
        end_offsets_total(&settings, &topics.output).expect("output end"),
        forwarded_before,
        "a republished event got through after the crash"
    );
}

fn idempotency_keys(records: &[ConsumedRecord]) -> BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| r.header("backbone.idempotency.key"))
        .collect()
}

/// Polls `url` until it answers 200 or `DEADLINE` passes; returns the body.
async fn await_ok(url: &str) -> String {
    let started = std::time::Instant::now();
    loop {
        if let Ok(response) = reqwest::get(url).await {
            if response.status() == 200 {
                return response.text().await.expect("body");
            }
        }
        assert!(started.elapsed() < DEADLINE, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn exports_every_required_metric() {
    let settings = shared_settings();
    let topics = Topics::new().await;
    create_topic(&settings, &topics.input, 1)
        .await
        .expect("input topic");
    let mut records = Vec::new();
    for i in 0..10 {
        records.push(topics.event(i).await);
    }
    records.push(TestRecord::new("c-1", "{not avro"));
    produce(&settings, &topics.input, &records)
        .await
        .expect("produce");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut processor = topics.spawn_listening(&settings, &format!("127.0.0.1:{port}"));
    await_ok(&format!("{base}/health")).await;
    await_ok(&format!("{base}/ready")).await;
    consume_until(&settings, &topics.output, 10, DEADLINE)
        .await
        .expect("forwarded events");

    // Scrape until the counters show every input and librdkafka's statistics gave the lag.
    let started = std::time::Instant::now();
    let text = loop {
        let text = await_ok(&format!("{base}/metrics")).await;
        let consumed = format!(
            "backbone_consumer_records_total{{partition=\"0\",processor=\"usage-validator\",topic=\"{}\"}} 11",
            topics.input
        );
        if text.contains(&consumed) && text.contains("backbone_consumer_lag_records{") {
            break text;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "metrics never caught up:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        backbone_core::metrics::missing_required_metrics(&text),
        Vec::<&str>::new()
    );
    assert!(text.contains(&format!(
        "backbone_dlq_records_total{{processor=\"usage-validator\",reason=\"wrong_magic_byte\",topic=\"{}\"}} 1",
        topics.input
    )), "{text}");
    assert!(
        text.contains(&format!(
            "backbone_producer_records_total{{processor=\"usage-validator\",topic=\"{}\"}} 10",
            topics.output
        )),
        "{text}"
    );
    let status = processor.stop(DEADLINE).expect("graceful stop");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn sigterm_mid_stream_loses_and_repeats_nothing() {
    let settings = shared_settings();
    let topics = Topics::new().await;
    create_topic(&settings, &topics.input, 2)
        .await
        .expect("input topic");
    let total = 3000;
    topics.publish(&settings, total).await;

    let mut first = topics.spawn(&settings);
    consume_until(&settings, &topics.output, 1, DEADLINE)
        .await
        .expect("first instance makes progress");
    let status = first.stop(DEADLINE).expect("exits within the deadline");
    assert!(status.success(), "exit status {status:?}");
    let committed = topics.committed_total(&settings);

    let mut second = topics.spawn(&settings);
    topics.await_committed(&settings, total).await;
    let status = second.stop(DEADLINE).expect("graceful stop");
    assert!(status.success(), "exit status {status:?}");

    // A graceful stop drains what is in flight and commits it: nothing is produced twice.
    let forwarded = consume_until(&settings, &topics.output, total, DEADLINE)
        .await
        .expect("every event forwarded");
    assert_eq!(
        forwarded.len(),
        total,
        "first instance had committed {committed}"
    );
    assert_eq!(idempotency_keys(&forwarded).len(), total);
}

#[tokio::test]
async fn a_second_instance_joining_and_leaving_loses_nothing() {
    let settings = shared_settings();
    let topics = Topics::new().await;
    create_topic(&settings, &topics.input, 4)
        .await
        .expect("input topic");
    let total = 3000;
    topics.publish(&settings, total).await;

    let mut first = topics.spawn(&settings);
    consume_until(&settings, &topics.output, 1, DEADLINE)
        .await
        .expect("first instance makes progress");
    // The second instance joins (partitions move to it), works, and leaves (they move back).
    let mut second = topics.spawn(&settings);
    let before = topics.committed_total(&settings);
    let started = std::time::Instant::now();
    // Wait for progress while both are members (or for the end, if the first was quicker).
    while topics.committed_total(&settings) == before && before < total as i64 {
        assert!(
            started.elapsed() < DEADLINE,
            "no progress with two instances"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = second.stop(DEADLINE).expect("second instance leaves");
    assert!(status.success(), "exit status {status:?}");

    topics.await_committed(&settings, total).await;
    let status = first.stop(DEADLINE).expect("graceful stop");
    assert!(status.success(), "exit status {status:?}");

    // Nothing lost; inputs in flight while a partition moved may be forwarded twice, with
    // the same idempotency key, for the next stage to drop.
    let forwarded = consume_while(
        &settings,
        &topics.output,
        DEADLINE,
        format!("{total} distinct events"),
        move |records| idempotency_keys(records).len() >= total,
    )
    .await
    .expect("every event forwarded");
    let expected: BTreeSet<String> = (0..total).map(|i| format!("acme/api/e-{i}")).collect();
    assert_eq!(idempotency_keys(&forwarded), expected);
}

/// The sum of `name`'s samples in a Prometheus exposition whose labels mention `topic`.
fn metric_total(text: &str, name: &str, topic: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(topic))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until `/metrics` on `port` counts `expected` duplicates of `topic`.
async fn await_duplicates(port: u16, topic: &str, expected: u64) {
    let started = std::time::Instant::now();
    loop {
        let text = await_ok(&format!("http://127.0.0.1:{port}/metrics")).await;
        let counted = metric_total(&text, "backbone_dedup_duplicates_total", topic);
        if counted == expected {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE && counted < expected,
            "duplicates counted {counted}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[tokio::test]
async fn duplicates_are_dropped_after_a_restart_and_after_losing_local_state() {
    let settings = shared_settings();
    let topics = Topics::new().await;
    create_topic(&settings, &topics.input, 2)
        .await
        .expect("input topic");
    let unique = 200;
    let forwarded_total = || end_offsets_total(&settings, &topics.output).expect("output end");

    // Each round publishes the same events again; only the first may get through.
    type Round = (&'static str, fn(&Path));
    let rounds: [Round; 3] = [
        ("first sighting", |_| {}),
        ("after a clean restart (local state and checkpoint)", |_| {}),
        (
            "after the local state was lost (full restore from the changelog)",
            |dir| std::fs::remove_dir_all(dir).expect("remove local state"),
        ),
    ];
    for (round, (what, before)) in rounds.into_iter().enumerate() {
        before(Path::new(&topics.state_dir()));
        topics.publish(&settings, unique).await;
        let port = free_port();
        let mut processor = topics.spawn_listening(&settings, &format!("127.0.0.1:{port}"));
        topics
            .await_committed(&settings, unique * (round + 1))
            .await;
        let duplicates = if round == 0 { 0 } else { unique as u64 };
        await_duplicates(port, &topics.input, duplicates).await;
        let status = processor.stop(DEADLINE).expect("graceful stop");
        assert!(status.success(), "{what}: exit status {status:?}");
        // Outputs are acknowledged before inputs commit: everything forwarded is on the topic.
        assert_eq!(forwarded_total(), unique as i64, "{what}");
    }
    let forwarded = consume_until(&settings, &topics.output, unique, DEADLINE)
        .await
        .expect("forwarded events");
    let expected: BTreeSet<String> = (0..unique).map(|i| format!("acme/api/e-{i}")).collect();
    assert_eq!(idempotency_keys(&forwarded), expected);
}
