//! Exactly-once delivery on Apache Kafka: outputs, changelog writes and input offsets commit
//! together, state survives the loss of the local store through its changelog, a newer
//! instance with the same transactional id fences the older one, and a processor killed with
//! open transactions leaves their records aborted: a `read_committed` reader sees every output
//! once, a `read_uncommitted` one sees the aborted copies too. A group held by another
//! producer's open transaction shows as waiting until that transaction ends.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backbone_core::endpoint::ObservabilitySettings;
use backbone_core::metrics::{names, RuntimeMetrics};
use backbone_core::runner::TransactionSettings;
use backbone_core::{run_with, Delivery, KafkaSettings, RuntimeError, RuntimeSettings};
use backbone_testkit::{
    committed_offsets, committed_total, consume_until, consume_while, create_topic,
    hold_offset_open, produce, produce_paced, shared_settings, tally_counts, unique_group,
    unique_topic, ChildProcess, ConsumedRecord, KafkaBroker, RunningProcessor, SteadyStream, Tally,
    TestRecord,
};
use rdkafka::producer::Producer;

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
/// repeats of earlier events (numbered from `first_repeat`).
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
    let committed = backbone_testkit::await_committed(kafka, group, topic, total, DEADLINE).await;
    assert_eq!(committed, total, "committed past the input");
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
    let kafka = shared_settings();
    let tally = Tally {
        input: unique_topic("tally.in"),
        output: unique_topic("tally.out"),
        dedup: true,
    };
    let group = unique_group("tally");
    let transactional_id = unique_group("tally-txn");
    let dir = state_dir(&group);
    // One partition: transactions are cut in consumption order, which is then the input order.
    create_topic(&kafka, &tally.input, 1)
        .await
        .expect("input topic");

    // 60 new events and 20 repeats of the first 20.
    produce(&kafka, &tally.input, &with_duplicates(20, 3, 0, 0))
        .await
        .expect("produce");
    let mut running = RunningProcessor::start(
        tally.clone(),
        &kafka,
        exactly_once(&group, &transactional_id, dir.clone()),
    );
    running
        .during(await_committed(&kafka, &group, &tally.input, 80))
        .await;
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
    let mut running = RunningProcessor::start(
        tally.clone(),
        &kafka,
        exactly_once(&group, &transactional_id, dir),
    );
    running
        .during(await_committed(&kafka, &group, &tally.input, 104))
        .await;
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
    let kafka = shared_settings();
    let tally = Tally {
        input: unique_topic("tally.in"),
        output: unique_topic("tally.out"),
        dedup: true,
    };
    create_topic(&kafka, &tally.input, 1)
        .await
        .expect("input topic");
    produce(&kafka, &tally.input, &events(0, 10))
        .await
        .expect("produce");
    let older_group = unique_group("tally-older");
    let shared_id = unique_group("tally-shared");
    // A short transaction timeout: the fenced instance gives up on its transaction sooner.
    let older = RunningProcessor::start(
        tally.clone(),
        &kafka,
        exactly_once_with_timeout(
            &older_group,
            &shared_id,
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
        exactly_once(&newer_group, &shared_id, state_dir(&newer_group)),
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

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

/// The `tally` binary in exactly-once mode without dedup, with transactions held open up to
/// `commit_interval`: a kill then nearly always meets one with records on the broker.
fn spawn_tally(
    kafka: &KafkaSettings,
    tally: &Tally,
    group: &str,
    transactional_id: &str,
    commit_interval: &str,
) -> ChildProcess {
    let dir = state_dir(group);
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
            ("BACKBONE__RUNTIME__GROUP_ID", group),
            ("BACKBONE__RUNTIME__TOPIC_PARTITIONS", "2"),
            ("BACKBONE__RUNTIME__DELIVERY", "\"exactly-once\""),
            (
                "BACKBONE__RUNTIME__TRANSACTION__TRANSACTIONAL_ID",
                transactional_id,
            ),
            (
                "BACKBONE__RUNTIME__TRANSACTION__COMMIT_INTERVAL",
                commit_interval,
            ),
            ("BACKBONE__RUNTIME__TRANSACTION__MAX_RECORDS", "100000"),
            ("BACKBONE__RUNTIME__STATE__DIR", &dir.to_string_lossy()),
            ("BACKBONE__PROCESSOR__INPUT_TOPIC", &tally.input),
            ("BACKBONE__PROCESSOR__OUTPUT_TOPIC", &tally.output),
            ("BACKBONE__PROCESSOR__DEDUP", "false"),
            ("BACKBONE__OBSERVABILITY__LISTEN", "127.0.0.1:0"),
        ],
        Some(&log),
    )
    .expect("start tally")
}

