//! Bad inputs that `delivery.rs` does not try, on the real broker and registry: each is
//! dead-lettered under its reason (tombstones, kept as tombstones, a record shorter than the
//! wire header, a valid frame of another contract, a quantity beyond the contract's precision,
//! empty identity fields, a time before the epoch, a length prefix far beyond the body), a
//! header that is not UTF-8 travels with a valid event untouched, and an input whose output is
//! too large is dead-lettered whole while the validator goes on; a dead letter or output the
//! broker refuses stops it without committing. See docs/bad-inputs.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backbone_core::admin::{ensure_topics, TopicSpec};
use backbone_core::{KafkaSettings, RunSummary, RuntimeError, RuntimeSettings};
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::types::{
    AccountStatus, CustomerAccount, EventMetadata, Quantity, TraceContext, UsageEvent,
};
use backbone_schemas::wire::{encode_framed, frame};
use backbone_schemas::WireCodec;
use backbone_testkit::{
    await_committed, committed_offsets, consume_until, create_topic, dead_letter_reasons,
    end_offsets_total, produce, produce_tombstone, produce_with_raw_header_name, shared_settings,
    unique_group, unique_topic, RunningProcessor, TestRecord,
};
use backbone_usage_validator::{UsageValidator, ValidatorSettings};

const DEADLINE: Duration = Duration::from_secs(60);

fn usage_event(id: &str) -> UsageEvent {
    UsageEvent {
        metadata: EventMetadata {
            tenant_id: "acme".into(),
            event_id: id.into(),
            source: "api".into(),
            r#type: "usage.recorded".into(),
            occurred_at: 1_790_000_000_000_000,
            produced_at: 1_790_000_000_000_000,
            trace: TraceContext {
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                tracestate: None,
            },
            schema_version: None,
        },
        customer_id: "c-1".into(),
        subscription_id: None,
        meter_id: "api_calls".into(),
        quantity: "3".parse().expect("quantity"),
        unit: "call".into(),
        dimensions: None,
        unique_value: None,
    }
}

fn account() -> CustomerAccount {
    CustomerAccount {
        metadata: usage_event("account").metadata,
        customer_id: "c-1".into(),
        name: "Acme Ltd".into(),
        status: AccountStatus::Active,
        currency: "EUR".into(),
        legal_entity_id: "acme-ie".into(),
        country_code: "IE".into(),
        billing_contact_name: None,
        billing_email: None,
        billing_address: None,
        tax_id: None,
        crm_account_id: None,
        erp_customer_id: None,
    }
}

/// `framed` (an event whose quantity is 3) with the quantity written in 16 bytes holding
/// `unscaled` (at scale 9): what another producer could send, and no `Quantity` can hold.
fn with_unscaled_quantity(framed: &[u8], unscaled: i128) -> Vec<u8> {
    let three: Quantity = "3".parse().expect("quantity");
    let wire = &three.unscaled().to_be_bytes()[16 - Quantity::WIRE_BYTES..];
    // Avro bytes: the length as a zigzag varint (2 * len, one byte here), then the bytes.
    let written = [&[2 * Quantity::WIRE_BYTES as u8][..], wire].concat();
    let at = framed
        .windows(written.len())
        .position(|w| w == written)
        .expect("the quantity's bytes");
    [
        &framed[..at],
        &[32][..],
        &unscaled.to_be_bytes(),
        &framed[at + written.len()..],
    ]
    .concat()
}

