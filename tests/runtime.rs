//! The shared runtime's error policy on the real broker, with a test processor: permanent
//! failures are dead-lettered with the full header set and processing goes on, transient
//! ones are retried up to the limit and then dead-lettered, outages are retried without
//! limit, and a fatal error stops the processor without committing the record, as does a
//! broker that refuses it access.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backbone_core::dead_letter::headers;
use backbone_core::{
    run, InputRecord, OutputRecord, ProcessError, Processor, RuntimeError, RuntimeSettings, State,
};
use backbone_testkit::{
    committed_offsets, consume_until, create_topic, produce, run_python_client, shared_settings,
    unique_group, unique_topic, Forward, KafkaBroker, RunningProcessor, TestRecord,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// Behaves according to each record's value: `ok`, `poison`, `flaky:N` (fails transiently
/// N times), `stuck` (always transient), `outage:N` (dependency down N times), `fatal`.
struct Scripted {
    input: String,
    output: String,
    failures: Arc<Mutex<HashMap<i64, u32>>>,
}

impl Processor for Scripted {
    fn name(&self) -> &str {
        "scripted-test"
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.input.clone()]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.output.clone()]
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        _state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let value = String::from_utf8_lossy(record.value.unwrap_or_default()).into_owned();
        let mut failures = self.failures.lock().expect("lock");
        let failed = failures.entry(record.offset).or_default();
        let (kind, n) = value.split_once(':').unwrap_or((value.as_str(), "0"));
        let n: u32 = n.parse().unwrap_or(0);
        let fail = match kind {
            "poison" => Some(ProcessError::permanent(
                "contract_violation",
                "poison record",
            )),
            "flaky" if *failed < n => Some(ProcessError::Transient(format!("flaky {failed}"))),
            "stuck" => Some(ProcessError::Transient("never works".into())),
            "outage" if *failed < n => Some(ProcessError::Unavailable("registry down".into())),
            "fatal" => Some(ProcessError::Fatal {
                kind: "authorization",
                detail: "credentials refused".into(),
            }),
            _ => None,
        };
        if let Some(error) = fail {
            *failed += 1;
            return Err(error);
        }
        Ok(vec![OutputRecord {
            topic: self.output.clone(),
            key: record.key.map(<[u8]>::to_vec),
            value: Some(record.value.unwrap_or_default().to_vec()),
            headers: Vec::new(),
        }])
    }
}

fn settings(group: &str) -> RuntimeSettings {
    RuntimeSettings {
        group_id: Some(group.to_owned()),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_attempts: 3,
        topic_partitions: 1,
        ..RuntimeSettings::default()
    }
}