/// A reader of `kafka` with `isolation`.
fn reading(kafka: &KafkaSettings, isolation: &str) -> KafkaSettings {
    let mut reader = kafka.clone();
    reader
        .consumer_properties
        .insert("isolation.level".to_owned(), isolation.to_owned());
    reader
}

/// Key of the end markers [`read_to_end`] writes.
const END: &str = "backbone.test.end";

fn is_end_marker(record: &ConsumedRecord) -> bool {
    record.key.as_deref() == Some(END.as_bytes())
}

/// Every record of `topic` up to end markers written now, one per partition, leaving them out:
/// a read that stopped at an expected count could not see a copy arriving after it.
async fn read_to_end(kafka: &KafkaSettings, topic: &str, partitions: i32) -> Vec<ConsumedRecord> {
    // Earlier reads left markers too: these are told apart by their value.
    let this_read = unique_group("end");
    let markers: Vec<TestRecord> = (0..partitions)
        .map(|partition| TestRecord {
            partition: Some(partition),
            ..TestRecord::new(END, this_read.as_str())
        })
        .collect();
    produce(kafka, topic, &markers).await.expect("end markers");
    let written = consume_while(
        kafka,
        topic,
        DEADLINE,
        format!("{topic} up to its end markers"),
        move |read| {
            read.iter()
                .filter(|r| r.value.as_deref() == Some(this_read.as_bytes()))
                .count()
                >= markers.len()
        },
    )
    .await
    .expect("records up to the end markers");
    written.into_iter().filter(|r| !is_end_marker(r)).collect()
}

fn pairs(records: &[ConsumedRecord]) -> impl Iterator<Item = (&[u8], &[u8])> {
    records.iter().map(|r| {
        (
            r.key.as_deref().unwrap_or_default(),
            r.value.as_deref().unwrap_or_default(),
        )
    })
}