#[tokio::test]
async fn each_kind_of_bad_input_is_dead_lettered_under_its_reason() {
    let kafka = shared_settings();
    let registry = LocalRegistry::start(&RegistryConfig::ephemeral(
        kafka.clone(),
        &unique_topic("schemas"),
    ))
    .await
    .expect("registry starts");
    let codec = WireCodec::new(registry.url());
    let settings = ValidatorSettings {
        input_topic: unique_topic("usage.events"),
        output_topic: unique_topic("usage.validated"),
        dedup: true,
    };
    create_topic(&kafka, &settings.input_topic, 1)
        .await
        .expect("input topic");
    let subject = format!("{}-value", settings.input_topic);
    let usage_id = codec
        .contract_id::<UsageEvent>(&subject)
        .await
        .expect("usage contract registered");
    let encode = |event: UsageEvent| encode_framed(usage_id, &event).expect("encode");

    // Offsets 0 and 1 are tombstones, with a key and without; then one record per kind, in
    // this order.
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
    let mut expected = vec![(0, "missing_value"), (1, "missing_value")];
    let mut records = Vec::new();
    // A header with a null value (the protocol allows it) and one with an empty value: both
    // must come out as they went in, in outputs and in dead letters.
    let null_and_empty = || {
        vec![
            ("x-null".to_owned(), None),
            ("x-empty".to_owned(), Some(Vec::new())),
        ]
    };
    let mut bad = |value: Vec<u8>, reason: &'static str| {
        expected.push((expected.len() as i64, reason));
        records.push(TestRecord {
            headers: null_and_empty(),
            ..TestRecord::new("c-1", value)
        });
    };
    bad(vec![0, 0, 0], "truncated_record");
    let other_contract = codec
        .encode_contract(
            &format!("{}-accounts-value", settings.input_topic),
            &account(),
        )
        .await
        .expect("account encoded");
    bad(other_contract, "contract_violation");
    // 10^30 at scale 9: more than the 24 digits of the contract's quantity.
    bad(
        with_unscaled_quantity(&encode(usage_event("absurd")), 10i128.pow(30)),
        "contract_violation",
    );
    let mut nameless = usage_event("nameless");
    nameless.metadata.tenant_id = String::new();
    bad(encode(nameless), "contract_violation");
    let mut before_epoch = usage_event("before-epoch");
    before_epoch.metadata.occurred_at = i64::MIN;
    bad(encode(before_epoch), "contract_violation");
    // A string length of about 200 MB declared in five bytes (the allocation the fuzzers
    // found).
    bad(
        frame(usage_id, &[0x80, 0x90, 0xdf, 0xc0, 0x01]),
        "undecodable_body",
    );
    let valid_offset = expected.len() as i64;
    let traced = TestRecord {
        headers: [
            ("traceparent".to_owned(), Some(vec![0xff, 0xfe, b'0', b'0'])),
            ("x-binary".to_owned(), Some(vec![0, 159, 146, 150])),
        ]
        .into_iter()
        .chain(null_and_empty())
        .collect(),
        ..TestRecord::new("c-1", encode(usage_event("valid")))
    };
    records.push(traced);
    // A valid event without a key: taken, and keyed by tenant and customer on the way out.
    records.push(TestRecord {
        key: None,
        ..TestRecord::new("", encode(usage_event("keyless")))
    });
    let inputs = 2 + records.len() as i64;
    produce(&kafka, &settings.input_topic, &records)
        .await
        .expect("produce");

    let group = unique_group("usage-validator-poison");
    let mut runtime = RuntimeSettings {
        group_id: Some(group.clone()),
        topic_partitions: 1,
        ..RuntimeSettings::default()
    };
    runtime.state.dir = std::env::temp_dir().join("backbone-state").join(&group);
    let output = settings.output_topic.clone();
    let dlq = format!("{}.dlq", settings.input_topic);
    let validator = RunningProcessor::start(
        UsageValidator::new(settings.clone(), codec.clone()),
        &kafka,
        runtime,
    );
    let dead = consume_until(&kafka, &dlq, expected.len(), DEADLINE)
        .await
        .expect("dead letters");
    // Every input processed, then the output read to its end, whatever it holds.
    await_committed(&kafka, &group, &settings.input_topic, inputs, DEADLINE).await;
    let end = usize::try_from(end_offsets_total(&kafka, &output).expect("end")).expect("end");
    let forwarded = consume_until(&kafka, &output, end, DEADLINE)
        .await
        .expect("the valid events");
    validator.stop(DEADLINE).await;

    let reasons = dead_letter_reasons(&dead);
    let expected: BTreeMap<i64, String> = expected
        .into_iter()
        .map(|(offset, reason)| (offset, reason.to_owned()))
        .collect();
    assert_eq!(reasons, expected);
    // A tombstone's dead letter is a tombstone, its key (or its lack of one) kept, so a
    // replay sends back what arrived.
    let letter_at = |offset: &str| {
        dead.iter()
            .find(|l| l.header("backbone.origin.offset").as_deref() == Some(offset))
            .expect("the tombstone's letter")
    };
    assert_eq!(letter_at("0").value, None);
    assert_eq!(letter_at("0").key.as_deref(), Some(&b"c-1"[..]));
    assert_eq!(letter_at("1").value, None);
    assert_eq!(letter_at("1").key, None);
    for letter in dead.iter().filter(|l| l.value.is_some()) {
        assert_eq!(
            letter.headers[..2],
            null_and_empty()[..],
            "a dead letter keeps null and empty header values apart"
        );
    }

    // Header bytes that are not UTF-8 are carried as they are.
    assert_eq!(forwarded.len(), 2, "the two valid events, nothing else");
    assert_eq!(forwarded[0].offset, 0);
    let header = |name: &str| {
        forwarded[0]
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("traceparent"),
        Some(Some(vec![0xff, 0xfe, b'0', b'0']))
    );
    assert_eq!(header("x-binary"), Some(Some(vec![0, 159, 146, 150])));
    assert_eq!(header("x-null"), Some(None), "a null value stays null");
    assert_eq!(header("x-empty"), Some(Some(Vec::new())));
    assert_eq!(
        forwarded[0].header("backbone.idempotency.key").as_deref(),
        Some("acme/api/valid"),
        "the valid event is the one at offset {valid_offset}"
    );
    assert_eq!(
        forwarded[1].header("backbone.idempotency.key").as_deref(),
        Some("acme/api/keyless")
    );
    assert_eq!(
        forwarded[1].key.as_deref(),
        Some(&b"acme:c-1"[..]),
        "a keyless event is keyed by tenant and customer"
    );
}

