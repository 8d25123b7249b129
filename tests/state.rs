//! Partition state under effectively-once delivery on the durable broker: a stateful processor
//! keeps exact per-account counts while partitions move between two instances, because each
//! partition's state follows it through its changelog, and across repeated kill -9, because an
//! unclean stop discards local state and rebuilds it from the changelogs. Global tables hold all
//! of a reference topic on every instance and follow its updates.

#[path = "support/counts.rs"]
mod counts;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backbone_core::state::INPUT_END;
use backbone_core::{
    Delivery, InputRecord, KafkaSettings, OutputRecord, ProcessError, Processor, RuntimeSettings,
    State, StateSpec,
};
use backbone_testkit::{
    await_committed, committed_total, consume_until, consume_while, create_topic,
    end_offsets_total, produce, shared_settings, unique_group, unique_topic, ChildProcess,
    ConsumedRecord, RunningProcessor, Tally, TestRecord,
};
use counts::{check_counts, distinct, events_with_repeats};

const DEADLINE: Duration = Duration::from_secs(90);

/// Runtime settings of an instance of `group` keeping its state in `dir`, creating its output
/// with `partitions` partitions.
fn settings(group: &str, dir: PathBuf, partitions: i32) -> RuntimeSettings {
    let mut settings = RuntimeSettings {
        group_id: Some(group.to_owned()),
        topic_partitions: partitions,
        ..RuntimeSettings::default()
    };
    settings.state.dir = dir;
    settings
}

#[tokio::test]
async fn counts_stay_exact_while_partitions_move_between_instances() {
    let kafka = shared_settings();
    let tally = Tally {
        input: unique_topic("tally.in"),
        output: unique_topic("tally.out"),
        dedup: true,
    };
    let group = unique_group("tally");
    // A directory per instance, as on two hosts: state moves only through the changelogs.
    let dir = |instance: &str| instance_dir(&group, instance);
    create_topic(&kafka, &tally.input, 4)
        .await
        .expect("input topic");
    let accounts = 16;
    let batch = |from: usize| events_with_repeats(from, 500, accounts);
    let per_batch = 600;

    produce(&kafka, &tally.input, &batch(0))
        .await
        .expect("produce");
    let mut first =
        RunningProcessor::start(tally.clone(), &kafka, settings(&group, dir("first"), 4));
    first
        .during(await_committed(&kafka, &group, &tally.input, 100, DEADLINE))
        .await;

    // A second instance joins mid-stream and takes half of the partitions.
    let mut second =
        RunningProcessor::start(tally.clone(), &kafka, settings(&group, dir("second"), 4));
    produce(&kafka, &tally.input, &batch(500))
        .await
        .expect("produce");
    await_committed(&kafka, &group, &tally.input, per_batch + 100, DEADLINE).await;

    // The first leaves; its partitions and their state move to the second.
    let first_summary = first.stop(DEADLINE).await;
    produce(&kafka, &tally.input, &batch(1000))
        .await
        .expect("produce");
    second
        .during(await_committed(
            &kafka,
            &group,
            &tally.input,
            3 * per_batch,
            DEADLINE,
        ))
        .await;
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
        dedup: true,
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

    // The killed instances may have finished the input: one more event proves the last instance
    // runs (a stop asked for before it installed its signal handler would be a kill).
    let mut processor = spawn_tally(&kafka, &tally, &group, &dir);
    produce(
        &kafka,
        &tally.input,
        &events_with_repeats(events + 1, 1, 16),
    )
    .await
    .expect("produce");
    await_committed(&kafka, &group, &tally.input, total as i64 + 1, DEADLINE).await;
    let status = processor.stop(DEADLINE).expect("graceful stop");
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        committed_total(&kafka, &group, &tally.input),
        total as i64 + 1
    );
    check_counts(&kafka, &tally.output, events + 1).await;
}