#[tokio::test]
async fn killed_in_open_transactions_the_broker_hides_the_aborted_outputs_from_committed_readers() {
    let kafka = shared_settings();
    let (tally, partitions) = tally_without_dedup(&kafka).await;
    let group = unique_group("tally-killed");
    let transactional_id = unique_group("tally-killed-txn");
    // Inputs keep arriving until the last kill, so that each instance commits transactions
    // before it is killed in the middle of another, however slowly it starts.
    let publishing =
        SteadyStream::start(&kafka, &tally.input, 100, Duration::from_millis(200), event);

    let uncommitted = reading(&kafka, "read_uncommitted");
    let kills = 3;
    for kill in 1..=kills {
        // Where the log and the group stand while no instance runs.
        let logged = read_to_end(&uncommitted, &tally.output, partitions)
            .await
            .len();
        let committed = committed_total(&kafka, &group, &tally.input);
        let mut processor = spawn_tally(&kafka, &tally, &group, &transactional_id, "1s");
        // Kill once this instance has committed a transaction and has 50 more outputs in the
        // log than it committed (one output per input, committed with its input's offset):
        // records of an open transaction, which the kill leaves to be aborted.
        let open = {
            let (kafka, group, input) = (kafka.clone(), group.clone(), tally.input.clone());
            let last_look = std::sync::Mutex::new(Instant::now());
            move |read: &[ConsumedRecord]| {
                // Reading goes on for 100 ms between looks at the group, counted from the end
                // of the last look: on a loaded machine a look can take longer than that.
                let mut last = last_look.lock().expect("lock");
                if last.elapsed() < Duration::from_millis(100) {
                    return false;
                }
                let produced = read
                    .iter()
                    .filter(|r| !is_end_marker(r))
                    .count()
                    .saturating_sub(logged);
                let newly_committed = committed_total(&kafka, &group, &input) - committed;
                *last = Instant::now();
                newly_committed > 0 && produced as i64 > newly_committed + 50
            }
        };
        consume_while(
            &uncommitted,
            &tally.output,
            DEADLINE,
            format!("an open transaction with outputs before kill {kill}"),
            open,
        )
        .await
        .expect("an open transaction");
        processor.crash().expect("kill -9");
    }
    let total = publishing.stop().await.expect("publish the inputs");

    // The last instance aborts what the killed one left open, and finishes the input.
    let mut processor = spawn_tally(&kafka, &tally, &group, &transactional_id, "200ms");
    await_committed(&kafka, &group, &tally.input, total as i64).await;
    let status = processor.stop(DEADLINE).expect("graceful stop");
    assert!(status.success(), "exit status {status:?}");

    let committed = read_to_end(
        &reading(&kafka, "read_committed"),
        &tally.output,
        partitions,
    )
    .await;
    let every = read_to_end(&uncommitted, &tally.output, partitions).await;
    let totals =
        tally_counts(pairs(&committed)).expect("committed outputs: no count lost or repeated");
    assert_eq!(
        totals.values().sum::<u64>(),
        total as u64,
        "one output per input"
    );
    assert!(
        every.len() > committed.len(),
        "the log holds aborted outputs beside the committed ones: {} read uncommitted, {} committed",
        every.len(),
        committed.len()
    );
    // The aborted outputs were made again, the same, by the instance that redid their inputs.
    let kept: BTreeSet<(&[u8], &[u8])> = pairs(&committed).collect();
    assert!(
        pairs(&every).all(|pair| kept.contains(&pair)),
        "every aborted output was redone as it was"
    );
}

/// A Tally without dedup, its input and output topics created with two partitions each: a
/// redelivered input counts again unless the runtime discarded all its first delivery did.
async fn tally_without_dedup(kafka: &KafkaSettings) -> (Tally, i32) {
    let tally = Tally {
        input: unique_topic("tally.in"),
        output: unique_topic("tally.out"),
        dedup: false,
    };
    let partitions = 2;
    for topic in [&tally.input, &tally.output] {
        create_topic(kafka, topic, partitions)
            .await
            .expect("topics");
    }
    (tally, partitions)
}

