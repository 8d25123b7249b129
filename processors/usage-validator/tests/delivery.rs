//! The usage-validator binary against the real broker: every input ends up forwarded or
//! dead-lettered, a graceful stop commits everything, and a crash redelivers, never skips.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use backbone_core::KafkaSettings;
use backbone_testkit::{
    committed_offsets, consume_until, consume_while, create_topic, produce, shared_settings,
    unique_group, unique_topic, ChildProcess, ConsumedRecord, TestRecord,
};

const BINARY: &str = env!("CARGO_BIN_EXE_usage-validator");
const DEADLINE: Duration = Duration::from_secs(60);

struct Topics {
    input: String,
    output: String,
    group: String,
}

impl Topics {
    fn new() -> Self {
        Self {
            input: unique_topic("usage.events"),
            output: unique_topic("usage.validated"),
            group: unique_group("usage-validator"),
        }
    }

    fn spawn(&self, settings: &KafkaSettings) -> ChildProcess {
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
            ],
            Some(&log),
        )
        .expect("start usage-validator")
    }

    fn committed_total(&self, settings: &KafkaSettings) -> i64 {
        committed_offsets(settings, &self.group, &self.input)
            .expect("committed offsets")
            .iter()
            .map(|(_, offset)| offset.unwrap_or(0))
            .sum()
    }
}

fn event(i: usize) -> TestRecord {
    let value = format!(
        r#"{{"tenant_id":"acme","event_id":"e-{i}","source":"api","customer_id":"c-{}","meter":"api_calls","quantity":"{}.5","occurred_at":"2026-11-27T03:00:00Z"}}"#,
        i % 7,
        i % 10
    );
    TestRecord::new(format!("c-{}", i % 7), value)
}

#[tokio::test]
async fn every_input_is_forwarded_or_dead_lettered_and_committed() {
    let settings = shared_settings();
    let topics = Topics::new();
    create_topic(&settings, &topics.input, 3)
        .await
        .expect("input topic");

    let mut records: Vec<TestRecord> = (0..40).map(event).collect();
    records.push(TestRecord::new("c-1", "{not json"));
    records.push(TestRecord::new(
        "c-1",
        r#"{"tenant_id":"acme","event_id":"x","source":"api","customer_id":"c-1","meter":"m","quantity":"-3","occurred_at":"2026-11-27T03:00:00Z"}"#,
    ));
    records.push(TestRecord::new("c-2", r#"{"tenant_id":"acme"}"#));
    produce(&settings, &topics.input, &records)
        .await
        .expect("produce");

    let mut processor = topics.spawn(&settings);
    let forwarded = consume_until(&settings, &topics.output, 40, DEADLINE)
        .await
        .expect("forwarded events");
    let dead = consume_until(&settings, &format!("{}.dlq", topics.input), 3, DEADLINE)
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
        ["contract_violation", "invalid_quantity", "malformed_json"]
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
    let bad_json = dead
        .iter()
        .find(|r| r.header("backbone.dlq.reason").as_deref() == Some("malformed_json"))
        .expect("malformed record dead-lettered");
    assert_eq!(
        bad_json.value.as_deref(),
        Some(&b"{not json"[..]),
        "payload kept as it was"
    );

    let status = processor.stop(DEADLINE).expect("graceful stop");
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        topics.committed_total(&settings),
        43,
        "every input committed on stop"
    );
}

#[tokio::test]
async fn crash_redelivers_and_never_skips() {
    let settings = shared_settings();
    let topics = Topics::new();
    create_topic(&settings, &topics.input, 2)
        .await
        .expect("input topic");
    let total = 400;
    let records: Vec<TestRecord> = (0..total).map(event).collect();
    produce(&settings, &topics.input, &records)
        .await
        .expect("produce");

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

    let status = second.stop(DEADLINE).expect("graceful stop");
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(topics.committed_total(&settings), total as i64);
}

fn idempotency_keys(records: &[ConsumedRecord]) -> BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| r.header("backbone.idempotency.key"))
        .collect()
}