/// A Tally without dedup on new topics, its input of `partitions` partitions, and its group.
async fn plain_tally(kafka: &KafkaSettings, partitions: i32) -> (Tally, String) {
    let tally = Tally {
        input: unique_topic("tally.in"),
        output: unique_topic("tally.out"),
        dedup: false,
    };
    create_topic(kafka, &tally.input, partitions)
        .await
        .expect("input topic");
    (tally, unique_group("tally"))
}

/// Every record `topic` holds, read once whoever writes it has stopped.
async fn everything_on(kafka: &KafkaSettings, topic: &str) -> Vec<ConsumedRecord> {
    let end = end_offsets_total(kafka, topic).expect("end offsets");
    consume_until(kafka, topic, end as usize, DEADLINE)
        .await
        .expect("records")
}

/// One more input for each of `accounts` accounts.
async fn one_more_each(kafka: &KafkaSettings, input: &str, accounts: usize) {
    produce(
        kafka,
        input,
        &(0..accounts)
            .map(|n| TestRecord::new(format!("acct-{n}"), format!("after-{n}")))
            .collect::<Vec<_>>(),
    )
    .await
    .expect("one more each");
}

/// Every record of the one-partition `topic` up to an end marker written now, the marker left
/// out: under exactly-once, commit markers take offsets, so the end offset is no record count.
async fn everything_committed(kafka: &KafkaSettings, topic: &str) -> Vec<ConsumedRecord> {
    let end = unique_group("end");
    produce(kafka, topic, &[TestRecord::new(END_MARKER, end.as_str())])
        .await
        .expect("end marker");
    let read = consume_while(
        kafka,
        topic,
        DEADLINE,
        format!("{topic} up to its end marker"),
        move |read| {
            read.iter()
                .any(|r| r.value.as_deref() == Some(end.as_bytes()))
        },
    )
    .await
    .expect("records up to the end marker");
    read.into_iter()
        .filter(|r| r.key.as_deref() != Some(END_MARKER.as_bytes()))
        .collect()
}

/// Key of the end markers [`everything_committed`] writes.
const END_MARKER: &str = "backbone.test.end";

/// The state directory of one instance of `group`, as on a host of its own.
fn instance_dir(group: &str, instance: &str) -> PathBuf {
    std::env::temp_dir()
        .join("backbone-state")
        .join(group)
        .join(instance)
}

/// A changelog record of the Tally's running totals: `account` at `count`.
fn total_write(partition: i32, account: &str, count: u64, ends_input: bool) -> TestRecord {
    let mut key = b"totals\0".to_vec();
    key.extend_from_slice(account.as_bytes());
    TestRecord {
        key: Some(key),
        value: count.to_be_bytes().to_vec(),
        headers: if ends_input {
            vec![(INPUT_END.to_owned(), Some(Vec::new()))]
        } else {
            Vec::new()
        },
        partition: Some(partition),
        ..TestRecord::default()
    }
}

