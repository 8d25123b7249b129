//! Exactly-once delivery on the transaction-capable broker: outputs, changelog writes and input
//! offsets commit together, state survives the loss of the local store through its changelog,
//! and a newer instance with the same transactional id fences the older one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backbone_core::runner::TransactionSettings;
use backbone_core::{Delivery, KafkaSettings, RuntimeError, RuntimeSettings};
use backbone_testkit::{
    committed_offsets, consume_until, create_topic, produce, tally_counts, unique_group,
    unique_topic, RunningProcessor, Tally, TestRecord, TxnBroker,
};

const DEADLINE: Duration = Duration::from_secs(60);

fn exactly_once(group: &str, transactional_id: &str, state_dir: PathBuf) -> RuntimeSettings {
    exactly_once_with_timeout(group, transactional_id, state_dir, Duration::from_secs(60))
}

fn exactly_once_with_timeout(
    group: &str,
    transactional_id: &str,
    state_dir: PathBuf,
    timeout: Duration,
) -> RuntimeSettings {
    let mut settings = RuntimeSettings {
        group_id: Some(group.to_owned()),
        topic_partitions: 2,
        delivery: Delivery::ExactlyOnce,
        transaction: TransactionSettings {
            transactional_id: Some(transactional_id.to_owned()),
            // Transactions of exactly four inputs, cut by count, never by time: the input
            // sequences below put a new event in each (see `with_duplicates`).
            max_records: 4,
            commit_interval: Duration::from_secs(5),
            timeout,
        },
        ..RuntimeSettings::default()
    };
    settings.state.dir = state_dir;
    settings
}

fn state_dir(group: &str) -> PathBuf {
    std::env::temp_dir().join("backbone-state").join(group)
}

/// Event number `i`, for one of four accounts.
fn event(i: usize) -> TestRecord {
    TestRecord::new(format!("account-{}", i % 4), format!("e-{i}"))
}

/// `count` events starting at event number `from`.
fn events(from: usize, count: usize) -> Vec<TestRecord> {
    (from..from + count).map(event).collect()
}

/// Groups of four inputs, each with `new` new events (numbered from `first_new`) and the rest
/// repeats of earlier events (numbered from `first_repeat`). The transaction-capable broker
/// drops the input offsets of a transaction that produced nothing (all duplicates), so every
/// transaction here carries at least one new event.
fn with_duplicates(
    groups: usize,
    new: usize,
    first_new: usize,
    first_repeat: usize,
) -> Vec<TestRecord> {
    let (mut next_new, mut next_repeat) = (first_new, first_repeat);
    let mut records = Vec::new();
    for _ in 0..groups {
        for _ in 0..new {
            records.push(event(next_new));
            next_new += 1;
        }
        for _ in new..4 {
            records.push(event(next_repeat));
            next_repeat += 1;
        }
    }
    records
}