/// librdkafka's default `message.max.bytes`: no record larger than this is sent.
const MAX_RECORD_BYTES: usize = 1_000_000;

/// Creates `topic` (one partition) taking records of up to `max_message_bytes`.
async fn topic_taking(kafka: &KafkaSettings, topic: &str, max_message_bytes: usize) {
    ensure_topics(
        kafka,
        &[TopicSpec::new(topic, 1)
            .with_config("max.message.bytes", &max_message_bytes.to_string())],
        DEADLINE,
    )
    .await
    .expect("topic with a size limit");
}

/// Client settings whose producer sends records of up to 4 MB.
fn large_records(kafka: &KafkaSettings) -> KafkaSettings {
    let mut large = kafka.clone();
    large
        .properties
        .insert("message.max.bytes".into(), "4000000".into());
    large
}

/// Waits until `group` has committed `total` on the single partition of `topic`.
async fn committed(kafka: &KafkaSettings, group: &str, topic: &str, total: i64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let offsets = committed_offsets(kafka, group, topic).expect("committed offsets");
        if offsets == [(0, Some(total))] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{group} committed {offsets:?} on `{topic}`, not {total}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nothing of `topic` committed by `group`.
fn nothing_committed(kafka: &KafkaSettings, group: &str, topic: &str) {
    let offsets = committed_offsets(kafka, group, topic).expect("committed offsets");
    assert!(
        offsets.iter().all(|(_, o)| o.unwrap_or(0) == 0),
        "{group} committed {offsets:?} on `{topic}`"
    );
}

fn runtime_for(group: &str) -> RuntimeSettings {
    let mut runtime = RuntimeSettings {
        group_id: Some(group.to_owned()),
        topic_partitions: 1,
        ..RuntimeSettings::default()
    };
    runtime.state.dir = std::env::temp_dir().join("backbone-state").join(group);
    runtime
}

/// A registry and a validator's settings, with its input topic created taking records of up
/// to `input_limit` bytes.
async fn validator_setup(
    kafka: &KafkaSettings,
    dedup: bool,
    input_limit: usize,
) -> (LocalRegistry, WireCodec, ValidatorSettings, u32) {
    let registry = LocalRegistry::start(&RegistryConfig::ephemeral(
        kafka.clone(),
        &unique_topic("schemas"),
    ))
    .await
    .expect("registry starts");
    let codec = WireCodec::new(registry.url());
    let settings = ValidatorSettings {
        input_topic: unique_topic("usage.events"),
        output_topic: unique_topic("usage.validated"),
        dedup,
    };
    topic_taking(kafka, &settings.input_topic, input_limit).await;
    let usage_id = codec
        .contract_id::<UsageEvent>(&format!("{}-value", settings.input_topic))
        .await
        .expect("usage contract registered");
    (registry, codec, settings, usage_id)
}

/// The event `id` carrying `padding` bytes, framed with `usage_id`. The padding does not
/// compress: the broker's limit applies to compressed batches.
fn padded(usage_id: u32, id: &str, padding: usize) -> Vec<u8> {
    let mut event = usage_event(id);
    event.unique_value = Some(noise(padding));
    encode_framed(usage_id, &event).expect("encode")
}

/// `len` letters and digits that lz4 cannot shrink (xorshift, the same on every run).
fn noise(len: usize) -> String {
    const SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(SYMBOLS[(state % SYMBOLS.len() as u64) as usize])
        })
        .collect()
}

