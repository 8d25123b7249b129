//! Partition state under effectively-once delivery on the durable broker: a stateful processor
//! keeps exact per-account counts while partitions move between two instances, because each
//! partition's state follows it through its changelog, and across repeated kill -9, because an
//! unclean stop discards local state and rebuilds it from the changelogs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backbone_core::{KafkaSettings, RuntimeSettings};
use backbone_testkit::{
    committed_offsets, consume_while, create_topic, produce, shared_settings, unique_group,
    unique_topic, ChildProcess, ConsumedRecord, RunningProcessor, Tally, TestRecord,
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

/// Reads Tally's outputs until every one of `events` events has one, then checks them against
/// what a run without failures gives: per account the counts 1..n, each count for one event and
/// each event counted once. A redelivery may repeat an output (same event, same count); lost or
/// stale state would give one count to two events, an event two counts, or leave a gap.
async fn check_counts(kafka: &KafkaSettings, topic: &str, events: usize) {
    let outputs = consume_while(
        kafka,
        topic,
        DEADLINE,
        format!("a count for each of {events} events"),
        move |records| distinct(records).len() >= events,
    )
    .await
    .expect("outputs");
    let mut accounts: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    let mut counted: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for (key, value) in distinct(&outputs) {
        let account = String::from_utf8_lossy(key).into_owned();
        let value = String::from_utf8_lossy(value);
        let (event, count) = value.split_once(' ').expect("`<event> <count>`");
        let count: u64 = count.parse().expect("count");
        if let Some(previous) = accounts
            .entry(account.clone())
            .or_default()
            .insert(count, event.to_owned())
        {
            panic!("account {account}: count {count} given to {previous} and {event}");
        }
        if let Some(earlier) = counted.insert(event.to_owned(), (account.clone(), count)) {
            panic!("{event} counted twice: {earlier:?} and ({account}, {count})");
        }
    }
    for (account, counts) in &accounts {
        let expected: Vec<u64> = (1..=counts.len() as u64).collect();
        assert_eq!(
            counts.keys().copied().collect::<Vec<_>>(),
            expected,
            "account {account}: a gap in its counts"
        );
    }
    assert_eq!(counted.len(), events, "every event counted once");
}

fn distinct(records: &[ConsumedRecord]) -> BTreeSet<(&[u8], &[u8])> {
    records
        .iter()
        .map(|r| {
            (
                r.key.as_deref().unwrap_or_default(),
                r.value.as_deref().unwrap_or_default(),
            )
        })
        .collect()
}

/// `count` events from event number `from` over `accounts` accounts, every fifth sent twice.
fn events_with_repeats(from: usize, count: usize, accounts: usize) -> Vec<TestRecord> {
    (from..from + count)
        .flat_map(|i| {
            let event = TestRecord::new(format!("account-{}", i % accounts), format!("e-{i}"));
            let times = if i % 5 == 0 { 2 } else { 1 };
            std::iter::repeat_n(event, times)
        })
        .collect()
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
    let batch = |from: usize| events_with_repeats(from, 500, accounts);
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

    check_counts(&kafka, &tally.output, 1500).await;
}

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

fn spawn_tally(kafka: &KafkaSettings, tally: &Tally, group: &str, dir: &Path) -> ChildProcess {
    let log = std::env::temp_dir().join(format!("{group}.log"));
    ChildProcess::spawn(
        Path::new(TALLY),
        &[],
        &[
            (
                "BACKBONE__KAFKA__BOOTSTRAP_SERVERS",
                &kafka.bootstrap_servers,
            ),
            ("BACKBONE__KAFKA__SESSION_TIMEOUT", "6s"),
            ("BACKBONE__KAFKA__COMMIT_INTERVAL", "200ms"),
            ("BACKBONE__RUNTIME__GROUP_ID", group),
            ("BACKBONE__RUNTIME__STATE__DIR", &dir.to_string_lossy()),
            ("BACKBONE__PROCESSOR__INPUT_TOPIC", &tally.input),
            ("BACKBONE__PROCESSOR__OUTPUT_TOPIC", &tally.output),
            ("BACKBONE__OBSERVABILITY__LISTEN", "127.0.0.1:0"),
        ],
        Some(&log),
    )
    .expect("start tally")
}

#[tokio::test]
async fn repeated_kill_9_leaves_the_counts_of_a_run_without_kills() {
    let kafka = shared_settings();
    let tally = Tally {
        input: unique_topic("tally.in"),
        output: unique_topic("tally.out"),
    };
    let group = unique_group("tally");
    let dir = std::env::temp_dir().join("backbone-state").join(&group);
    create_topic(&kafka, &tally.input, 4)
        .await
        .expect("input topic");
    let events = 6_000;
    let records = events_with_repeats(0, events, 16);
    let total = records.len();
    produce(&kafka, &tally.input, &records)
        .await
        .expect("produce");

    // Kill at points spread over the run, each a little off the even split (the clock's
    // nanoseconds pick how far), after the outputs show progress since the last kill.
    let kills = 3;
    for kill in 1..=kills {
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize % (events / 10));
        let point = kill * events / (kills + 1) + jitter;
        let mut processor = spawn_tally(&kafka, &tally, &group, &dir);
        consume_while(
            &kafka,
            &tally.output,
            DEADLINE,
            format!("{point} outputs before kill {kill}"),
            move |records| distinct(records).len() >= point,
        )
        .await
        .expect("progress before the kill");
        processor.crash().expect("kill -9");
    }

    let mut processor = spawn_tally(&kafka, &tally, &group, &dir);
    await_committed(&kafka, &group, &tally.input, total as i64).await;
    let status = processor.stop(DEADLINE).expect("graceful stop");
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(committed_total(&kafka, &group, &tally.input), total as i64);
    check_counts(&kafka, &tally.output, events).await;
}
