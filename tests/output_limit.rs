//! An input with an output over `runtime.max_output_bytes`, written once and run in both
//! delivery modes on the shared broker: the input is dead-lettered
//! whole, with none of its outputs and none of its state changes (the count it would have
//! raised, its dedup mark), the stage goes on, and once the limit allows it, the input sent
//! back (as `replay` would) is counted as new, in its place in the account's sequence. An output
//! the broker itself refuses as invalid stops the stage, naming the input, in both modes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backbone_core::admin::{ensure_topics, TopicSpec};
use backbone_core::runner::{TransactionSettings, DEFAULT_MAX_OUTPUT_BYTES};
use backbone_core::{Delivery, KafkaSettings, RuntimeError, RuntimeSettings};
use backbone_testkit::{
    committed_offsets, consume_until, create_topic, produce, shared_settings, tally_counts,
    unique_group, unique_topic, ConsumedRecord, Forward, RunningProcessor, Tally, TestRecord,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// An event id that makes an output of over 1,000 bytes, the smallest limit allowed.
fn long_event_id() -> String {
    format!("long-{}", "x".repeat(1_200))
}

fn settings(
    group: &str,
    transactional_id: Option<&str>,
    max_output_bytes: usize,
) -> RuntimeSettings {
    let mut settings = RuntimeSettings {
        group_id: Some(group.to_owned()),
        topic_partitions: 1,
        max_output_bytes,
        ..RuntimeSettings::default()
    };
    if let Some(id) = transactional_id {
        settings.delivery = Delivery::ExactlyOnce;
        settings.transaction = TransactionSettings {
            transactional_id: Some(id.to_owned()),
            ..TransactionSettings::default()
        };
    }
    settings.state.dir = state_dir(group);
    settings
}

fn state_dir(group: &str) -> PathBuf {
    std::env::temp_dir().join("backbone-state").join(group)
}

/// Waits until `group` has committed `total` on the single partition of `topic`.
async fn await_committed(kafka: &KafkaSettings, group: &str, topic: &str, total: i64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let offsets = committed_offsets(kafka, group, topic).expect("committed offsets");
        if offsets == [(0, Some(total))] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{group} committed {offsets:?}, not {total}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn values(records: &[ConsumedRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

/// The scenario on `kafka`, exactly-once when a `transactional_id` is given.
async fn oversized_output_leaves_no_trace(kafka: KafkaSettings, transactional_id: Option<&str>) {
    let tally = Tally {
        input: unique_topic("tally.in"),
        output: unique_topic("tally.out"),
        dedup: true,
    };
    let dlq = format!("{}.dlq", tally.input);
    let group = unique_group("tally-output-limit");
    create_topic(&kafka, &tally.input, 1)
        .await
        .expect("input topic");
    let long = long_event_id();
    let inputs = [
        ("account-0", "e-0"),
        ("account-0", "e-1"),
        ("account-0", long.as_str()),
        ("account-0", "e-2"),
        ("account-1", "e-3"),
    ];
    let records: Vec<TestRecord> = inputs
        .iter()
        .map(|(account, event)| TestRecord::new(*account, *event))
        .collect();
    produce(&kafka, &tally.input, &records)
        .await
        .expect("produce");

    let running = RunningProcessor::start(
        tally.clone(),
        &kafka,
        settings(&group, transactional_id, 1_000),
    );
    let dead = consume_until(&kafka, &dlq, 1, DEADLINE)
        .await
        .expect("the dead letter");
    let outputs = consume_until(&kafka, &tally.output, 4, DEADLINE)
        .await
        .expect("the other inputs' outputs");
    await_committed(&kafka, &group, &tally.input, 5).await;
    let summary = running.stop(DEADLINE).await;
    assert_eq!(
        (summary.consumed, summary.produced, summary.dead_lettered),
        (5, 4, 1)
    );
    assert_eq!(
        dead[0].header("backbone.dlq.reason").as_deref(),
        Some("output_too_large")
    );
    assert_eq!(dead[0].key.as_deref(), Some(&b"account-0"[..]));
    assert_eq!(dead[0].value.as_deref(), Some(long.as_bytes()));
    // The dead-lettered input did not count: the event after it is the account's third.
    assert_eq!(values(&outputs), ["e-0 1", "e-1 2", "e-2 3", "e-3 1"]);

    // The limit raised, the dead letter sent back to the input: new, and the account's fourth.
    produce(
        &kafka,
        &tally.input,
        &[TestRecord::new(
            dead[0].key.clone().expect("key"),
            dead[0].value.clone().expect("value"),
        )],
    )
    .await
    .expect("the dead letter back to its topic");
    let running = RunningProcessor::start(
        tally.clone(),
        &kafka,
        settings(&group, transactional_id, 4_000),
    );
    let outputs = consume_until(&kafka, &tally.output, 5, DEADLINE)
        .await
        .expect("the replayed input's output");
    await_committed(&kafka, &group, &tally.input, 6).await;
    let summary = running.stop(DEADLINE).await;
    assert_eq!((summary.consumed, summary.duplicates), (1, 0));
    assert_eq!(values(&outputs)[4], format!("{long} 4"));
    let totals = tally_counts(outputs.iter().map(|r| {
        (
            r.key.as_deref().unwrap_or_default(),
            r.value.as_deref().unwrap_or_default(),
        )
    }))
    .expect("no count lost or repeated");
    assert_eq!(totals.values().sum::<u64>(), 5);
}

#[tokio::test]
async fn an_input_with_an_oversized_output_leaves_no_trace_effectively_once() {
    oversized_output_leaves_no_trace(shared_settings(), None).await;
}

#[tokio::test]
async fn an_input_with_an_oversized_output_leaves_no_trace_exactly_once() {
    oversized_output_leaves_no_trace(shared_settings(), Some(&unique_group("tally-output-limit")))
        .await;
}

/// A keyless output to a compacted topic, which the broker refuses as invalid: the stage stops
/// naming the input and the fix, and commits nothing, in either delivery mode.
async fn an_output_the_broker_finds_invalid_stops_the_stage(transactional_id: Option<&str>) {
    let kafka = shared_settings();
    let input = unique_topic("invalid-output.in");
    let output = unique_topic("invalid-output.out");
    let group = unique_group("invalid-output");
    create_topic(&kafka, &input, 1).await.expect("input topic");
    ensure_topics(
        &kafka,
        &[TopicSpec::new(&output, 1).with_config("cleanup.policy", "compact")],
        DEADLINE,
    )
    .await
    .expect("a compacted output topic");
    let keyless = TestRecord {
        key: None,
        ..TestRecord::new("", "a value with no key")
    };
    produce(&kafka, &input, &[keyless]).await.expect("produce");
    let forward = Forward {
        input: input.clone(),
        output: output.clone(),
    };
    let running = RunningProcessor::start(
        forward,
        &kafka,
        settings(&group, transactional_id, DEFAULT_MAX_OUTPUT_BYTES),
    );
    let err = running
        .finished(DEADLINE)
        .await
        .expect_err("the stage stops");
    let text = err.to_string();
    assert!(
        matches!(err, RuntimeError::OutputRefused { .. }),
        "refused, not a passing failure: {text}"
    );
    assert!(
        text.contains(&format!("{input}[0]@0")) && text.contains("compacted topic needs keys"),
        "names the input and the fix: {text}"
    );
    let committed = committed_offsets(&kafka, &group, &input).expect("committed offsets");
    assert!(
        committed.iter().all(|(_, offset)| offset.unwrap_or(0) == 0),
        "nothing committed: {committed:?}"
    );
}

#[tokio::test]
async fn an_output_the_broker_finds_invalid_stops_the_stage_effectively_once() {
    an_output_the_broker_finds_invalid_stops_the_stage(None).await;
}

#[tokio::test]
async fn an_output_the_broker_finds_invalid_stops_the_stage_exactly_once() {
    an_output_the_broker_finds_invalid_stops_the_stage(Some(&unique_group("invalid-output-tx")))
        .await;
}