#[tokio::test]
async fn broker_restarts_under_open_transactions_leave_every_count_once() {
    let mut broker = tokio::task::spawn_blocking(KafkaBroker::start)
        .await
        .expect("start task")
        .expect("a broker of its own");
    let kafka = broker.settings();
    let (tally, partitions) = tally_without_dedup(&kafka).await;
    let group = unique_group("tally-broker-restarts");
    let transactional_id = unique_group("tally-broker-restarts-txn");
    // Published while the broker restarts, so that transactions are open when it dies.
    let total = 3_000;
    let publishing = produce_paced(
        &kafka,
        &tally.input,
        events(0, total),
        50,
        Duration::from_millis(100),
    );

    // The broker dies under the processor three times, each time once the processor has made
    // progress; a processor that stops on the failed transaction is started again, as a
    // supervisor would.
    let mut processor = spawn_tally(&kafka, &tally, &group, &transactional_id, "500ms");
    let mut revived = 0;
    for restart in 1..=3 {
        let target = i64::from(restart) * 500;
        let started = Instant::now();
        while committed_total(&kafka, &group, &tally.input) < target {
            assert!(
                started.elapsed() < DEADLINE,
                "no progress to {target} before broker restart {restart}"
            );
            if !processor.is_running() {
                processor = spawn_tally(&kafka, &tally, &group, &transactional_id, "500ms");
                revived += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        broker = tokio::task::spawn_blocking(move || broker.restart().map(|()| broker))
            .await
            .expect("restart task")
            .expect("the broker restarts on its data");
    }
    publishing
        .await
        .expect("publisher task")
        .expect("publish through the restarts");
    let started = Instant::now();
    while committed_total(&kafka, &group, &tally.input) < total as i64 {
        assert!(
            started.elapsed() < DEADLINE,
            "the group committed {} of {total}",
            committed_total(&kafka, &group, &tally.input)
        );
        if !processor.is_running() {
            processor = spawn_tally(&kafka, &tally, &group, &transactional_id, "500ms");
            revived += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = processor.stop(DEADLINE).expect("graceful stop");
    assert!(status.success(), "exit status {status:?}");

    let committed = read_to_end(
        &reading(&kafka, "read_committed"),
        &tally.output,
        partitions,
    )
    .await;
    let totals = tally_counts(pairs(&committed)).unwrap_or_else(|wrong| {
        panic!("after 3 broker restarts ({revived} processor restarts): {wrong}")
    });
    assert_eq!(
        totals.values().sum::<u64>(),
        total as u64,
        "one output per input"
    );
    println!("broker restarts: 3, processor restarts after stopping on its own: {revived}");
}

/// The value of `processor`'s partitions-waiting gauge, if the series exists.
fn partitions_waiting(metrics: &RuntimeMetrics) -> Option<f64> {
    let text = metrics.encode().expect("metrics encode");
    text.lines()
        .find(|line| line.starts_with(&format!("{}{{", names::CONSUMER_PARTITIONS_WAITING)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Polls the gauge until it reads `expected`, at most `DEADLINE`.
async fn await_waiting(metrics: &RuntimeMetrics, expected: f64, what: &str) {
    let started = Instant::now();
    loop {
        let seen = partitions_waiting(metrics);
        if seen == Some(expected) {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: partitions waiting {seen:?}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A transaction left open with offsets of the group (an instance killed mid-commit, a broker
/// that has not completed it) makes the broker answer that the group's committed offsets are
/// unstable. librdkafka then asks again, silently, and the processor sits idle with no lag to
/// show. The runtime counts such a partition as waiting until the transaction ends, and then
/// the processor starts where the offsets say.
#[tokio::test]
async fn a_partition_held_by_an_open_transaction_is_counted_waiting_until_it_ends() {
    let kafka = shared_settings();
    let tally = Tally {
        input: unique_topic("tally.in"),
        output: unique_topic("tally.out"),
        dedup: false,
    };
    let group = unique_group("held");
    create_topic(&kafka, &tally.input, 1)
        .await
        .expect("input topic");
    produce(&kafka, &tally.input, &events(0, 10))
        .await
        .expect("produce");

    // Another producer commits offset 4 for the group inside a transaction it keeps open.
    let holder = hold_offset_open(&kafka, &group, &tally.input, 0, 4).expect("offset held open");

    let metrics =
        Arc::new(RuntimeMetrics::new(&prometheus::Registry::new(), "held").expect("metrics"));
    let observability = ObservabilitySettings {
        statistics_interval: Duration::from_millis(200),
        ..ObservabilitySettings::default()
    };
    let settings = exactly_once(&group, &unique_group("held-txn"), state_dir(&group));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = {
        let (kafka, metrics, tally) = (kafka.clone(), Arc::clone(&metrics), tally.clone());
        tokio::spawn(async move {
            run_with(
                tally,
                &kafka,
                &settings,
                &observability,
                metrics,
                async move {
                    let _ = stopped.await;
                },
            )
            .await
        })
    };
    await_waiting(&metrics, 1.0, "while the transaction holds the group").await;
    let unreadable = committed_offsets(&kafka, &group, &tally.input);
    assert!(
        unreadable.is_err(),
        "the group's offsets stay unreadable meanwhile: {unreadable:?}"
    );

    // Committed, the transaction's offset is where the processor starts: inputs 4 to 9.
    holder
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
    await_waiting(&metrics, 0.0, "after the transaction committed").await;
    await_committed(&kafka, &group, &tally.input, 10).await;
    let _ = stop.send(());
    let summary = run
        .await
        .expect("the run's task")
        .expect("the run succeeds");
    assert_eq!(summary.consumed, 6, "inputs from the held offset on");
}
