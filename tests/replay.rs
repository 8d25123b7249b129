//! The `replay` tool against the shared broker and registry: DLQ listing and decoding,
//! republishing with headers kept and replay headers added, dry runs that send nothing, every
//! filter, the rate limit, a replay killed half-way and resumed without duplicates, consumer
//! group resets with a preview and with an active member, the audit trail, errors that name
//! their input, billing charges brought back from the DLQ exactly once, and tombstones a stage
//! dead-lettered sent back as tombstones.

#[path = "support/sinks.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use backbone_billing_sink::{BillingSettings, BillingSink};
use backbone_core::dead_letter::{headers as dlq, DeadLetter};
use backbone_core::{Header, InputRecord, RuntimeSettings};
use backbone_replay::checkpoint;
use backbone_replay::republish::headers as replay_headers;
use backbone_replay::Context;
use backbone_sandbox::SandboxConfig;
use backbone_schemas::types::BillingCharge;
use backbone_schemas::wire::frame;
use backbone_schemas::WireCodec;
use backbone_sink::http::JsonApi;
use backbone_sink::DESTINATION_REJECTED;
use backbone_testkit::{
    committed_offsets, consume_until, create_topic, end_offsets_total, produce, produce_tombstone,
    shared_settings, unique_group, unique_topic, ChildProcess, ConsumedRecord, RunningProcessor,
    TestRecord,
};
use backbone_usage_validator::{UsageValidator, ValidatorSettings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value as Json;
use support::{eventually, registry_url, RunningSink, Sandbox, SinkTopics};

const DEADLINE: Duration = Duration::from_secs(120);

/// 2026-11-27T03:00:00Z: the failures below happen from then on.
const T0: u64 = 1_795_748_400_000;

/// `T0 + offset_ms` as RFC 3339.
fn at(offset_ms: u64) -> String {
    backbone_calendar::format_rfc3339_ms(i64::try_from(T0 + offset_ms).expect("time"))
}

/// The binaries live next to this package's own (`make test` builds them all first).
fn replay_binary() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_tally")).with_file_name("replay")
}

/// What a `replay` process did.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Its stdout, failing the test unless it exited 0.
    fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "replay failed: {self:#?}");
        self.stdout
    }

    /// Its stderr, failing the test unless it exited with `code`.
    fn failed(self, code: i32) -> String {
        assert_eq!(self.code, Some(code), "expected exit {code}: {self:#?}");
        assert!(self.stdout.is_empty(), "nothing on stdout: {self:#?}");
        self.stderr
    }

    /// Its stdout's lines as JSON values.
    fn json_lines(self) -> Vec<Json> {
        self.ok()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }
}

fn connection() -> Vec<String> {
    vec![
        "--bootstrap-servers".into(),
        shared_settings().bootstrap_servers,
        "--registry-url".into(),
        registry_url(),
    ]
}

/// Runs `replay` with `args` against the shared stack.
async fn replay(args: &[&str]) -> Ran {
    let mut all: Vec<String> = connection();
    all.extend(args.iter().map(|a| (*a).to_owned()));
    replay_raw(&all).await
}