#[tokio::test]
async fn an_input_whose_output_is_over_the_size_limit_is_dead_lettered_whole_and_the_validator_goes_on(
) {
    let kafka = shared_settings();
    // The input topic takes records of up to 3 MB, as a deployment may allow.
    let (_registry, codec, settings, usage_id) = validator_setup(&kafka, true, 3_000_000).await;
    let dlq = format!("{}.dlq", settings.input_topic);
    let over = padded(usage_id, "over", MAX_RECORD_BYTES);
    let refused = produce(
        &kafka,
        &settings.input_topic,
        &[TestRecord::new("c-1", over)],
    )
    .await;
    assert!(
        refused.is_err(),
        "the producer sends no record over its limit"
    );

    // The largest padded event the default producer takes: its output, the same bytes under a
    // longer key with the idempotency-key header, is over the output limit.
    let scratch = unique_topic("sizes");
    create_topic(&kafka, &scratch, 1)
        .await
        .expect("scratch topic");
    let (mut taken, mut refused) = (0, MAX_RECORD_BYTES);
    while refused - taken > 1 {
        let middle = (taken + refused) / 2;
        let record = TestRecord::new("c-1", padded(usage_id, "padded", middle));
        match produce(&kafka, &scratch, &[record]).await {
            Ok(()) => taken = middle,
            Err(_) => refused = middle,
        }
    }
    // Offset 0: that event; 1: a 2 MB event, whose dead letter only a dead-letter topic made
    // for large letters takes (the broker's default limit is 1 MiB); 2: a valid event.
    let inputs = [
        padded(usage_id, "padded", taken),
        padded(usage_id, "huge", 2_000_000),
    ];
    produce(
        &kafka,
        &settings.input_topic,
        &[TestRecord::new("c-1", inputs[0].clone())],
    )
    .await
    .expect("the largest record taken");
    produce(
        &large_records(&kafka),
        &settings.input_topic,
        &[TestRecord::new("c-1", inputs[1].clone())],
    )
    .await
    .expect("a 2 MB record");
    let after = encode_framed(usage_id, &usage_event("after")).expect("encode");
    produce(
        &kafka,
        &settings.input_topic,
        &[TestRecord::new("c-1", after)],
    )
    .await
    .expect("the next record");

    let group = unique_group("usage-validator-oversized");
    let validator = RunningProcessor::start(
        UsageValidator::new(settings.clone(), codec.clone()),
        &kafka,
        runtime_for(&group),
    );
    let dead = consume_until(&kafka, &dlq, 2, DEADLINE)
        .await
        .expect("dead letters");
    let forwarded = consume_until(&kafka, &settings.output_topic, 1, DEADLINE)
        .await
        .expect("the next record");
    committed(&kafka, &group, &settings.input_topic, 3).await;
    validator.stop(DEADLINE).await;

    for (offset, input) in inputs.iter().enumerate() {
        let letter = dead
            .iter()
            .find(|l| l.header("backbone.origin.offset") == Some(offset.to_string()))
            .expect("the oversized input's dead letter");
        assert_eq!(
            letter.header("backbone.dlq.reason").as_deref(),
            Some("output_too_large")
        );
        assert_eq!(
            letter.value.as_deref(),
            Some(&input[..]),
            "the input byte for byte"
        );
        assert_eq!(letter.key.as_deref(), Some(&b"c-1"[..]));
        let message = letter.header("backbone.dlq.message").expect("message");
        assert!(
            message.contains(&format!("`{}`", settings.output_topic))
                && message.contains("over runtime.max_output_bytes (1000000)"),
            "{message}"
        );
    }
    assert_eq!(
        forwarded[0].header("backbone.idempotency.key").as_deref(),
        Some("acme/api/after")
    );

    // A restart does not meet the oversized inputs again, and their dedup marks were never
    // kept: the same event, small now (as after a fix), is forwarded, not dropped as a repeat.
    produce(
        &kafka,
        &settings.input_topic,
        &[TestRecord::new("c-1", padded(usage_id, "padded", 10))],
    )
    .await
    .expect("the event again");
    let validator = RunningProcessor::start(
        UsageValidator::new(settings.clone(), codec.clone()),
        &kafka,
        runtime_for(&group),
    );
    let forwarded = consume_until(&kafka, &settings.output_topic, 2, DEADLINE)
        .await
        .expect("the event again, forwarded");
    committed(&kafka, &group, &settings.input_topic, 4).await;
    validator.stop(DEADLINE).await;
    assert_eq!(
        forwarded[1].header("backbone.idempotency.key").as_deref(),
        Some("acme/api/padded")
    );
    assert_eq!(end_offsets_total(&kafka, &dlq).expect("DLQ end"), 2);
    assert_eq!(
        end_offsets_total(&kafka, &settings.output_topic).expect("output end"),
        2
    );
}