async fn await_committed(kafka: &KafkaSettings, group: &str, topic: &str, total: i64) {
    let started = Instant::now();
    loop {
        let committed: i64 = committed_offsets(kafka, group, topic)
            .expect("committed offsets")
            .iter()
            .map(|(_, o)| o.unwrap_or(0))
            .sum();
        if committed >= total {
            assert_eq!(committed, total, "committed past the input");
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "group {group} committed {committed} of {total}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `expected` outputs and checks each account's counts are exactly 1..=n.
async fn checked_outputs(kafka: &KafkaSettings, topic: &str, expected: usize) -> u64 {
    let outputs = consume_until(kafka, topic, expected, DEADLINE)
        .await
        .expect("outputs");
    let totals = tally_counts(outputs.iter().map(|r| {
        (
            r.key.as_deref().unwrap_or_default(),
            r.value.as_deref().unwrap_or_default(),
        )
    }))
    .expect("no count lost or repeated");
    totals.values().sum()
}

#[tokio::test]
async fn outputs_state_and_offsets_commit_together_and_state_survives_losing_the_local_store() {
    let broker = TxnBroker::start().expect("transaction broker");
    let kafka = broker.settings();
    let tally = Tally {
        input: unique_topic("tally.in"),
        output: unique_topic("tally.out"),
    };
    let group = unique_group("tally");
    let dir = state_dir(&group);
    // One partition: transactions are cut in consumption order, which is then the input order.
    create_topic(&kafka, &tally.input, 1)
        .await
        .expect("input topic");

    // 60 new events and 20 repeats of the first 20.
    produce(&kafka, &tally.input, &with_duplicates(20, 3, 0, 0))
        .await
        .expect("produce");
    let running = RunningProcessor::start(
        tally.clone(),
        &kafka,
        exactly_once(&group, "tally-0", dir.clone()),
    );
    await_committed(&kafka, &group, &tally.input, 80).await;
    let summary = running.stop(DEADLINE).await;
    assert_eq!(
        (summary.consumed, summary.produced, summary.duplicates),
        (80, 60, 20)
    );
    assert_eq!(checked_outputs(&kafka, &tally.output, 60).await, 60);

    // The local store is lost: the next run rebuilds counts and dedup marks from the changelogs.
    std::fs::remove_dir_all(&dir).expect("remove local state");
    // 6 new events and 18 repeats of events 40 to 57.
    produce(&kafka, &tally.input, &with_duplicates(6, 1, 60, 40))
        .await
        .expect("produce");
    let running =
        RunningProcessor::start(tally.clone(), &kafka, exactly_once(&group, "tally-0", dir));
    await_committed(&kafka, &group, &tally.input, 104).await;
    let summary = running.stop(DEADLINE).await;
    assert_eq!(
        (summary.consumed, summary.produced, summary.duplicates),
        (24, 6, 18)
    );
    // The new outputs continue each account's count where the first run left it.
    assert_eq!(checked_outputs(&kafka, &tally.output, 66).await, 66);
}

#[tokio::test]
async fn a_newer_instance_with_the_same_transactional_id_fences_the_older() {
    let broker = TxnBroker::start().expect("transaction broker");
    let kafka = broker.settings();
    let tally = Tally {
        input: unique_topic("tally.in"),
        output: unique_topic("tally.out"),
    };
    create_topic(&kafka, &tally.input, 1)
        .await
        .expect("input topic");
    produce(&kafka, &tally.input, &events(0, 10))
        .await
        .expect("produce");
    let older_group = unique_group("tally-older");
    // A short transaction timeout: the fenced instance gives up on its transaction sooner.
    let older = RunningProcessor::start(
        tally.clone(),
        &kafka,
        exactly_once_with_timeout(
            &older_group,
            "tally-shared",
            state_dir(&older_group),
            Duration::from_secs(10),
        ),
    );
    await_committed(&kafka, &older_group, &tally.input, 10).await;

    // Another group, so that the newer instance does not take the older one's partition: the
    // older keeps receiving records, and its next transaction must be refused.
    let newer_group = unique_group("tally-newer");
    let newer = RunningProcessor::start(
        tally.clone(),
        &kafka,
        exactly_once(&newer_group, "tally-shared", state_dir(&newer_group)),
    );
    await_committed(&kafka, &newer_group, &tally.input, 10).await;
    produce(&kafka, &tally.input, &events(10, 5))
        .await
        .expect("produce");
    let fenced = older.finished(DEADLINE).await;
    assert!(
        matches!(fenced, Err(RuntimeError::Fenced(_))),
        "expected a fenced stop, got {fenced:?}"
    );
    assert_eq!(
        committed_offsets(&kafka, &older_group, &tally.input).expect("offsets")[0].1,
        Some(10),
        "the fenced instance committed nothing more"
    );
    await_committed(&kafka, &newer_group, &tally.input, 15).await;
    let summary = newer.stop(DEADLINE).await;
    assert_eq!((summary.consumed, summary.produced), (15, 15));
}