/// Runs `replay` with exactly `args`.
async fn replay_raw(args: &[String]) -> Ran {
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(replay_binary())
            .args(args)
            .env_remove("BACKBONE__KAFKA__BOOTSTRAP_SERVERS")
            .env_remove("BACKBONE__SCHEMA_REGISTRY__URL")
            .env("USER", "test-operator")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("replay finishes within the deadline")
    .expect("replay starts");
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A dead letter as the runtime writes it (its own header writer), with a header `n`
/// numbering it, placed on `dlq_partition`.
#[derive(Debug, Clone)]
struct Letter {
    n: usize,
    origin: String,
    key: String,
    value: Vec<u8>,
    class: &'static str,
    reason: &'static str,
    failed_after_ms: u64,
    tenant: &'static str,
    dlq_partition: i32,
    origin_partition: i32,
}

impl Letter {
    fn new(n: usize, origin: &str) -> Self {
        Self {
            n,
            origin: origin.to_owned(),
            key: format!("k{}", n % 3),
            value: format!("value-{n}").into_bytes(),
            class: "permanent",
            reason: "contract_violation",
            failed_after_ms: n as u64 * 1_000,
            tenant: if n % 2 == 0 { "acme" } else { "globex" },
            dlq_partition: 0,
            origin_partition: 0,
        }
    }

    fn original_headers(&self) -> Vec<Header> {
        vec![
            (
                "traceparent".to_owned(),
                Some(format!("00-{:032x}-00f067aa0ba902b7-01", self.n).into_bytes()),
            ),
            ("tenant".to_owned(), Some(self.tenant.as_bytes().to_vec())),
            ("n".to_owned(), Some(self.n.to_string().into_bytes())),
        ]
    }

    fn record(&self) -> TestRecord {
        let headers = self.original_headers();
        let input = InputRecord {
            topic: &self.origin,
            partition: self.origin_partition,
            offset: i64::try_from(self.n).expect("offset"),
            timestamp_ms: Some(1_000),
            key: Some(self.key.as_bytes()),
            value: Some(&self.value),
            headers: &headers,
        };
        let failed_at = UNIX_EPOCH + Duration::from_millis(T0 + self.failed_after_ms);
        let letter = DeadLetter {
            input: &input,
            error_class: self.class,
            reason: self.reason,
            message: "made up for the test",
            processor: "replay-test",
            processor_version: "0.1.0",
            attempts: 1,
            first_failed_at: failed_at,
        };
        let out = letter.to_record(failed_at);
        TestRecord {
            key: out.key,
            value: out.value.expect("the letter of a record with a value"),
            headers: out.headers,
            partition: Some(self.dlq_partition),
            timestamp_ms: None,
        }
    }
}

/// Creates `topic` with `partitions` and writes `letters` to it.
async fn dead_letters(topic: &str, partitions: i32, letters: &[Letter]) {
    create_topic(&shared_settings(), topic, partitions)
        .await
        .expect("create the DLQ");
    let records: Vec<TestRecord> = letters.iter().map(Letter::record).collect();
    produce(&shared_settings(), topic, &records)
        .await
        .expect("produce dead letters");
}

/// Every record of `topic`, which must hold exactly `count`.
async fn exactly(topic: &str, count: usize) -> Vec<ConsumedRecord> {
    let records = if count == 0 {
        Vec::new()
    } else {
        consume_until(&shared_settings(), topic, count, DEADLINE)
            .await
            .expect("records")
    };
    assert_eq!(
        end_offsets_total(&shared_settings(), topic).expect("end offsets"),
        i64::try_from(count).expect("count"),
        "`{topic}` holds exactly {count} records"
    );
    records
}

/// The `n` headers of `records`.
fn numbers(records: &[ConsumedRecord]) -> BTreeSet<usize> {
    records
        .iter()
        .map(|r| {
            r.header("n")
                .expect("an n header")
                .parse()
                .expect("a number")
        })
        .collect()
}

fn context() -> Context {
    Context::new(shared_settings(), registry_url())
}

#[tokio::test]
async fn dlq_list_counts_failures_by_class_and_reason() {
    let dlq_topic = format!("{}.dlq", unique_topic("replay-list"));
    let mut letters = Vec::new();
    for (n, (class, reason, origin, after)) in [
        ("permanent", "unknown_schema_id", "a", 2_000),
        ("permanent", "unknown_schema_id", "a", 1_000),
        ("permanent", "unknown_schema_id", "a", 3_000),
        ("transient", "retries_exhausted", "b", 5_000),
        ("transient", "retries_exhausted", "c", 4_000),
        ("permanent", "contract_violation", "a", 0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut letter = Letter::new(n, origin);
        letter.class = class;
        letter.reason = reason;
        letter.failed_after_ms = after;
        letter.dlq_partition = i32::try_from(n % 2).expect("partition");
        letters.push(letter);
    }
    dead_letters(&dlq_topic, 2, &letters).await;

    let listed = replay(&["dlq", "list", &dlq_topic, "--json"])
        .await
        .json_lines();
    let summary = &listed[0];
    assert_eq!(summary["records"], 6, "{summary}");
    let groups = summary["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 3, "{summary}");
    let group = |reason: &str| {
        groups
            .iter()
            .find(|g| g["reason"] == reason)
            .unwrap_or_else(|| panic!("a {reason} group in {summary}"))
    };
    let unknown = group("unknown_schema_id");
    assert_eq!(unknown["error_class"], "permanent");
    assert_eq!(unknown["count"], 3);
    assert_eq!(unknown["first_failure"], at(1_000).as_str());
    assert_eq!(unknown["last_failure"], at(3_000).as_str());
    assert_eq!(unknown["source_topics"], serde_json::json!(["a"]));
    let exhausted = group("retries_exhausted");
    assert_eq!(exhausted["error_class"], "transient");
    assert_eq!(exhausted["count"], 2);
    assert_eq!(exhausted["first_failure"], at(4_000).as_str());
    assert_eq!(exhausted["last_failure"], at(5_000).as_str());
    assert_eq!(exhausted["source_topics"], serde_json::json!(["b", "c"]));
    assert_eq!(group("contract_violation")["count"], 1);
    assert_eq!(groups[0]["reason"], "unknown_schema_id", "largest first");

    let table = replay(&["dlq", "list", &dlq_topic]).await.ok();
    let mut lines = table.lines();
    let heading = lines.next().expect("a heading");
    for column in [
        "ERROR CLASS",
        "REASON",
        "COUNT",
        "FIRST FAILURE",
        "LAST FAILURE",
        "SOURCE TOPICS",
    ] {
        assert!(heading.contains(column), "{table}");
    }
    let row = lines
        .find(|l| l.contains("retries_exhausted"))
        .expect("a row per group");
    assert!(
        row.contains(" 2 ") && row.contains(&at(4_000)) && row.contains("b,c"),
        "{table}"
    );
    assert!(
        table.contains(&format!("6 records in `{dlq_topic}`, 3 groups")),
        "{table}"
    );
}

fn charge(i: usize, currency: &str) -> BillingCharge {
    support::api_charge("acme", format!("rt-replay-{i:04}"), i, 5, currency)
}

#[tokio::test]
async fn dlq_show_decodes_values_through_the_registry_with_every_header() {
    let origin = unique_topic("replay-show");
    let dlq_topic = format!("{origin}.dlq");
    let codec = WireCodec::new(registry_url());
    let billed = charge(7, "SEK");
    let mut good = Letter::new(0, &origin);
    good.value = support::encode(&codec, &origin, &billed).await;
    let mut unknown = Letter::new(1, &origin);
    unknown.value = frame(999_999, b"not a real body");
    unknown.reason = "unknown_schema_id";
    dead_letters(&dlq_topic, 1, &[good.clone(), unknown.clone()]).await;

    let shown = replay(&["dlq", "show", &dlq_topic, "--compact"])
        .await
        .json_lines();
    assert_eq!(shown.len(), 2, "{shown:?}");
    let first = &shown[0];
    assert_eq!(first["offset"], 0);
    assert_eq!(first["key"], good.key.as_str());
    assert_eq!(first["value"]["customer_id"], billed.customer_id.as_str());
    assert_eq!(first["value"]["rating_id"], billed.rating_id.as_str());
    assert_eq!(first["value"]["amount"], billed.amount.to_string().as_str());
    assert_eq!(first["value"]["currency"], "SEK");
    assert_eq!(first["value"]["charge_type"], "USAGE");
    assert!(first["schema_id"].as_u64().is_some(), "{first}");
    for (name, value) in good.record().headers {
        assert_eq!(
            first["headers"][&name],
            String::from_utf8(value.expect("a value"))
                .expect("text")
                .as_str(),
            "header {name} in {first}"
        );
    }
    assert_eq!(first["headers"][dlq::ORIGIN_TOPIC], origin.as_str());
    let second = &shown[1];
    assert_eq!(
        second["value_error"]["reason"], "unknown_schema_id",
        "{second}"
    );
    assert!(
        second["value_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("999999")),
        "{second}"
    );

    let one = replay(&[
        "dlq",
        "show",
        &dlq_topic,
        "--partition",
        "0",
        "--offset",
        "1",
        "--compact",
    ])
    .await
    .json_lines();
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["offset"], 1);
    let limited = replay(&["dlq", "show", &dlq_topic, "--limit", "1"])
        .await
        .ok();
    assert!(
        limited.contains("\"customer_id\": \"c-2\"") && !limited.contains("value_error"),
        "pretty JSON, one record: {limited}"
    );
}

#[tokio::test]
async fn run_sends_dead_letters_back_to_their_origin_keeping_headers() {
    let base = unique_topic("replay-run");
    let (a, b) = (format!("{base}.a"), format!("{base}.b"));
    let dlq_topic = format!("{base}.dlq");
    create_topic(&shared_settings(), &a, 1).await.expect("a");
    create_topic(&shared_settings(), &b, 2).await.expect("b");
    let letters: Vec<Letter> = (0..5)
        .map(|n| {
            let mut letter = Letter::new(n, if n < 3 { &a } else { &b });
            if n == 3 {
                letter.origin_partition = 1;
            }
            letter
        })
        .collect();
    dead_letters(&dlq_topic, 1, &letters).await;
    let replay_id = unique_group("r");

    let summary = replay(&[
        "run",
        &dlq_topic,
        "--operator",
        "ann",
        "--replay-id",
        &replay_id,
        "--json",
    ])
    .await
    .json_lines();
    let summary = summary.last().expect("a summary");
    assert_eq!(summary["sent"], 5, "{summary}");
    assert_eq!(summary["complete"], true, "{summary}");

    let on_a = exactly(&a, 3).await;
    let on_b = exactly(&b, 2).await;
    assert_eq!(numbers(&on_a), [0, 1, 2].into());
    assert_eq!(numbers(&on_b), [3, 4].into());
    for record in on_a.iter().chain(&on_b) {
        let n: usize = record.header("n").expect("n").parse().expect("n");
        let letter = &letters[n];
        assert_eq!(record.key.as_deref(), Some(letter.key.as_bytes()));
        assert_eq!(
            record.partition, letter.origin_partition,
            "back to the partition it failed on"
        );
        assert_eq!(record.value.as_deref(), Some(&letter.value[..]));
        let names: Vec<&str> = record.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "traceparent",
                "tenant",
                "n",
                replay_headers::ID,
                replay_headers::AT,
                replay_headers::OPERATOR,
                replay_headers::SOURCE_TOPIC,
                replay_headers::SOURCE_PARTITION,
                replay_headers::SOURCE_OFFSET,
            ],
            "original headers in order, the DLQ's dropped, the replay's added"
        );
        let original = letter.original_headers();
        assert_eq!(
            record.headers[..3],
            original[..],
            "original headers byte for byte"
        );
        assert_eq!(
            record.header(replay_headers::ID).as_deref(),
            Some(replay_id.as_str())
        );
        assert_eq!(
            record.header(replay_headers::OPERATOR).as_deref(),
            Some("ann")
        );
        let replayed_at = record.header(replay_headers::AT).expect("replay time");
        assert!(
            backbone_calendar::parse_rfc3339_ms(&replayed_at).is_some(),
            "{replayed_at}"
        );
        assert_eq!(
            record.header(replay_headers::SOURCE_OFFSET),
            Some(n.to_string())
        );
    }

    // The same replay id again: complete, nothing sent.
    let again = replay(&["run", "--replay-id", &replay_id, "--json"])
        .await
        .json_lines();
    let again = again.last().expect("a summary");
    assert_eq!(again["sent"], 0, "{again}");
    assert_eq!(again["already_sent"], 5, "{again}");
    exactly(&a, 3).await;
    exactly(&b, 2).await;

    let audited = replay(&["audit", "--id", &replay_id, "--json"])
        .await
        .json_lines();
    let entries = audited[0].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{audited:?}");
    let entry = &entries[0];
    assert_eq!(entry["status"], "completed", "{entry}");
    assert_eq!(entry["operator"], "ann");
    assert_eq!(entry["action"], "replay");
    assert_eq!(entry["counts"]["sent"], 5, "{entry}");
    assert_eq!(entry["target"]["source"], dlq_topic.as_str());
    assert_eq!(entry["events"], serde_json::json!(["started", "completed"]));
}

#[tokio::test]
async fn a_tombstone_a_stage_dead_letters_is_replayed_as_a_tombstone() {
    let kafka = shared_settings();
    let settings = ValidatorSettings {
        input_topic: unique_topic("replay-tombstones.usage"),
        output_topic: unique_topic("replay-tombstones.validated"),
        dedup: false,
    };
    let dlq_topic = format!("{}.dlq", settings.input_topic);
    create_topic(&kafka, &settings.input_topic, 1)
        .await
        .expect("input topic");
    produce_tombstone(
        &kafka,
        &settings.input_topic,
        Some(b"c-1".as_slice()),
        Some(0),
    )
    .await
    .expect("tombstone");
    produce_tombstone(&kafka, &settings.input_topic, None, Some(0))
        .await
        .expect("keyless tombstone");
    let group = unique_group("replay-tombstones");
    let mut runtime = RuntimeSettings {
        group_id: Some(group.clone()),
        topic_partitions: 1,
        ..RuntimeSettings::default()
    };
    runtime.state.dir = std::env::temp_dir().join("backbone-state").join(&group);
    let validator = RunningProcessor::start(
        UsageValidator::new(settings.clone(), WireCodec::new(registry_url())),
        &kafka,
        runtime,
    );
    consume_until(&kafka, &dlq_topic, 2, DEADLINE)
        .await
        .expect("the tombstones' dead letters");

    let summary = replay(&["run", &dlq_topic, "--operator", "ann", "--json"])
        .await
        .json_lines();
    let summary = summary.last().expect("a summary");
    assert_eq!(summary["sent"], 2, "{summary}");

    // Back on the input as tombstones, keys as they were; the stage puts them aside again
    // for the same reason, not as records cut short.
    let inputs = consume_until(&kafka, &settings.input_topic, 4, DEADLINE)
        .await
        .expect("the replayed tombstones");
    let letters = consume_until(&kafka, &dlq_topic, 4, DEADLINE)
        .await
        .expect("the replayed tombstones' dead letters");
    validator.stop(DEADLINE).await;
    for (offset, key) in [(2, Some(&b"c-1"[..])), (3, None)] {
        let input = inputs
            .iter()
            .find(|r| r.offset == offset)
            .expect("replayed input");
        assert_eq!((input.key.as_deref(), input.value.as_deref()), (key, None));
        assert!(input.header(replay_headers::ID).is_some());
        let letter = letters
            .iter()
            .find(|l| l.header(dlq::ORIGIN_OFFSET) == Some(offset.to_string()))
            .expect("the replayed tombstone's dead letter");
        assert_eq!(letter.header(dlq::REASON).as_deref(), Some("missing_value"));
        assert_eq!(
            (letter.key.as_deref(), letter.value.as_deref()),
            (key, None)
        );
    }
}

#[tokio::test]
async fn a_dry_run_sends_nothing_and_names_what_would_fail_again() {
    let origin = unique_topic("replay-dry");
    let dlq_topic = format!("{origin}.dlq");
    create_topic(&shared_settings(), &origin, 1)
        .await
        .expect("origin");
    let codec = WireCodec::new(registry_url());
    let mut good = Letter::new(0, &origin);
    good.value = support::encode(&codec, &origin, &charge(1, "EUR")).await;
    let mut unknown = Letter::new(1, &origin);
    unknown.value = frame(999_998, b"body");
    let mut not_avro = Letter::new(2, &origin);
    not_avro.value = b"{\"not\": \"wire format\"}".to_vec();
    let mut undecodable = Letter::new(3, &origin);
    let id = codec
        .contract_id::<BillingCharge>(&format!("{origin}-value"))
        .await
        .expect("contract id");
    undecodable.value = frame(id, &[0xff, 0xff, 0xff]);
    let gone = Letter::new(4, &format!("{origin}.deleted"));
    dead_letters(&dlq_topic, 1, &[good, unknown, not_avro, undecodable, gone]).await;
    let replay_id = unique_group("dry");

    let lines = replay(&[
        "run",
        &dlq_topic,
        "--dry-run",
        "--json",
        "--replay-id",
        &replay_id,
    ])
    .await
    .json_lines();
    assert_eq!(lines.len(), 6, "a line per record and a summary: {lines:?}");
    let check = |offset: usize| &lines[offset]["check"];
    assert_eq!(check(0)["verdict"], "ok", "{lines:?}");
    assert_eq!(check(1)["verdict"], "would_fail");
    assert_eq!(check(1)["reason"], "unknown_schema_id");
    assert_eq!(check(2)["reason"], "wrong_magic_byte");
    assert_eq!(check(3)["reason"], "undecodable_body");
    assert_eq!(check(4)["reason"], "unknown_topic");
    assert_eq!(lines[0]["destination"], origin.as_str());
    let summary = &lines[5];
    assert_eq!(summary["dry_run"], true);
    assert_eq!(summary["sent"], 1, "{summary}");
    assert_eq!(summary["would_fail"], 4, "{summary}");

    let text = replay(&["run", &dlq_topic, "--dry-run"]).await.ok();
    assert!(
        text.contains("offset 1 -> ")
            && text.contains("WOULD FAIL AGAIN: unknown_schema_id: schema id 999998"),
        "{text}"
    );
    assert!(text.contains("nothing was sent"), "{text}");

    assert_eq!(
        end_offsets_total(&shared_settings(), &origin).expect("end offsets"),
        0,
        "nothing sent"
    );
    assert!(
        checkpoint::load(&context(), &replay_id)
            .await
            .expect("checkpoints")
            .is_none(),
        "no checkpoint"
    );
    let audited = replay(&["audit", "--id", &replay_id, "--json"])
        .await
        .json_lines();
    assert_eq!(
        audited[0],
        serde_json::json!([]),
        "a dry run is not audited"
    );
}

#[tokio::test]
async fn every_filter_selects_exactly_what_it_names() {
    let base = unique_topic("replay-filters");
    let dlq_topic = format!("{base}.dlq");
    let letters: Vec<Letter> = (0..12)
        .map(|n| {
            let mut letter = Letter::new(n, &format!("{base}.origin"));
            letter.dlq_partition = if n < 6 { 0 } else { 1 };
            if n % 4 == 3 {
                letter.class = "transient";
                letter.reason = "retries_exhausted";
            } else if n % 4 == 1 {
                letter.reason = "unknown_schema_id";
            }
            letter
        })
        .collect();
    dead_letters(&dlq_topic, 2, &letters).await;
    // Offsets in the DLQ: partition 0 holds n 0..6 at offsets 0..6, partition 1 n 6..12.
    let expect = |keep: &dyn Fn(&Letter) -> bool| -> BTreeSet<usize> {
        letters.iter().filter(|l| keep(l)).map(|l| l.n).collect()
    };
    let since = at(3_000);
    let until = at(7_000);
    let cases: Vec<(Vec<&str>, BTreeSet<usize>)> = vec![
        (
            vec!["--since", &since, "--until", &until],
            expect(&|l| (3_000..7_000).contains(&l.failed_after_ms)),
        ),
        (vec!["--partition", "1", "--offsets", "1..2"], [7, 8].into()),
        (vec!["--partition", "0"], expect(&|l| l.dlq_partition == 0)),
        (vec!["--key", "k1"], expect(&|l| l.key == "k1")),
        (
            vec!["--key", "k1", "--key", "k2"],
            expect(&|l| l.key != "k0"),
        ),
        (
            vec!["--error-class", "transient"],
            expect(&|l| l.class == "transient"),
        ),
        (
            vec!["--reason", "unknown_schema_id"],
            expect(&|l| l.reason == "unknown_schema_id"),
        ),
        (
            vec!["--header", "tenant=acme"],
            expect(&|l| l.tenant == "acme"),
        ),
        (
            vec!["--header", "tenant=acme", "--header", "n=4"],
            [4].into(),
        ),
        (vec!["--limit", "3"], [0, 1, 2].into()),
        (
            vec![
                "--error-class",
                "permanent",
                "--header",
                "tenant=globex",
                "--limit",
                "2",
            ],
            [1, 5].into(),
        ),
    ];
    for (i, (filters, expected)) in cases.into_iter().enumerate() {
        let to = format!("{base}.to-{i}");
        create_topic(&shared_settings(), &to, 1).await.expect("to");
        let mut args = vec!["run", dlq_topic.as_str(), "--to", to.as_str()];
        args.extend(&filters);
        replay(&args).await.ok();
        let got = exactly(&to, expected.len()).await;
        assert_eq!(numbers(&got), expected, "{filters:?}");
    }

    // Records that are not dead letters are timed by their timestamp.
    let plain = format!("{base}.plain");
    create_topic(&shared_settings(), &plain, 1)
        .await
        .expect("plain");
    let records: Vec<TestRecord> = (0..6)
        .map(|n| TestRecord {
            timestamp_ms: Some(i64::try_from(T0 + n * 1_000).expect("time")),
            headers: vec![("n".to_owned(), Some(n.to_string().into_bytes()))],
            ..TestRecord::new(format!("k{n}"), format!("v{n}"))
        })
        .collect();
    produce(&shared_settings(), &plain, &records)
        .await
        .expect("plain records");
    let to = format!("{base}.to-plain");
    create_topic(&shared_settings(), &to, 1).await.expect("to");
    let (since, until) = (at(2_000), at(4_000));
    replay(&[
        "run", &plain, "--to", &to, "--since", &since, "--until", &until,
    ])
    .await
    .ok();
    assert_eq!(numbers(&exactly(&to, 2).await), [2, 3].into());
}

#[tokio::test]
async fn the_rate_limit_spaces_records_out() {
    let base = unique_topic("replay-rate");
    let dlq_topic = format!("{base}.dlq");
    let to = format!("{base}.to");
    create_topic(&shared_settings(), &to, 1).await.expect("to");
    let letters: Vec<Letter> = (0..20).map(|n| Letter::new(n, &to)).collect();
    dead_letters(&dlq_topic, 1, &letters).await;
    replay(&["run", &dlq_topic, "--rate", "10"]).await.ok();
    let got = exactly(&to, 20).await;
    let times: Vec<i64> = got
        .iter()
        .map(|r| r.timestamp_ms.expect("a timestamp"))
        .collect();
    let span = times.iter().max().expect("max") - times.iter().min().expect("min");
    // 20 records at 10 per second: the last goes 1.9 s after the first.
    assert!(span >= 1_500, "20 records at 10/s took only {span} ms");
}

#[tokio::test]
async fn an_interrupted_replay_resumes_by_its_id_and_sends_each_record_once() {
    let base = unique_topic("replay-resume");
    let dlq_topic = format!("{base}.dlq");
    let origin = format!("{base}.origin");
    create_topic(&shared_settings(), &origin, 3)
        .await
        .expect("origin");
    let letters: Vec<Letter> = (0..60)
        .map(|n| {
            let mut letter = Letter::new(n, &origin);
            letter.dlq_partition = i32::try_from(n % 2).expect("partition");
            letter.key = format!("key-{n}");
            letter
        })
        .collect();
    dead_letters(&dlq_topic, 2, &letters).await;
    let replay_id = unique_group("resume");
    let log = std::env::temp_dir().join(format!("{replay_id}.log"));
    let mut args: Vec<String> = connection();
    args.extend(
        [
            "run",
            &dlq_topic,
            "--rate",
            "8",
            "--replay-id",
            &replay_id,
            // Only the checkpoints before the first send: every record sent before the kill
            // must be found in the destination by the resume.
            "--checkpoint-interval",
            "1h",
        ]
        .iter()
        .map(|a| (*a).to_owned()),
    );
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first =
        ChildProcess::spawn(&replay_binary(), &arg_refs, &[], Some(&log)).expect("start a replay");
    eventually(DEADLINE, "a quarter of the records replayed", || async {
        let sent = end_offsets_total(&shared_settings(), &origin).expect("end offsets");
        (sent >= 15).then_some(())
    })
    .await;
    first.crash().expect("SIGKILL the replay");
    let at_kill = end_offsets_total(&shared_settings(), &origin).expect("end offsets");
    assert!(at_kill < 60, "killed half-way: {at_kill} sent");
    let stored = checkpoint::load(&context(), &replay_id)
        .await
        .expect("checkpoints")
        .expect("the replay's checkpoint");
    assert_eq!(
        stored.sent, 0,
        "sent records are not in the checkpoint: {stored:?}"
    );

    let resumed = replay(&["run", "--replay-id", &replay_id, "--json"])
        .await
        .json_lines();
    let summary = resumed.last().expect("a summary");
    assert_eq!(summary["resumed"], true, "{summary}");
    assert_eq!(summary["already_sent"], at_kill, "found again: {summary}");
    assert_eq!(summary["sent"], 60 - at_kill, "{summary}");
    assert_eq!(summary["matched"], 60, "{summary}");
    let got = exactly(&origin, 60).await;
    let positions: BTreeMap<(String, String), usize> =
        got.iter().fold(BTreeMap::new(), |mut seen, record| {
            let position = (
                record
                    .header(replay_headers::SOURCE_PARTITION)
                    .expect("partition"),
                record
                    .header(replay_headers::SOURCE_OFFSET)
                    .expect("offset"),
            );
            *seen.entry(position).or_default() += 1;
            seen
        });
    assert_eq!(positions.len(), 60, "every dead letter replayed");
    assert!(
        positions.values().all(|&n| n == 1),
        "none twice: {positions:?}"
    );
    assert_eq!(numbers(&got).len(), 60);
}

#[tokio::test]
async fn a_stopped_replay_checkpoints_what_it_sent_and_exits_130() {
    let base = unique_topic("replay-stop");
    let dlq_topic = format!("{base}.dlq");
    let origin = format!("{base}.origin");
    create_topic(&shared_settings(), &origin, 1)
        .await
        .expect("origin");
    let letters: Vec<Letter> = (0..20).map(|n| Letter::new(n, &origin)).collect();
    dead_letters(&dlq_topic, 1, &letters).await;
    let replay_id = unique_group("stop");
    let mut args: Vec<String> = connection();
    args.extend(
        ["run", &dlq_topic, "--rate", "5", "--replay-id", &replay_id]
            .iter()
            .map(|a| (*a).to_owned()),
    );
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = std::env::temp_dir().join(format!("{replay_id}.log"));
    let mut running =
        ChildProcess::spawn(&replay_binary(), &arg_refs, &[], Some(&log)).expect("start a replay");
    eventually(DEADLINE, "a few records replayed", || async {
        let sent = end_offsets_total(&shared_settings(), &origin).expect("end offsets");
        (sent >= 4).then_some(())
    })
    .await;
    // SIGTERM, as Ctrl-C: the replay awaits its sends, checkpoints them and says how to resume.
    let status = running.stop(DEADLINE).expect("the replay stops");
    assert_eq!(status.code(), Some(130), "{status:?}");
    let output = std::fs::read_to_string(&log).expect("the replay's output");
    assert!(
        output.contains(&format!(
            "resume it with `replay run --replay-id {replay_id}`"
        )),
        "{output}"
    );
    let at_stop = end_offsets_total(&shared_settings(), &origin).expect("end offsets");
    let stored = checkpoint::load(&context(), &replay_id)
        .await
        .expect("checkpoints")
        .expect("the replay's checkpoint");
    assert_eq!(
        i64::try_from(stored.sent).expect("sent"),
        at_stop,
        "everything sent is checkpointed: {stored:?}"
    );
    assert!(
        !stored.complete && at_stop < 20,
        "stopped half-way: {stored:?}"
    );

    replay(&["run", "--replay-id", &replay_id]).await.ok();
    let got = exactly(&origin, 20).await;
    assert_eq!(numbers(&got), (0..20).collect());
    let audited = replay(&["audit", "--id", &replay_id, "--json"])
        .await
        .json_lines();
    assert_eq!(
        audited[0][0]["events"],
        serde_json::json!(["started", "interrupted", "started", "completed"]),
        "{audited:?}"
    );
}

/// A consumer in `group` on `topic` that stays a member until dropped.
struct Member {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Member {
    async fn join(group: &str, topic: &str) -> Member {
        let consumer: BaseConsumer = shared_settings()
            .consumer_config(group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let stop = Arc::new(AtomicBool::new(false));
        let (joined_tx, joined_rx) = tokio::sync::oneshot::channel();
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut joined = Some(joined_tx);
            while !stopping.load(Ordering::Relaxed) {
                let _ = consumer.poll(Duration::from_millis(100));
                if consumer.assignment().is_ok_and(|a| a.count() > 0) {
                    if let Some(tx) = joined.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        tokio::time::timeout(DEADLINE, joined_rx)
            .await
            .expect("the member joins in time")
            .expect("the member thread");
        Member {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn committed(group: &str, topic: &str) -> Vec<Option<i64>> {
    committed_offsets(&shared_settings(), group, topic)
        .expect("committed offsets")
        .into_iter()
        .map(|(_, offset)| offset)
        .collect()
}

#[tokio::test]
async fn reset_offsets_previews_then_applies_and_refuses_an_active_group() {
    let topic = unique_topic("replay-reset");
    let group = unique_group("reset");
    create_topic(&shared_settings(), &topic, 2)
        .await
        .expect("topic");
    let mut records = Vec::new();
    for partition in 0..2 {
        for i in 0..10u64 {
            records.push(TestRecord {
                partition: Some(partition),
                timestamp_ms: Some(i64::try_from(T0 + i * 1_000).expect("time")),
                ..TestRecord::new(format!("k{i}"), format!("v{i}"))
            });
        }
    }
    produce(&shared_settings(), &topic, &records)
        .await
        .expect("records");
    let reset = |extra: &[&str]| {
        let mut args = vec![
            "reset-offsets",
            "--group",
            group.as_str(),
            "--topic",
            topic.as_str(),
            "--operator",
            "bob",
        ];
        args.extend(extra);
        args.iter()
            .map(|a| (*a).to_owned())
            .collect::<Vec<String>>()
    };
    let run = |args: Vec<String>| async move {
        let mut all = connection();
        all.extend(args);
        replay_raw(&all).await
    };

    run(reset(&["--to-latest", "--execute"])).await.ok();
    assert_eq!(committed(&group, &topic), vec![Some(10), Some(10)]);

    let five = at(5_000);
    let preview = run(reset(&["--to-time", &five, "--json"]))
        .await
        .json_lines();
    let plan = &preview[0];
    assert_eq!(plan["executed"], false, "{plan}");
    for m in plan["moves"].as_array().expect("moves") {
        assert_eq!(m["current"], 10, "{plan}");
        assert_eq!(m["new"], 5, "{plan}");
    }
    let table = run(reset(&["--to-time", &five])).await.ok();
    assert!(
        table.contains("PARTITION") && table.contains("preview only"),
        "{table}"
    );
    assert_eq!(
        committed(&group, &topic),
        vec![Some(10), Some(10)],
        "a preview changes nothing"
    );

    let applied = run(reset(&["--to-time", &five, "--execute", "--json"]))
        .await
        .json_lines();
    assert_eq!(applied[0]["executed"], true);
    assert_eq!(committed(&group, &topic), vec![Some(5), Some(5)]);
    // Between two records' times: the later one.
    let between = at(2_500);
    run(reset(&["--to-time", &between, "--execute"])).await.ok();
    assert_eq!(committed(&group, &topic), vec![Some(3), Some(3)]);
    run(reset(&[
        "--to-offset",
        "7",
        "--partition",
        "1",
        "--execute",
    ]))
    .await
    .ok();
    assert_eq!(committed(&group, &topic), vec![Some(3), Some(7)]);
    let clamped = run(reset(&["--to-offset", "99", "--json"]))
        .await
        .json_lines();
    assert_eq!(clamped[0]["moves"][0]["new"], 10, "{:?}", clamped[0]);
    run(reset(&["--to-earliest", "--execute"])).await.ok();
    assert_eq!(committed(&group, &topic), vec![Some(0), Some(0)]);

    let member = Member::join(&group, &topic).await;
    let refused = run(reset(&["--to-latest", "--execute"])).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains(&format!("consumer group `{group}` has 1 active member(s)")),
        "{refused:?}"
    );
    assert!(
        refused.stdout.contains("1 active member(s)"),
        "the preview is shown: {refused:?}"
    );
    assert_eq!(
        committed(&group, &topic),
        vec![Some(0), Some(0)],
        "refused: nothing changed"
    );
    let forced = run(reset(&["--to-latest", "--execute", "--force"])).await;
    drop(member);
    // With --force the tool commits, and the broker refuses a commit from outside a group
    // that has members (Apache Kafka answers UNKNOWN_MEMBER_ID): the tool says
    // so, and nothing moved.
    assert_eq!(forced.code, Some(1), "{forced:?}");
    assert!(
        forced
            .stderr
            .contains("the broker refused the commit because the group has members"),
        "{forced:?}"
    );
    assert_eq!(committed(&group, &topic), vec![Some(0), Some(0)]);

    // A broker whose answer by time is wrong is caught by the records around it.
    let ctx = context();
    let checked_topic = topic.clone();
    let five_ms = i64::try_from(T0 + 5_000).expect("time");
    let (wrong, right) = tokio::task::spawn_blocking(move || {
        let check = |answer| {
            backbone_replay::offsets::checked_offset_for_time(
                &ctx,
                &checked_topic,
                0,
                five_ms,
                answer,
            )
            .expect("checked offset")
        };
        (check(9), check(5))
    })
    .await
    .expect("check thread");
    assert_eq!(wrong.0, 5, "found by reading: {wrong:?}");
    assert!(
        wrong
            .1
            .as_deref()
            .is_some_and(|n| n.contains("the broker answered 9")),
        "{wrong:?}"
    );
    assert_eq!(right, (5, None));

    let audited = run(vec!["audit".into(), "--json".into()])
        .await
        .json_lines();
    let ours: Vec<&Json> = audited[0]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["target"]["group"] == group.as_str())
        .collect();
    let statuses: Vec<&str> = ours
        .iter()
        .map(|e| e["status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses[..6],
        [
            "completed",
            "completed",
            "completed",
            "completed",
            "completed",
            "refused"
        ],
        "{ours:?}"
    );
    assert!(ours.iter().all(|e| e["operator"] == "bob"), "{ours:?}");
    assert_eq!(
        ours.len(),
        7,
        "previews are not audited, the forced reset is: {ours:?}"
    );
    assert_eq!(ours[6]["status"], "failed", "{ours:?}");
    assert_eq!(ours[6]["target"]["forced"], true, "{ours:?}");
}

#[tokio::test]
async fn errors_name_their_input_and_exit_non_zero() {
    let base = unique_topic("replay-errors");
    let dlq_topic = format!("{base}.dlq");
    dead_letters(&dlq_topic, 1, &[Letter::new(0, &format!("{base}.origin"))]).await;
    let missing = format!("{base}.missing");

    let err = replay(&["dlq", "list", &missing]).await.failed(1);
    assert!(
        err.contains(&format!("topic `{missing}` does not exist")),
        "{err}"
    );
    let err = replay(&["run", &missing]).await.failed(1);
    assert!(
        err.contains(&format!("source topic `{missing}` does not exist")),
        "{err}"
    );
    let err = replay(&["run", &dlq_topic, "--to", &missing])
        .await
        .failed(1);
    assert!(
        err.contains(&format!("destination topic `{missing}` does not exist")),
        "{err}"
    );

    for (args, expected) in [
        (
            vec!["--since", "yesterday"],
            "malformed filter --since \"yesterday\": expected an RFC 3339 time",
        ),
        (
            vec!["--partition", "0", "--offsets", "5..2"],
            "malformed filter --offsets \"5..2\"",
        ),
        (
            vec!["--header", "tenant"],
            "malformed filter --header \"tenant\": expected name=value",
        ),
        (
            vec!["--partition", "4"],
            "malformed filter --partition \"4\": expected a partition of",
        ),
    ] {
        let mut all = vec!["run", dlq_topic.as_str()];
        all.extend(&args);
        let err = replay(&all).await.failed(2);
        assert!(err.contains(expected), "{args:?}: {err}");
    }

    let unreachable = replay_raw(
        &[
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--timeout",
            "2s",
            "dlq",
            "list",
            dlq_topic.as_str(),
        ]
        .map(str::to_owned),
    )
    .await
    .failed(1);
    assert!(
        unreachable.contains("Kafka at 127.0.0.1:1 did not answer within 2s"),
        "{unreachable}"
    );
    let no_registry = replay_raw(
        &[
            "--bootstrap-servers",
            shared_settings().bootstrap_servers.as_str(),
            "--registry-url",
            "http://127.0.0.1:1",
            "--timeout",
            "2s",
            "dlq",
            "show",
            dlq_topic.as_str(),
        ]
        .map(str::to_owned),
    )
    .await
    .failed(1);
    assert!(
        no_registry.contains("schema registry at http://127.0.0.1:1 did not answer"),
        "{no_registry}"
    );

    let to = format!("{base}.to");
    create_topic(&shared_settings(), &to, 1).await.expect("to");
    let plain = format!("{base}.plain");
    create_topic(&shared_settings(), &plain, 1)
        .await
        .expect("plain");
    produce(&shared_settings(), &plain, &[TestRecord::new("k", "v")])
        .await
        .expect("a plain record");
    let err = replay(&["run", &plain]).await.failed(1);
    assert!(
        err.contains(&format!(
            "none of the 1 selected records of `{plain}` has a backbone.origin.topic header"
        )) && err.contains("--to"),
        "{err}"
    );
    let err = replay(&[
        "run",
        &dlq_topic,
        "--to",
        &to,
        "--since",
        "2000-01-01",
        "--until",
        "2000-01-02",
    ])
    .await
    .failed(1);
    assert!(
        err.contains(&format!(
            "no records of `{dlq_topic}` between 2000-01-01T00:00:00.000Z and 2000-01-02T00:00:00.000Z"
        )),
        "{err}"
    );
    let err = replay(&["run", &dlq_topic, "--to", &to, "--key", "nobody"])
        .await
        .failed(1);
    assert!(
        err.contains(&format!("no records of `{dlq_topic}` match --key nobody")),
        "{err}"
    );
    assert_eq!(
        end_offsets_total(&shared_settings(), &to).expect("end offsets"),
        0
    );
}

#[tokio::test]
async fn rejected_charges_replayed_after_the_fix_are_billed_exactly_once_even_when_replayed_twice()
{
    // Before the fix: the billing system refuses SEK, so those charges are dead-lettered.
    let before = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("replay-billing", 3).await;
    let codec = WireCodec::new(registry_url());
    let charges: Vec<BillingCharge> = (0..30)
        .map(|i| charge(i, if i % 3 == 0 { "SEK" } else { "EUR" }))
        .collect();
    let rejected: Vec<&BillingCharge> = charges.iter().filter(|c| c.currency == "SEK").collect();
    let mut records = Vec::new();
    for charge in &charges {
        records.push(TestRecord::new(
            format!("acme:{}", charge.subscription_id),
            support::encode(&codec, &topics.input, charge).await,
        ));
    }
    produce(&shared_settings(), &topics.input, &records)
        .await
        .expect("charges");
    // The sink group, delivering to `sandbox`.
    let billing = |sandbox: &Sandbox| {
        let destination = sandbox.destination();
        let (input, settings) = (topics.input.clone(), topics.settings());
        async move {
            let api = JsonApi::connect(&destination).await.expect("client");
            let own = BillingSettings {
                topic: input,
                concurrency: 4,
                ..BillingSettings::default()
            };
            RunningSink::start(BillingSink::new(own, api), settings)
        }
    };
    let sink = billing(&before).await;
    let dlq_topic = format!("{}.dlq", topics.input);
    let dead = consume_until(&shared_settings(), &dlq_topic, rejected.len(), DEADLINE)
        .await
        .expect("dead letters");
    eventually(DEADLINE, "every EUR charge billed", || async {
        (before.applied("billing").await == 20).then_some(())
    })
    .await;
    sink.stop().await;
    assert!(dead
        .iter()
        .all(|d| d.header(dlq::REASON).as_deref() == Some(DESTINATION_REJECTED)));

    // The fix: the billing system now takes SEK. The same sink group runs against it.
    let mut config = SandboxConfig::default();
    config.billing.currencies.push("SEK".to_owned());
    let after = Sandbox::start(config).await;
    let sink = billing(&after).await;

    let listed = replay(&["dlq", "list", &dlq_topic, "--json"])
        .await
        .json_lines();
    assert_eq!(listed[0]["groups"][0]["reason"], DESTINATION_REJECTED);
    assert_eq!(listed[0]["groups"][0]["count"], 10);
    let dry = replay(&["run", &dlq_topic, "--dry-run", "--json"])
        .await
        .json_lines();
    assert_eq!(dry.last().expect("summary")["sent"], 10, "{dry:?}");

    let first = unique_group("billing-replay");
    replay(&["run", &dlq_topic, "--replay-id", &first])
        .await
        .ok();
    eventually(DEADLINE, "the replayed charges billed", || async {
        (after.applied("billing").await == 10).then_some(())
    })
    .await;
    // The same replay again (resumed: nothing to send), and a second replay of the same DLQ.
    replay(&["run", "--replay-id", &first]).await.ok();
    let second = unique_group("billing-replay-again");
    replay(&["run", &dlq_topic, "--replay-id", &second])
        .await
        .ok();
    // Every replayed record is settled: 30 originals and 20 replays on the input, one result
    // for each.
    let results = consume_until(&shared_settings(), &topics.results, 50, DEADLINE)
        .await
        .expect("delivery results for every input");
    assert!(results.len() >= 50);
    let summary = sink.stop().await;
    assert_eq!(
        summary.already_delivered, 10,
        "the second replay: {summary:?}"
    );

    let held = after.client.charges().await.expect("charges");
    let keys: BTreeSet<&str> = held.iter().map(|c| c.idempotency_key.as_str()).collect();
    assert_eq!(held.len(), 10, "each charge once: {held:?}");
    assert_eq!(
        keys,
        rejected.iter().map(|c| c.rating_id.as_str()).collect(),
        "exactly the rejected charges"
    );
    assert_eq!(after.applied("billing").await, 10, "none applied twice");
    assert_eq!(
        end_offsets_total(&shared_settings(), &topics.input).expect("input"),
        50
    );
}