#[tokio::test]
async fn each_error_class_gets_its_policy() {
    let kafka = shared_settings();
    let input = unique_topic("scripted.in");
    let output = unique_topic("scripted.out");
    let group = unique_group("scripted");
    create_topic(&kafka, &input, 1).await.expect("input topic");
    let values = ["ok", "poison", "flaky:2", "stuck", "outage:4", "ok"];
    let records: Vec<TestRecord> = values.iter().map(|v| TestRecord::new("k", *v)).collect();
    produce(&kafka, &input, &records).await.expect("produce");

    let failures = Arc::new(Mutex::new(HashMap::new()));
    let processor = Scripted {
        input: input.clone(),
        output: output.clone(),
        failures: Arc::clone(&failures),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runtime = settings(&group);
    let kafka_for_run = kafka.clone();
    let task = tokio::spawn(async move {
        run(processor, &kafka_for_run, &runtime, async {
            let _ = stop_rx.await;
        })
        .await
    });

    // ok, flaky (succeeds on its third attempt), outage (after four), ok.
    let out = consume_until(&kafka, &output, 4, DEADLINE)
        .await
        .expect("outputs");
    let got: Vec<String> = out
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(got, ["ok", "flaky:2", "outage:4", "ok"]);
    let dead = consume_until(&kafka, &format!("{input}.dlq"), 2, DEADLINE)
        .await
        .expect("dead letters");
    let _ = stop_tx.send(());
    let summary = task.await.expect("task").expect("run ends cleanly");
    assert_eq!(summary.consumed, 6);
    assert_eq!(summary.dead_lettered, 2);

    let poison = &dead[0];
    assert_eq!(
        poison.value.as_deref(),
        Some(&b"poison"[..]),
        "payload byte for byte"
    );
    assert_eq!(poison.key.as_deref(), Some(&b"k"[..]));
    for name in [
        headers::REASON,
        headers::ERROR_CLASS,
        headers::MESSAGE,
        headers::PROCESSOR,
        headers::PROCESSOR_VERSION,
        headers::ATTEMPTS,
        headers::FIRST_FAILED_AT,
        headers::FAILED_AT,
        headers::ORIGIN_TOPIC,
        headers::ORIGIN_PARTITION,
        headers::ORIGIN_OFFSET,
        headers::ORIGIN_TIMESTAMP,
        headers::connect::TOPIC,
        headers::connect::PARTITION,
        headers::connect::OFFSET,
        headers::connect::EXCEPTION_CLASS_NAME,
        headers::connect::EXCEPTION_MESSAGE,
    ] {
        assert!(
            poison.header(name).is_some_and(|v| !v.is_empty()),
            "header {name} on {poison:?}"
        );
    }
    assert_eq!(
        poison.header(headers::ERROR_CLASS).as_deref(),
        Some("permanent")
    );
    assert_eq!(poison.header(headers::ATTEMPTS).as_deref(), Some("1"));
    assert_eq!(poison.header(headers::ORIGIN_OFFSET).as_deref(), Some("1"));

    let stuck = &dead[1];
    assert_eq!(stuck.value.as_deref(), Some(&b"stuck"[..]));
    assert_eq!(
        stuck.header(headers::REASON).as_deref(),
        Some("retries_exhausted")
    );
    assert_eq!(
        stuck.header(headers::ERROR_CLASS).as_deref(),
        Some("transient")
    );
    assert_eq!(stuck.header(headers::ATTEMPTS).as_deref(), Some("3"));
    // The outage was retried past max_attempts and never dead-lettered.
    assert_eq!(failures.lock().expect("lock").get(&4).copied(), Some(4));

    let committed = committed_offsets(&kafka, &group, &input).expect("committed");
    assert_eq!(committed, vec![(0, Some(6))]);
}

#[tokio::test]
async fn fatal_error_stops_without_committing_the_record() {
    let kafka = shared_settings();
    let input = unique_topic("fatal.in");
    let output = unique_topic("fatal.out");
    let group = unique_group("fatal");
    create_topic(&kafka, &input, 1).await.expect("input topic");
    let records: Vec<TestRecord> = ["ok", "fatal", "ok"]
        .iter()
        .map(|v| TestRecord::new("k", *v))
        .collect();
    produce(&kafka, &input, &records).await.expect("produce");

    let processor = Scripted {
        input: input.clone(),
        output,
        failures: Arc::default(),
    };
    let result = tokio::time::timeout(
        DEADLINE,
        run(processor, &kafka, &settings(&group), std::future::pending()),
    )
    .await
    .expect("the processor stops by itself");
    match result {
        Err(RuntimeError::Stopped { kind, detail }) => {
            assert_eq!(kind, "authorization");
            assert_eq!(detail, "credentials refused");
        }
        other => panic!("expected a stop, got {other:?}"),
    }
    let committed = committed_offsets(&kafka, &group, &input).expect("committed");
    assert_eq!(
        committed,
        vec![(0, Some(1))],
        "only the record before the fatal one"
    );
    let dlq_exists = backbone_core::admin::partition_count(
        &kafka,
        &format!("{input}.dlq"),
        Duration::from_secs(5),
    )
    .expect("metadata");
    if dlq_exists.is_some() {
        let nothing =
            consume_until(&kafka, &format!("{input}.dlq"), 1, Duration::from_secs(2)).await;
        assert!(nothing.is_err(), "a fatal error is never dead-lettered");
    }
}

/// `n` hexadecimal digits that lz4 cannot shrink much (a xorshift sequence), so that the
/// record's compressed batch is larger than a consumer's `fetch.max.bytes`.
fn incompressible(n: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).expect("a hex digit")
        })
        .collect()
}

#[tokio::test]
async fn an_input_larger_than_one_fetch_is_still_read() {
    let kafka = shared_settings();
    let fetch_bytes: usize = kafka
        .consumer_config("g")
        .get("fetch.max.bytes")
        .and_then(|v| v.parse().ok())
        .expect("the runtime bounds a fetch");
    let input = unique_topic("large.in");
    let output = unique_topic("large.out");
    let group = unique_group("large");
    create_topic(&kafka, &input, 1).await.expect("input topic");
    let large = incompressible(fetch_bytes * 2);
    let records = vec![
        TestRecord::new("k", "ok"),
        TestRecord::new("k", large.as_str()),
        TestRecord::new("k", "ok"),
    ];
    produce(&kafka, &input, &records).await.expect("produce");

    let processor = Scripted {
        input: input.clone(),
        output: output.clone(),
        failures: Arc::default(),
    };
    let running = RunningProcessor::start(processor, &kafka, settings(&group));
    let out = consume_until(&kafka, &output, 3, DEADLINE)
        .await
        .expect("outputs");
    let sizes: Vec<usize> = out
        .iter()
        .map(|r| r.value.as_deref().unwrap_or_default().len())
        .collect();
    assert_eq!(sizes, [2, large.len(), 2]);
    running.stop(DEADLINE).await;
}

#[tokio::test]
async fn a_broker_refusing_access_stops_the_processor() {
    let broker = KafkaBroker::start_authorizing().expect("an authorizing broker");
    let kafka = broker.settings();
    let input = unique_topic("denied.in");
    let output = unique_topic("denied.out");
    create_topic(&kafka, &input, 1).await.expect("input topic");
    produce(&kafka, &input, &[TestRecord::new("k", "ok")])
        .await
        .expect("produce");
    broker.deny_reads(&input).expect("deny reads");

    let processor = Forward {
        input: input.clone(),
        output,
    };
    let running = RunningProcessor::start(processor, &kafka, settings(&unique_group("denied")));
    let result = running.finished(DEADLINE).await;
    assert!(
        matches!(result, Err(RuntimeError::Refused(_))),
        "{result:?}"
    );
}