#[tokio::test]
async fn an_output_topic_taking_less_than_the_output_limit_stops_the_validator_until_the_limit_fits(
) {
    narrow_output_topic_stops_the_validator(false).await;
}

/// With dedup, the refused input's dedup mark must not survive the stop: the restart would drop
/// the input as a duplicate instead of dead-lettering it.
#[tokio::test]
async fn with_dedup_an_input_whose_output_was_refused_is_not_taken_for_a_duplicate() {
    narrow_output_topic_stops_the_validator(true).await;
}

async fn narrow_output_topic_stops_the_validator(dedup: bool) {
    let kafka = shared_settings();
    let (_registry, codec, settings, usage_id) = validator_setup(&kafka, dedup, 1_048_588).await;
    // The output topic takes 50 kB; the validator's limit says 1 MB.
    topic_taking(&kafka, &settings.output_topic, 50_000).await;
    let wide = padded(usage_id, "wide", 100_000);
    let after = encode_framed(usage_id, &usage_event("after")).expect("encode");
    produce(
        &kafka,
        &settings.input_topic,
        &[
            TestRecord::new("c-1", wide.clone()),
            TestRecord::new("c-1", after),
        ],
    )
    .await
    .expect("produce");

    let group = unique_group("usage-validator-narrow-output");
    let stopped = RunningProcessor::start(
        UsageValidator::new(settings.clone(), codec.clone()),
        &kafka,
        runtime_for(&group),
    )
    .finished(DEADLINE)
    .await;
    let input = format!("{}[0]@0", settings.input_topic);
    let message = match &stopped {
        Err(err @ RuntimeError::OutputRefused { record, .. }) => {
            assert_eq!(record.input, input);
            assert_eq!(record.topic, settings.output_topic);
            assert!(record.bytes > 100_000, "{}", record.bytes);
            err.to_string()
        }
        other => panic!("expected the output refused, got {other:?}"),
    };
    assert!(
        message.contains("runtime.max_output_bytes"),
        "says what to change: {message}"
    );
    nothing_committed(&kafka, &group, &settings.input_topic);

    // With the limit lowered to what the topic takes, the restart dead-letters the input.
    let mut runtime = runtime_for(&group);
    runtime.max_output_bytes = 49_000;
    let validator = RunningProcessor::start(
        UsageValidator::new(settings.clone(), codec.clone()),
        &kafka,
        runtime,
    );
    let dlq = format!("{}.dlq", settings.input_topic);
    let dead = consume_until(&kafka, &dlq, 1, DEADLINE)
        .await
        .expect("the dead letter");
    let forwarded = consume_until(&kafka, &settings.output_topic, 1, DEADLINE)
        .await
        .expect("the next record");
    committed(&kafka, &group, &settings.input_topic, 2).await;
    validator.stop(DEADLINE).await;
    assert_eq!(
        dead[0].header("backbone.dlq.reason").as_deref(),
        Some("output_too_large")
    );
    assert_eq!(dead[0].value.as_deref(), Some(&wide[..]));
    // The first run may have forwarded the next record before it stopped: at least once.
    assert!(forwarded
        .iter()
        .all(|r| { r.header("backbone.idempotency.key").as_deref() == Some("acme/api/after") }));
}