#[tokio::test]
async fn a_restore_keeps_whole_inputs_and_leaves_out_one_cut_short() {
    let kafka = shared_settings();
    let (tally, group) = plain_tally(&kafka, 2).await;
    let changelog = format!("{group}.changelog");
    create_topic(&kafka, &changelog, 2)
        .await
        .expect("changelog topic");
    // What a crashed instance left: on partition 0 an input whose last write ends it, then one
    // cut short; on partition 1 a changelog written before inputs ended in a header, whose
    // inputs each end in a commit marker record, then one cut short.
    let marker = TestRecord {
        key: Some(b"\0commit".to_vec()),
        partition: Some(1),
        ..TestRecord::default()
    };
    let left = [
        total_write(0, "acct-a", 5, true),
        total_write(0, "acct-b", 7, false),
        total_write(1, "acct-c", 3, false),
        marker,
        total_write(1, "acct-d", 9, false),
    ];
    produce(&kafka, &changelog, &left).await.expect("changelog");
    let input = |partition: i32, account: &str, event: &str| TestRecord {
        partition: Some(partition),
        ..TestRecord::new(account, event)
    };
    let inputs = [
        input(0, "acct-a", "e1"),
        input(0, "acct-b", "e2"),
        input(1, "acct-c", "e3"),
        input(1, "acct-d", "e4"),
    ];
    produce(&kafka, &tally.input, &inputs)
        .await
        .expect("inputs");

    let settings = settings(&group, instance_dir(&group, "only"), 2);
    let mut processor = RunningProcessor::start(tally.clone(), &kafka, settings);
    processor
        .during(await_committed(&kafka, &group, &tally.input, 4, DEADLINE))
        .await;
    processor.stop(DEADLINE).await;

    let written = everything_on(&kafka, &tally.output).await;
    let outputs: BTreeSet<String> = written
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    let want: BTreeSet<String> = ["e1 6", "e2 1", "e3 4", "e4 1"].map(String::from).into();
    assert_eq!(outputs, want, "counts on the restored totals");
    assert_eq!(written.len(), 4, "one output per input");

    // What this instance wrote: no marker records, and each partition's last write ends its
    // inputs (the tally here writes one total per input; several inputs may share one end).
    let fresh: Vec<ConsumedRecord> = everything_on(&kafka, &changelog)
        .await
        .into_iter()
        .filter(|r| r.offset >= if r.partition == 0 { 2 } else { 3 })
        .collect();
    assert_eq!(fresh.len(), 4, "one total per account: {fresh:?}");
    for partition in [0, 1] {
        let last = fresh
            .iter()
            .rfind(|r| r.partition == partition)
            .expect("a write on each partition");
        assert!(
            last.headers.iter().any(|(name, _)| name == INPUT_END),
            "the last write on partition {partition} ends its inputs: {fresh:?}"
        );
    }
}

/// The count each account's last output says, from outputs `"<event> <count>"` keyed by account.
fn last_counts(records: &[ConsumedRecord]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for record in records {
        let account =
            String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
        let value =
            String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned();
        let count = value
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("an output `<event> <count>`: {value}"));
        counts.insert(account, count);
    }
    counts
}

/// `events` inputs on `topic` before anything runs, event `n` of account `acct-<n % accounts>`.
async fn produce_backlog(kafka: &KafkaSettings, topic: &str, accounts: usize, events: usize) {
    let backlog: Vec<TestRecord> = (0..events)
        .map(|n| TestRecord::new(format!("acct-{}", n % accounts), format!("e{n}")))
        .collect();
    produce(kafka, topic, &backlog).await.expect("backlog");
}

/// Runs `processor` as the one instance `instance` of `group` (state of its own) until the
/// group has committed `inputs` records of `input`, then stops it.
async fn run_until_committed<P: Processor + Sync + 'static>(
    processor: P,
    group: &str,
    instance: &str,
    input: &str,
    inputs: usize,
) {
    let settings = settings(group, instance_dir(group, instance), 1);
    run_with_until_committed(processor, settings, input, inputs).await;
}

async fn run_with_until_committed<P: Processor + Sync + 'static>(
    processor: P,
    settings: RuntimeSettings,
    input: &str,
    inputs: usize,
) {
    let kafka = shared_settings();
    let group = settings.group_id.clone().expect("a group");
    let group = group.as_str();
    let mut running = RunningProcessor::start(processor, &kafka, settings);
    let committed = i64::try_from(inputs).expect("a test's count");
    running
        .during(await_committed(&kafka, group, input, committed, DEADLINE))
        .await;
    running.stop(DEADLINE).await;
}