/// Produces 25 records with each codec a producer may pick, through Confluent's Python client.
const COMPRESSED: &str = r#"
import sys
from confluent_kafka import Producer
for codec in ['gzip', 'snappy', 'lz4', 'zstd']:
    producer = Producer({'bootstrap.servers': sys.argv[1], 'compression.type': codec})
    for i in range(25):
        producer.produce(sys.argv[2], key=codec, value=f'{codec}-{i}')
    if producer.flush(30):
        sys.exit(f'{codec}: records left undelivered')
"#;

#[tokio::test]
async fn records_compressed_with_any_codec_by_another_client_are_read_and_written() {
    let mut kafka = shared_settings();
    let input = unique_topic("compressed.in");
    let output = unique_topic("compressed.out");
    create_topic(&kafka, &input, 1).await.expect("input topic");
    tokio::task::spawn_blocking({
        let (servers, input) = (kafka.bootstrap_servers.clone(), input.clone());
        move || run_python_client(COMPRESSED, &[&servers, &input])
    })
    .await
    .expect("producer task")
    .expect("compressed records produced");

    // The runtime writes zstd too: the reader below has to decompress what it wrote.
    kafka
        .producer_properties
        .insert("compression.type".into(), "zstd".into());
    let processor = Forward {
        input: input.clone(),
        output: output.clone(),
    };
    let running = RunningProcessor::start(processor, &kafka, settings(&unique_group("codecs")));
    let forwarded = consume_until(&kafka, &output, 100, DEADLINE)
        .await
        .expect("every record forwarded");
    running.stop(DEADLINE).await;
    let values: BTreeSet<String> = forwarded
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    let expected: BTreeSet<String> = ["gzip", "snappy", "lz4", "zstd"]
        .iter()
        .flat_map(|codec| (0..25).map(move |i| format!("{codec}-{i}")))
        .collect();
    assert_eq!(values, expected);
}

/// The end of a partition whose topic is being created is waited for, not refused: a broker
/// answers that it does not know a partition until its leader has taken it on, and a
/// processor reads the ends of the topics it has just created (changelog, global tables).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_partition_still_being_created_is_waited_for() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let kafka = shared_settings();
    let topic = unique_topic("being-created");
    let consumer: BaseConsumer = kafka.admin_config().create().expect("client");
    assert!(
        consumer
            .fetch_watermarks(&topic, 0, Duration::from_secs(5))
            .is_err(),
        "the broker refuses a partition it does not know"
    );
    let asking = {
        let (kafka, topic) = (kafka.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = kafka.admin_config().create().expect("client");
            backbone_core::kafka::watermarks(&consumer, &topic, 0, DEADLINE)
        })
    };
    create_topic(&kafka, &topic, 1).await.expect("topic");
    let ends = asking.await.expect("the asking thread");
    assert_eq!(ends.expect("the ends, once the partition exists"), (0, 0));
}

/// A topic the runtime has just created is asked for again while the broker does not know it
/// yet (on a cluster, the broker a new client asks can learn of it last), and one never
/// created is named once the patience is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_just_created_is_waited_for_and_one_never_created_is_named() {
    use rdkafka::consumer::BaseConsumer;
    let kafka = shared_settings();
    let topic = unique_topic("just-created");
    let (missed, missing_seen) = tokio::sync::oneshot::channel();
    let asking = {
        let (kafka, topic) = (kafka.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = kafka.admin_config().create().expect("client");
            let servers = &kafka.bootstrap_servers;
            let first = backbone_core::admin::whole_topics(
                &consumer,
                servers,
                &[&topic],
                Duration::from_secs(5),
            );
            assert!(first.is_err(), "the broker does not know it yet");
            let _ = missed.send(());
            backbone_core::admin::whole_topics_created(
                &consumer,
                servers,
                &[&topic],
                Duration::from_secs(5),
                DEADLINE,
            )
            .map(|assignment| assignment.count())
        })
    };
    // Created once the client has been told it is not there, while it asks again.
    missing_seen.await.expect("the first answer");
    create_topic(&kafka, &topic, 2).await.expect("topic");
    let partitions = asking.await.expect("the asking thread");
    assert_eq!(
        partitions.expect("both partitions, once the topic exists"),
        2
    );

    let missing = unique_topic("never-created");
    let consumer: BaseConsumer = kafka.admin_config().create().expect("client");
    let err = backbone_core::admin::whole_topics_created(
        &consumer,
        &kafka.bootstrap_servers,
        &[&missing],
        Duration::from_secs(5),
        Duration::from_secs(1),
    )
    .expect_err("a topic that is not there");
    assert!(err.to_string().contains(&missing), "{err}");
}