#[tokio::test]
async fn a_dead_letter_over_a_limit_stops_the_validator_without_committing() {
    let kafka = shared_settings();

    // Over the validator's own dead-letter limit: refused by its producer.
    let (_registry, codec, settings, usage_id) = validator_setup(&kafka, false, 3_000_000).await;
    produce(
        &large_records(&kafka),
        &settings.input_topic,
        &[TestRecord::new("c-1", padded(usage_id, "huge", 2_000_000))],
    )
    .await
    .expect("a 2 MB record");
    let group = unique_group("usage-validator-large-letter");
    let mut runtime = runtime_for(&group);
    runtime.max_dead_letter_bytes = 1_500_000;
    let stopped = RunningProcessor::start(
        UsageValidator::new(settings.clone(), codec.clone()),
        &kafka,
        runtime,
    )
    .finished(DEADLINE)
    .await;
    assert_dead_letter_refused(&stopped, &settings.input_topic, 2_000_000);
    nothing_committed(&kafka, &group, &settings.input_topic);

    // Over the limit of a dead-letter topic that existed before: refused by the broker.
    let (_registry, codec, settings, _) = validator_setup(&kafka, false, 1_048_588).await;
    topic_taking(&kafka, &format!("{}.dlq", settings.input_topic), 50_000).await;
    let not_wire_format = format!("{{\"pad\": \"{}\"}}", noise(100_000));
    produce(
        &kafka,
        &settings.input_topic,
        &[TestRecord::new("c-1", not_wire_format)],
    )
    .await
    .expect("produce");
    let group = unique_group("usage-validator-narrow-dlq");
    let stopped = RunningProcessor::start(
        UsageValidator::new(settings.clone(), codec.clone()),
        &kafka,
        runtime_for(&group),
    )
    .finished(DEADLINE)
    .await;
    assert_dead_letter_refused(&stopped, &settings.input_topic, 100_000);
    nothing_committed(&kafka, &group, &settings.input_topic);
}

/// `stopped` is the refusal of the dead letter of offset 0 of `input`, at least `bytes` large.
fn assert_dead_letter_refused(
    stopped: &Result<RunSummary, RuntimeError>,
    input: &str,
    bytes: usize,
) {
    let message = match stopped {
        Err(err @ RuntimeError::DeadLetterRefused(record)) => {
            assert_eq!(record.input, format!("{input}[0]@0"));
            assert_eq!(record.topic, format!("{input}.dlq"));
            assert!(record.bytes > bytes, "{}", record.bytes);
            err.to_string()
        }
        other => panic!("expected the dead letter refused, got {other:?}"),
    };
    assert!(
        message.contains(&format!("{input}[0]@0")) && message.contains("max.message.bytes"),
        "names the input and what to raise: {message}"
    );
}

/// A header name that is not UTF-8 (rust-rdkafka panics reading it): the record is
/// dead-lettered as `unreadable_headers`, key and value byte for byte, and the validator goes
/// on with the next record instead of stopping on it again at every start.
#[tokio::test]
async fn a_header_name_that_is_not_utf8_is_dead_lettered_and_the_validator_goes_on() {
    let kafka = shared_settings();
    let (_registry, codec, settings, usage_id) = validator_setup(&kafka, true, 1 << 20).await;
    let bad = encode_framed(usage_id, &usage_event("raw-name")).expect("encode");
    produce_with_raw_header_name(
        &kafka,
        &settings.input_topic,
        "acme:c-1",
        b"\xff\xfe-name",
        &bad,
    )
    .expect("a record with a raw header name");
    let good = encode_framed(usage_id, &usage_event("after")).expect("encode");
    produce(
        &kafka,
        &settings.input_topic,
        &[TestRecord::new("acme:c-1", good)],
    )
    .await
    .expect("a valid event after it");

    let group = unique_group("usage-validator-raw-header");
    let dlq = format!("{}.dlq", settings.input_topic);
    let (input, output) = (settings.input_topic.clone(), settings.output_topic.clone());
    let validator = RunningProcessor::start(
        UsageValidator::new(settings, codec),
        &kafka,
        runtime_for(&group),
    );
    let letters = consume_until(&kafka, &dlq, 1, DEADLINE)
        .await
        .expect("the dead letter");
    let outputs = consume_until(&kafka, &output, 1, DEADLINE)
        .await
        .expect("the valid event");
    committed(&kafka, &group, &input, 2).await;
    let summary = validator.stop(DEADLINE).await;
    assert_eq!(summary.dead_lettered, 1, "{summary:?}");
    assert_eq!(
        letters[0].header("backbone.dlq.reason").as_deref(),
        Some("unreadable_headers")
    );
    assert_eq!(
        letters[0].value.as_deref(),
        Some(bad.as_slice()),
        "the value byte for byte"
    );
    assert_eq!(letters[0].key.as_deref(), Some(b"acme:c-1".as_slice()));
    assert_eq!(outputs.len(), 1);
}