#[tokio::test]
async fn a_backlog_writes_each_running_total_once_per_batch_and_restores_from_it() {
    let kafka = shared_settings();
    let (tally, group) = plain_tally(&kafka, 1).await;
    let changelog = format!("{group}.changelog");
    let (accounts, events) = (3, 3_000);
    produce_backlog(&kafka, &tally.input, accounts, events).await;
    run_until_committed(tally.clone(), &group, "first", &tally.input, events).await;
    let logged = end_offsets_total(&kafka, &changelog).expect("changelog end");
    assert!(
        logged <= events as i64 / 2,
        "consecutive inputs share their writes: {logged} changelog records for {events} inputs"
    );

    // Another instance with no local state rebuilds the totals from that changelog alone.
    one_more_each(&kafka, &tally.input, accounts).await;
    let total = events + accounts;
    run_until_committed(tally.clone(), &group, "second", &tally.input, total).await;
    let outputs = everything_on(&kafka, &tally.output).await;
    assert_eq!(outputs.len(), total, "one output per input");
    let want: BTreeMap<String, u64> = (0..accounts)
        .map(|n| (format!("acct-{n}"), (events / accounts + 1) as u64))
        .collect();
    assert_eq!(last_counts(&outputs), want, "totals after the restore");
}

/// The tally, its running totals declared a table topic: readers need only each account's last.
struct TableTally(Tally);

impl Processor for TableTally {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn input_topics(&self) -> Vec<String> {
        self.0.input_topics()
    }

    fn output_topics(&self) -> Vec<String> {
        self.0.output_topics()
    }

    fn table_topics(&self) -> Vec<String> {
        self.0.output_topics()
    }

    fn state(&self) -> StateSpec {
        self.0.state()
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        self.0.process(record, state)
    }
}

#[tokio::test]
async fn a_backlog_writes_each_key_of_a_table_topic_once_per_batch_at_its_newest() {
    let kafka = shared_settings();
    let (tally, group) = plain_tally(&kafka, 1).await;
    let (accounts, events) = (3, 3_000);
    produce_backlog(&kafka, &tally.input, accounts, events).await;
    run_until_committed(
        TableTally(tally.clone()),
        &group,
        "only",
        &tally.input,
        events,
    )
    .await;
    let outputs = everything_on(&kafka, &tally.output).await;
    assert!(
        outputs.len() <= events / 2,
        "a batch writes each account once: {} outputs for {events} inputs",
        outputs.len()
    );
    let want: BTreeMap<String, u64> = (0..accounts)
        .map(|n| (format!("acct-{n}"), (events / accounts) as u64))
        .collect();
    assert_eq!(
        last_counts(&outputs),
        want,
        "each account's last is its total"
    );
}

#[tokio::test]
async fn a_transaction_writes_each_running_total_and_table_key_once_and_a_restore_reads_them() {
    let kafka = shared_settings();
    let (tally, group) = plain_tally(&kafka, 1).await;
    let changelog = format!("{group}.changelog");
    let (accounts, events) = (3, 3_000);
    produce_backlog(&kafka, &tally.input, accounts, events).await;
    let exactly_once = |instance: &str| {
        let mut settings = settings(&group, instance_dir(&group, instance), 1);
        settings.delivery = Delivery::ExactlyOnce;
        settings.transaction.transactional_id = Some(format!("{group}-{instance}"));
        settings
    };
    run_with_until_committed(
        TableTally(tally.clone()),
        exactly_once("first"),
        &tally.input,
        events,
    )
    .await;
    // The changelog's end counts the transactions' commit markers too.
    let logged = end_offsets_total(&kafka, &changelog).expect("changelog end");
    assert!(
        logged <= events as i64 / 2,
        "a transaction writes each running total once: {logged} changelog records for {events} inputs"
    );
    let outputs = everything_committed(&kafka, &tally.output).await;
    assert!(
        outputs.len() <= events / 2,
        "a transaction writes each account's total once: {} outputs for {events} inputs",
        outputs.len()
    );
    let want = |each: usize| -> BTreeMap<String, u64> {
        (0..accounts)
            .map(|n| (format!("acct-{n}"), each as u64))
            .collect()
    };
    assert_eq!(last_counts(&outputs), want(events / accounts));

    // Another instance with no local state rebuilds the totals from that changelog alone.
    one_more_each(&kafka, &tally.input, accounts).await;
    run_with_until_committed(
        TableTally(tally.clone()),
        exactly_once("second"),
        &tally.input,
        events + accounts,
    )
    .await;
    let outputs = everything_committed(&kafka, &tally.output).await;
    assert_eq!(
        last_counts(&outputs),
        want(events / accounts + 1),
        "totals after the restore"
    );
}

