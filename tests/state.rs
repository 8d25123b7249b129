//! Partition state under effectively-once delivery on the durable broker: a stateful processor
//! keeps exact per-account counts while partitions move between two instances, because each
//! partition's state follows it through its changelog.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backbone_core::{KafkaSettings, RuntimeSettings};
use backbone_testkit::{
    committed_offsets, consume_while, create_topic, produce, shared_settings, unique_group,
    unique_topic, ConsumedRecord, RunningProcessor, Tally, TestRecord,
};

const DEADLINE: Duration = Duration::from_secs(90);

fn settings(group: &str, dir: PathBuf) -> RuntimeSettings {
    let mut settings = RuntimeSettings {
        group_id: Some(group.to_owned()),
        topic_partitions: 4,
        ..RuntimeSettings::default()
    };
    settings.state.dir = dir;
    settings
}

fn committed_total(kafka: &KafkaSettings, group: &str, topic: &str) -> i64 {
    committed_offsets(kafka, group, topic)
        .expect("committed offsets")
        .iter()
        .map(|(_, o)| o.unwrap_or(0))
        .sum()
}

async fn await_committed(kafka: &KafkaSettings, group: &str, topic: &str, at_least: i64) {
    let started = Instant::now();
    while committed_total(kafka, group, topic) < at_least {
        assert!(
            started.elapsed() < DEADLINE,
            "group {group} never committed {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per account, the event id behind each count. A redelivery may repeat an output (same event,
/// same count); lost or stale state would give one count to two events, or leave a gap.
fn counts_by_account(outputs: &[ConsumedRecord]) -> BTreeMap<String, BTreeMap<u64, String>> {
    let mut accounts: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    for record in outputs {
        let account = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default());
        let value = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default());
        let (event, count) = value.split_once(' ').expect("`<event> <count>`");
        let count: u64 = count.parse().expect("count");
        let previous = accounts
            .entry(account.clone().into_owned())
            .or_default()
            .insert(count, event.to_owned());
        if let Some(previous) = previous {
            assert_eq!(
                previous, event,
                "account {account}: count {count} given to two events"
            );
        }
    }
    accounts
}

#[tokio::test]
async fn counts_stay_exact_while_partitions_move_between_instances() {
    let kafka = shared_settings();
    let tally = Tally {
        input: unique_topic("tally.in"),
        output: unique_topic("tally.out"),
    };
    let group = unique_group("tally");
    // A directory per instance, as on two hosts: state moves only through the changelogs.
    let dir = |instance: &str| {
        std::env::temp_dir()
            .join("backbone-state")
            .join(&group)
            .join(instance)
    };
    create_topic(&kafka, &tally.input, 4)
        .await
        .expect("input topic");
    let accounts = 16;
    let event = |i: usize| TestRecord::new(format!("account-{}", i % accounts), format!("e-{i}"));
    let batch = |from: usize| -> Vec<TestRecord> {
        // 500 new events and a repeat of every fifth one.
        (from..from + 500)
            .flat_map(|i| {
                let mut records = vec![event(i)];
                if i % 5 == 0 {
                    records.push(event(i));
                }
                records
            })
            .collect()
    };
    let per_batch = 600;

    produce(&kafka, &tally.input, &batch(0))
        .await
        .expect("produce");
    let first = RunningProcessor::start(tally.clone(), &kafka, settings(&group, dir("first")));
    await_committed(&kafka, &group, &tally.input, 100).await;

    // A second instance joins mid-stream and takes half of the partitions.
    let second = RunningProcessor::start(tally.clone(), &kafka, settings(&group, dir("second")));
    produce(&kafka, &tally.input, &batch(500))
        .await
        .expect("produce");
    await_committed(&kafka, &group, &tally.input, per_batch + 100).await;

    // The first leaves; its partitions and their state move to the second.
    let first_summary = first.stop(DEADLINE).await;
    produce(&kafka, &tally.input, &batch(1000))
        .await
        .expect("produce");
    await_committed(&kafka, &group, &tally.input, 3 * per_batch).await;
    let second_summary = second.stop(DEADLINE).await;
    assert!(
        first_summary.consumed > 0 && second_summary.consumed > 0,
        "both instances worked: {first_summary:?} {second_summary:?}"
    );

    let events = 1500;
    let outputs = consume_while(
        &kafka,
        &tally.output,
        DEADLINE,
        format!("a count for each of {events} events"),
        // A redelivery may repeat an output: count distinct ones.
        move |records| {
            let distinct: std::collections::BTreeSet<(&[u8], &[u8])> = records
                .iter()
                .map(|r| {
                    (
                        r.key.as_deref().unwrap_or_default(),
                        r.value.as_deref().unwrap_or_default(),
                    )
                })
                .collect();
            distinct.len() >= events
        },
    )
    .await
    .expect("outputs");
    let counted = counts_by_account(&outputs);
    for (account, counts) in &counted {
        let expected: Vec<u64> = (1..=counts.len() as u64).collect();
        assert_eq!(
            counts.keys().copied().collect::<Vec<_>>(),
            expected,
            "account {account}: a gap in its counts"
        );
    }
    assert_eq!(
        counted.values().map(BTreeMap::len).sum::<usize>(),
        events,
        "every event counted once"
    );
}