/// Looks each input's key up in a global table of reference data and emits the value found;
/// an unknown key is dead-lettered.
struct Lookup {
    input: String,
    output: String,
    reference: String,
}

impl Processor for Lookup {
    fn name(&self) -> &str {
        "lookup-test"
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.input.clone()]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.output.clone()]
    }

    fn state(&self) -> StateSpec {
        StateSpec::stateless().global("reference", &self.reference)
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let key = record.key.unwrap_or_default();
        let value = state.global("reference", key)?.ok_or_else(|| {
            ProcessError::permanent("unknown_key", String::from_utf8_lossy(key).into_owned())
        })?;
        Ok(vec![OutputRecord {
            topic: self.output.clone(),
            key: Some(key.to_vec()),
            value: Some(value),
            headers: Vec::new(),
        }])
    }
}

#[tokio::test]
async fn global_tables_hold_all_reference_data_and_follow_its_updates() {
    let kafka = shared_settings();
    let lookup = Lookup {
        input: unique_topic("lookup.in"),
        output: unique_topic("lookup.out"),
        reference: unique_topic("lookup.reference"),
    };
    let group = unique_group("lookup");
    create_topic(&kafka, &lookup.reference, 3)
        .await
        .expect("reference topic");
    create_topic(&kafka, &lookup.input, 2)
        .await
        .expect("input topic");
    // Every key in some partition of the reference topic; k-0 twice, the later value wins.
    let mut reference = vec![TestRecord::new("k-0", "stale")];
    reference.extend((0..20).map(|i| TestRecord::new(format!("k-{i}"), format!("v-{i}"))));
    produce(&kafka, &lookup.reference, &reference)
        .await
        .expect("reference data");
    let mut inputs: Vec<TestRecord> = (0..20)
        .map(|i| TestRecord::new(format!("k-{i}"), "lookup"))
        .collect();
    inputs.push(TestRecord::new("k-unknown", "lookup"));
    produce(&kafka, &lookup.input, &inputs)
        .await
        .expect("inputs");

    let mut settings = RuntimeSettings {
        group_id: Some(group.clone()),
        topic_partitions: 2,
        ..RuntimeSettings::default()
    };
    settings.state.dir = std::env::temp_dir().join("backbone-state").join(&group);
    let output = lookup.output.clone();
    let dlq = format!("{}.dlq", lookup.input);
    let reference_topic = lookup.reference.clone();
    let input_topic = lookup.input.clone();
    let running = RunningProcessor::start(lookup, &kafka, settings);

    let found = consume_until(&kafka, &output, 20, DEADLINE)
        .await
        .expect("outputs");
    let pairs: BTreeSet<(String, String)> = found
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = (0..20)
        .map(|i| (format!("k-{i}"), format!("v-{i}")))
        .collect();
    assert_eq!(pairs, expected);
    let dead = consume_until(&kafka, &dlq, 1, DEADLINE).await.expect("dlq");
    assert_eq!(
        dead[0].header("backbone.dlq.reason").as_deref(),
        Some("unknown_key")
    );

    // An update to the reference data reaches lookups while the processor runs.
    produce(
        &kafka,
        &reference_topic,
        &[TestRecord::new("k-3", "v-3-updated")],
    )
    .await
    .expect("update");
    let started = Instant::now();
    loop {
        produce(&kafka, &input_topic, &[TestRecord::new("k-3", "lookup")])
            .await
            .expect("input");
        let seen = consume_while(
            &kafka,
            &output,
            Duration::from_secs(2),
            "the updated value".to_owned(),
            |records| {
                records
                    .iter()
                    .any(|r| r.value.as_deref() == Some(b"v-3-updated"))
            },
        )
        .await;
        if seen.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the update never reached the global table"
        );
    }
    running.stop(DEADLINE).await;
}
