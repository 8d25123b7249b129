//! The sinks against the sandbox over real HTTP and the shared broker: every record delivered
//! once through errors, lost answers, throttling, an outage, a kill and a replay; a refused
//! credential stops a sink without dead letters or commits, and so does a broker that refuses
//! it access.

#[path = "support/sinks.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use backbone_billing_sink::{BillingSettings, BillingSink};
use backbone_core::admin::{ensure_topics, TopicSpec};
use backbone_crm_sink::{CrmSettings, CrmSink};
use backbone_sandbox::SandboxConfig;
use backbone_sandbox::{Faults, System};
use backbone_schemas::types::{
    AccountHealthSnapshot, Amount, BillingCharge, DeliveryOutcome, DeliveryResult, HealthStatus,
};
use backbone_schemas::WireCodec;
use backbone_sink::http::JsonApi;
use backbone_sink::metrics::names;
use backbone_sink::{DestinationSettings, SinkError, SinkSettings, DESTINATION_REJECTED};
use backbone_testkit::{
    committed_offsets, consume_until, create_topic, dead_letter_reasons, produce,
    produce_tombstone, produce_with_raw_header_name, shared_settings, unique_group, unique_topic,
    ChildProcess, IssuedCert, KafkaBroker, TestCa, TestRecord,
};
use support::{eventually, metadata, registry_url, results, RunningSink, Sandbox, SinkTopics};

const DEADLINE: Duration = Duration::from_secs(120);

fn charge(i: usize, currency: &str) -> BillingCharge {
    support::api_charge("acme", format!("rt-{i:04}"), i, 9, currency)
}

/// Encodes `charges` through the registry and produces them to `topic`, keyed by subscription;
/// returns the records produced.
async fn publish_charges(
    codec: &WireCodec,
    topic: &str,
    charges: &[BillingCharge],
) -> Vec<TestRecord> {
    let mut records = Vec::with_capacity(charges.len());
    for charge in charges {
        let value = support::encode(codec, topic, charge).await;
        records.push(TestRecord::new(
            format!("acme:{}", charge.subscription_id),
            value,
        ));
    }
    produce(&shared_settings(), topic, &records)
        .await
        .expect("produce charges");
    records
}

/// Takes the sandbox's billing API down for `seconds`, from now.
async fn billing_outage(sandbox: &Sandbox, seconds: u64) {
    sandbox
        .client
        .set_faults(
            System::Billing,
            &Faults {
                outage_seconds: seconds,
                ..Faults::default()
            },
        )
        .await
        .expect("outage");
}

async fn crm_sink(topic: &str, destination: &DestinationSettings) -> CrmSink {
    let settings = CrmSettings {
        topic: topic.to_owned(),
        request_records: 50,
    };
    CrmSink::new(
        settings,
        JsonApi::connect(destination).await.expect("CRM API client"),
    )
}

async fn billing_sink(topic: &str, destination: &DestinationSettings) -> BillingSink {
    let settings = BillingSettings {
        topic: topic.to_owned(),
        concurrency: 8,
        ..BillingSettings::default()
    };
    BillingSink::new(
        settings,
        JsonApi::connect(destination)
            .await
            .expect("billing API client"),
    )
}

fn outcomes(results: &[DeliveryResult]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for result in results {
        *counts.entry(format!("{:?}", result.outcome)).or_default() += 1;
    }
    counts
}

/// Charges held by the sandbox, by business identity (`<rating_id>#<revision>` from the
/// metadata the sink sends), counted whatever idempotency keys created them; fails on an
/// identity held twice or a charge without one. Read once the sink has stopped, so nothing
/// arrives after it.
async fn charges_by_identity(sandbox: &Sandbox) -> BTreeMap<String, String> {
    let mut held = BTreeMap::new();
    for charge in sandbox.client.charges().await.expect("charges") {
        let identity = charge
            .identity()
            .unwrap_or_else(|| panic!("charge {} carries no identity", charge.id));
        let previous = held.insert(identity.clone(), charge.amount.clone());
        assert!(previous.is_none(), "charge {identity} held twice");
    }
    held
}

/// The identity a charge is held under.
fn identity(charge: &BillingCharge) -> String {
    format!("{}#{}", charge.rating_id, charge.revision)
}

#[tokio::test]
async fn billing_delivers_every_charge_once_through_errors_lost_answers_throttling_and_replays() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    sandbox
        .client
        .set_faults(
            System::Billing,
            &Faults {
                error_rate: 0.15,
                lost_response_rate: 0.15,
                throttle_rate: 0.15,
                retry_after_seconds: 0,
                ..Faults::default()
            },
        )
        .await
        .expect("faults");
    let topics = SinkTopics::create("billing", 3).await;
    let codec = WireCodec::new(registry_url());
    let mut charges: Vec<BillingCharge> = (0..120).map(|i| charge(i, "EUR")).collect();
    // Redeliveries upstream: the same charges again, at later offsets.
    charges.extend((0..10).map(|i| charge(i, "EUR")));
    // The billing system does not take this currency: a rejection for the DLQ.
    charges.push(charge(500, "XXX"));
    let records = publish_charges(&codec, &topics.input, &charges).await;

    let sink = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        topics.settings(),
    );
    let first = results(&codec, &topics.results, charges.len()).await;
    let summary = sink.stop().await;

    let held = charges_by_identity(&sandbox).await;
    assert_eq!(held.len(), 120, "every distinct charge once: {summary:?}");
    for charge in &charges[..120] {
        assert_eq!(
            held.get(&identity(charge)),
            Some(&charge.amount.to_string())
        );
    }
    assert_eq!(
        sandbox.applied("billing").await,
        120,
        "no charge applied twice"
    );
    for status in [503, 504, 429] {
        assert!(
            sandbox.answered("billing", status).await > 0,
            "the sandbox injected {status}s, so retries were exercised"
        );
    }
    let counts = outcomes(&first);
    assert_eq!(
        first.len(),
        charges.len(),
        "one result per input record: {counts:?}"
    );
    assert_eq!(counts.get("Rejected"), Some(&1), "{counts:?}");
    let rejected = first
        .iter()
        .find(|r| r.outcome == DeliveryOutcome::Rejected)
        .expect("the rejected charge");
    assert_eq!(rejected.error_code.as_deref(), Some("unsupported_currency"));
    let delivered: Amount = first
        .iter()
        .filter(|r| r.outcome == DeliveryOutcome::Delivered)
        .filter_map(|r| r.amount)
        .fold(Amount::ZERO, |sum, a| sum.checked_add(a).expect("sum"));
    assert!(delivered > Amount::ZERO);

    let dlq = consume_until(
        &shared_settings(),
        &format!("{}.dlq", topics.input),
        1,
        DEADLINE,
    )
    .await
    .expect("the dead letter");
    assert_eq!(dlq.len(), 1, "exactly the rejected charge is dead-lettered");
    assert_eq!(
        dlq[0].header("backbone.dlq.reason").as_deref(),
        Some(DESTINATION_REJECTED)
    );
    let message = dlq[0].header("backbone.dlq.message").unwrap_or_default();
    assert!(message.contains("unsupported_currency"), "{message}");
    assert_eq!(
        dlq[0].value,
        Some(records[130].value.clone()),
        "the record byte for byte"
    );

    // A replay: the same records published again, read by the same group with its ledger.
    // The ledger answers them without a request, except the rejected charge, which a replay
    // tries again.
    sandbox
        .client
        .clear_faults(System::Billing)
        .await
        .expect("clear faults");
    let created_before = sandbox.answered("billing", 201).await;
    produce(&shared_settings(), &topics.input, &records)
        .await
        .expect("replay charges");
    let replay = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        topics.settings(),
    );
    results(&codec, &topics.results, 2 * charges.len()).await;
    let replay_summary = replay.stop().await;
    assert_eq!(replay_summary.already_delivered, 130, "{replay_summary:?}");
    assert_eq!(replay_summary.rejected, 1, "{replay_summary:?}");
    assert_eq!(replay_summary.delivered, 0, "{replay_summary:?}");
    assert_eq!(
        sandbox.answered("billing", 201).await,
        created_before,
        "no request for a known key"
    );

    // A new deployment (new group, so a new ledger) reads both copies: every charge is sent
    // again, the billing system answers each with its first response, nothing is charged twice.
    let mut fresh = topics.settings();
    fresh.group_id = Some(format!("{}-fresh", topics.group));
    let again = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        fresh,
    );
    results(&codec, &topics.results, 4 * charges.len()).await;
    let again_summary = again.stop().await;
    assert_eq!(again_summary.delivered, 0, "{again_summary:?}");
    assert_eq!(again_summary.already_delivered, 260, "{again_summary:?}");
    assert_eq!(charges_by_identity(&sandbox).await.len(), 120);
    assert_eq!(sandbox.applied("billing").await, 120);
}

#[tokio::test]
async fn records_a_sink_cannot_deliver_are_dead_lettered_on_arrival() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("billing-poison", 1).await;
    let codec = WireCodec::new(registry_url());
    let kafka = shared_settings();
    // Offset 0 a tombstone, then: not wire format, a body cut short, a charge without its
    // idempotency key, and a valid charge.
    produce_tombstone(&kafka, &topics.input, Some(b"acme:s-1".as_slice()), Some(0))
        .await
        .expect("tombstone");
    let valid = support::encode(&codec, &topics.input, &charge(1, "EUR")).await;
    let mut keyless = charge(2, "EUR");
    keyless.rating_id.clear();
    let keyless = support::encode(&codec, &topics.input, &keyless).await;
    let records: Vec<TestRecord> = [
        b"{\"rating_id\":\"rt-9\"}".to_vec(),
        valid[..valid.len() - 3].to_vec(),
        keyless,
        valid,
    ]
    .into_iter()
    .map(|value| TestRecord::new("acme:s-1", value))
    .collect();
    produce(&kafka, &topics.input, &records)
        .await
        .expect("produce");
    // Offset 5: a valid charge with a header name that is not UTF-8.
    let raw_name = support::encode(&codec, &topics.input, &charge(3, "EUR")).await;
    produce_with_raw_header_name(&kafka, &topics.input, "acme:s-1", b"\xff-name", &raw_name)
        .expect("a record with a raw header name");

    let sink = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        topics.settings(),
    );
    let dlq = consume_until(&kafka, &format!("{}.dlq", topics.input), 5, DEADLINE)
        .await
        .expect("dead letters");
    let delivered = eventually(DEADLINE, "the valid charge delivered", || async {
        let held = charges_by_identity(&sandbox).await;
        (!held.is_empty()).then_some(held)
    })
    .await;
    sink.stop().await;

    let reasons = dead_letter_reasons(&dlq);
    let expected: BTreeMap<i64, String> = [
        (0, "missing_value"),
        (1, "wrong_magic_byte"),
        (2, "undecodable_body"),
        (3, "missing_idempotency_key"),
        (5, "unreadable_headers"),
    ]
    .into_iter()
    .map(|(offset, reason)| (offset, reason.to_owned()))
    .collect();
    assert_eq!(reasons, expected);
    let tombstone = dlq
        .iter()
        .find(|l| l.header("backbone.origin.offset").as_deref() == Some("0"))
        .expect("the tombstone's letter");
    assert_eq!(
        tombstone.value, None,
        "a tombstone's dead letter is a tombstone"
    );
    assert_eq!(tombstone.key.as_deref(), Some(&b"acme:s-1"[..]));
    assert_eq!(
        delivered.keys().collect::<Vec<_>>(),
        ["rt-0001#1"],
        "only the valid charge reached the billing system"
    );
}

#[tokio::test]
async fn a_dead_letter_over_the_limit_stops_the_sink_without_committing() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("billing-large-letter", 1).await;
    let kafka = shared_settings();
    let not_wire_format = format!("{{\"pad\": \"{}\"}}", "x".repeat(5_000));
    produce(
        &kafka,
        &topics.input,
        &[TestRecord::new("acme:s-1", not_wire_format)],
    )
    .await
    .expect("produce");
    let mut settings = topics.settings();
    settings.max_dead_letter_bytes = 1_000;

    let sink = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        settings,
    );
    let result = sink.finished(DEADLINE).await;
    let input = format!("{}[0]@0", topics.input);
    match &result {
        Err(SinkError::Publish { topic, message }) => {
            assert_eq!(topic, &format!("{}.dlq", topics.input));
            assert!(
                message.contains(&input) && message.contains("max_dead_letter_bytes"),
                "names the input and what to raise: {message}"
            );
        }
        other => panic!("expected the dead letter refused, got {other:?}"),
    }
    let committed = committed_offsets(&kafka, &topics.group, &topics.input).expect("offsets");
    assert!(
        committed.iter().all(|(_, o)| o.unwrap_or(0) == 0),
        "nothing committed: {committed:?}"
    );
}

/// The producer takes the dead letter (it is under `runtime.max_dead_letter_bytes`) and the
/// broker refuses it (the dead-letter topic, made by someone else, takes less): the sink learns
/// it from the broker's answer, after it went on reading, and still stops with nothing
/// committed.
#[tokio::test]
async fn a_dead_letter_the_broker_refuses_after_taking_it_stops_the_sink_without_committing() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("billing-broker-refuses-letter", 1).await;
    let kafka = shared_settings();
    ensure_topics(
        &kafka,
        &[TopicSpec::new(format!("{}.dlq", topics.input), 1)
            .with_config("max.message.bytes", "2000")],
        Duration::from_secs(30),
    )
    .await
    .expect("a small dead-letter topic");
    // Random, so that the producer's compression does not bring it under the topic's limit.
    let pad: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(20_000)
        .collect();
    let not_wire_format = format!("{{\"pad\": \"{pad}\"}}");
    produce(
        &kafka,
        &topics.input,
        &[TestRecord::new("acme:s-1", not_wire_format)],
    )
    .await
    .expect("produce");

    let sink = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        topics.settings(),
    );
    let result = sink.finished(DEADLINE).await;
    match &result {
        Err(SinkError::Publish { topic, message }) => {
            assert_eq!(topic, &format!("{}.dlq", topics.input));
            assert!(
                message.contains(&format!("{}[0]@0", topics.input)),
                "names the input: {message}"
            );
        }
        other => panic!("expected the dead letter refused, got {other:?}"),
    }
    let committed = committed_offsets(&kafka, &topics.group, &topics.input).expect("offsets");
    assert!(
        committed.iter().all(|(_, o)| o.unwrap_or(0) == 0),
        "nothing committed: {committed:?}"
    );
}

#[tokio::test]
async fn a_crm_snapshot_without_a_customer_is_dead_lettered_on_arrival() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("crm-keyless", 1).await;
    let codec = WireCodec::new(registry_url());
    let mut keyless = snapshot(1, 1_000, "1.5");
    keyless.customer_id.clear();
    let mut records = Vec::new();
    for s in [keyless, snapshot(2, 1_000, "2.5")] {
        let value = support::encode(&codec, &topics.input, &s).await;
        records.push(TestRecord::new("acme:c-2", value));
    }
    produce(&shared_settings(), &topics.input, &records)
        .await
        .expect("produce snapshots");
    let sink = RunningSink::start(
        crm_sink(&topics.input, &sandbox.destination()).await,
        topics.settings(),
    );
    results(&codec, &topics.results, 1).await;
    // Both records settled (committed), then the dead-letter topic read to its end.
    let kafka = shared_settings();
    eventually(DEADLINE, "both snapshots committed", || async {
        let committed: i64 = committed_offsets(&kafka, &topics.group, &topics.input)
            .ok()?
            .iter()
            .filter_map(|(_, offset)| *offset)
            .sum();
        (committed >= 2).then_some(())
    })
    .await;
    sink.stop().await;
    let dlq = format!("{}.dlq", topics.input);
    let end = backbone_testkit::end_offsets_total(&kafka, &dlq).expect("end");
    let letters = consume_until(&kafka, &dlq, usize::try_from(end).expect("end"), DEADLINE)
        .await
        .expect("dead letters");
    assert_eq!(
        dead_letter_reasons(&letters),
        BTreeMap::from([(0, "missing_idempotency_key".to_owned())])
    );
    let accounts = sandbox.client.accounts().await.expect("accounts");
    let ids: Vec<&str> = accounts.iter().map(|a| a.external_id.as_str()).collect();
    assert_eq!(
        ids,
        ["acme:c-2"],
        "only the snapshot with a customer reached the CRM"
    );
}

/// Runs the billing sink over `charges` (published to `topics.input`), then loses its ledger
/// and replays the topic from the start with a new group, as after an offset reset or a
/// partition's new owner without the old one's ledger; the results of both runs.
async fn billed_then_replayed_without_ledger(
    sandbox: &Sandbox,
    topics: &SinkTopics,
    codec: &WireCodec,
    charges: &[BillingCharge],
) -> Vec<DeliveryResult> {
    let sink = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        topics.settings(),
    );
    results(codec, &topics.results, charges.len()).await;
    sink.stop().await;
    std::fs::remove_dir_all(&topics.ledger_dir).expect("delete the ledger");
    let settings = SinkSettings {
        group_id: Some(unique_group("billing-replay")),
        ..topics.settings()
    };
    let sink = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        settings,
    );
    let both = results(codec, &topics.results, 2 * charges.len()).await;
    sink.stop().await;
    both
}

#[tokio::test]
async fn a_lost_ledger_and_expired_keys_bill_nothing_twice() {
    // The billing system forgets every idempotency key at once, as a real one does after a
    // day: only the sink itself can keep a replay from billing again.
    let mut config = SandboxConfig::default();
    config.billing.idempotency_ttl = Duration::ZERO;
    let sandbox = Sandbox::start(config).await;
    let topics = SinkTopics::create("billing-lost-ledger", 2).await;
    let codec = WireCodec::new(registry_url());
    let charges: Vec<BillingCharge> = (0..30).map(|i| charge(i, "EUR")).collect();
    publish_charges(&codec, &topics.input, &charges).await;

    let second = billed_then_replayed_without_ledger(&sandbox, &topics, &codec, &charges).await;

    let held = charges_by_identity(&sandbox).await;
    assert_eq!(held.len(), charges.len(), "every charge once");
    // The billing period as the API takes it: first and last day (the contract's end is the
    // day after).
    let stored = sandbox.client.charges().await.expect("charges");
    assert!(
        stored
            .iter()
            .all(|c| (c.period_start.as_str(), c.period_end.as_str())
                == ("2026-05-27", "2026-06-25")),
        "{:?}",
        stored.first()
    );
    assert_eq!(
        sandbox.applied("billing").await,
        30,
        "no charge created twice"
    );
    // Both runs' results: the first created every charge, the replay found every one; a
    // replay's result has the id of the first one for the same record.
    let ids: BTreeSet<&str> = second
        .iter()
        .map(|r| r.metadata.event_id.as_str())
        .collect();
    assert_eq!(ids.len(), charges.len(), "one result id per input record");
    let both = outcomes(&second);
    assert_eq!(
        (both.get("Delivered"), both.get("AlreadyDelivered")),
        (Some(&charges.len()), Some(&charges.len())),
        "{both:?}"
    );
}

#[tokio::test]
async fn only_a_charge_older_than_the_api_may_remember_its_key_is_looked_up_first() {
    // The billing API keeps keys for its default day; the sink looks up charges whose usage is
    // older than twelve hours. Half the charges occurred a minute ago, half months ago.
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("billing-lookup-after", 2).await;
    let codec = WireCodec::new(registry_url());
    let mut charges: Vec<BillingCharge> = (0..20).map(|i| charge(i, "EUR")).collect();
    let a_minute_ago = backbone_calendar::now_micros() - 60_000_000;
    for young in &mut charges[..10] {
        young.metadata.occurred_at = a_minute_ago;
    }
    publish_charges(&codec, &topics.input, &charges).await;

    let both = billed_then_replayed_without_ledger(&sandbox, &topics, &codec, &charges).await;

    assert_eq!(charges_by_identity(&sandbox).await.len(), charges.len());
    assert_eq!(
        sandbox.applied("billing").await,
        20,
        "no charge created twice"
    );
    // The first run posted all 20 (the old ones after a lookup found nothing). On the replay
    // the old ones were found by their lookup and not posted; the young ones were posted
    // again, straight away, and answered from their keys.
    let stats = sandbox.client.stats().await.expect("stats");
    assert_eq!(stats["billing"]["201"], 30, "{stats}");
    let counted = outcomes(&both);
    assert_eq!(
        (counted.get("Delivered"), counted.get("AlreadyDelivered")),
        (Some(&charges.len()), Some(&charges.len())),
        "{counted:?}"
    );
    assert_eq!(
        backbone_testkit::end_offsets_total(&shared_settings(), &topics.results).expect("end"),
        2 * i64::try_from(charges.len()).expect("count"),
        "one result per charge and run"
    );
}

#[tokio::test]
async fn a_broker_refusing_access_stops_the_sink_with_its_alert_raised() {
    let broker = KafkaBroker::start_authorizing().expect("an authorizing broker");
    let kafka = broker.settings();
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::named("billing-denied");
    create_topic(&kafka, &topics.input, 1)
        .await
        .expect("input topic");
    broker.deny_reads(&topics.input).expect("deny reads");

    let sink = RunningSink::start_with(
        billing_sink(&topics.input, &sandbox.destination()).await,
        topics.settings(),
        kafka,
    );
    eventually(DEADLINE, "the sink to stop on its own", || async {
        sink.is_finished().then_some(())
    })
    .await;
    let fatal = sink.metric(
        backbone_core::metrics::names::PROCESSOR_FATAL_ERRORS,
        Some(("kind", "auth")),
    );
    let result = sink.finished(DEADLINE).await;
    assert!(matches!(result, Err(SinkError::Refused(_))), "{result:?}");
    assert_eq!(fatal, 1.0, "the alert metric is raised");
}

#[tokio::test]
async fn a_refused_credential_stops_the_sink_without_dead_letters_or_commits() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("billing-auth", 1).await;
    let codec = WireCodec::new(registry_url());
    let charges: Vec<BillingCharge> = (0..20).map(|i| charge(i, "EUR")).collect();
    publish_charges(&codec, &topics.input, &charges).await;
    let mut destination = sandbox.destination();
    destination.credential = backbone_core::Secret::new("revoked-token");

    let sink = RunningSink::start(
        billing_sink(&topics.input, &destination).await,
        topics.settings(),
    );
    eventually(DEADLINE, "the sink to stop on its own", || async {
        sink.is_finished().then_some(())
    })
    .await;
    let fatal = sink.metric(
        backbone_core::metrics::names::PROCESSOR_FATAL_ERRORS,
        Some(("kind", "auth")),
    );
    let result = sink.finished(DEADLINE).await;
    assert!(
        matches!(result, Err(SinkError::Unauthorized { status: 401, .. })),
        "{result:?}"
    );
    assert_eq!(fatal, 1.0, "the alert metric is raised");
    assert!(sandbox.client.charges().await.expect("charges").is_empty());
    let committed = committed_offsets(&shared_settings(), &topics.group, &topics.input)
        .expect("committed offsets");
    assert!(
        committed.iter().all(|(_, offset)| offset.unwrap_or(0) <= 0),
        "nothing committed: {committed:?}"
    );
    let dlq_end =
        backbone_testkit::end_offsets_total(&shared_settings(), &format!("{}.dlq", topics.input))
            .expect("dlq end offsets");
    assert_eq!(dlq_end, 0, "nothing dead-lettered");
}

#[tokio::test]
async fn an_outage_opens_the_circuit_pauses_the_input_and_loses_nothing() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("billing-outage", 2).await;
    let codec = WireCodec::new(registry_url());
    let charges: Vec<BillingCharge> = (0..60).map(|i| charge(i, "EUR")).collect();
    let (before, during) = charges.split_at(20);
    publish_charges(&codec, &topics.input, before).await;
    let sink = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        topics.settings(),
    );
    eventually(DEADLINE, "the first charges", || async {
        (sandbox.applied("billing").await == 20).then_some(())
    })
    .await;

    // The billing system goes down for a minute; charges keep arriving.
    billing_outage(&sandbox, 60).await;
    publish_charges(&codec, &topics.input, during).await;
    eventually(DEADLINE, "the circuit to open", || async {
        (sink.metric(names::CIRCUIT_STATE, None) == 1.0).then_some(())
    })
    .await;
    let refused_at_open = sandbox.answered("billing", 503).await;
    // While open, the sink sends one probe per second (the test's `open_for`), not a request
    // per charge per retry.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let refused_while_open = sandbox.answered("billing", 503).await - refused_at_open;
    assert!(
        refused_while_open <= 10,
        "probes only while open: {refused_while_open} refused requests in 5 s"
    );
    assert_eq!(
        sandbox.applied("billing").await,
        20,
        "nothing gets through the outage"
    );

    eventually(
        Duration::from_secs(150),
        "every charge after the outage",
        || async { (sandbox.applied("billing").await == 60).then_some(()) },
    )
    .await;
    eventually(DEADLINE, "the circuit to close", || async {
        (sink.metric(names::CIRCUIT_STATE, None) == 0.0).then_some(())
    })
    .await;
    let summary = sink.stop().await;
    assert!(summary.circuit_opened >= 1, "{summary:?}");
    assert_eq!(charges_by_identity(&sandbox).await.len(), 60);
    let all = results(&codec, &topics.results, 60).await;
    assert_eq!(outcomes(&all).get("Delivered"), Some(&60));
}

#[tokio::test]
async fn an_outage_longer_than_the_poll_interval_loses_and_doubles_nothing() {
    // The circuit stays open three times `max.poll.interval.ms`: a consumer not polled that
    // long leaves its group, and its uncommitted records are read and answered again.
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("billing-long-outage", 2).await;
    let codec = WireCodec::new(registry_url());
    let charges: Vec<BillingCharge> = (0..50).map(|i| charge(i, "EUR")).collect();
    let (first, after) = charges.split_at(40);
    billing_outage(&sandbox, 20).await;
    publish_charges(&codec, &topics.input, first).await;
    let mut kafka = shared_settings();
    kafka
        .consumer_properties
        .insert("max.poll.interval.ms".to_owned(), "7000".to_owned());
    let sink = RunningSink::start_with(
        billing_sink(&topics.input, &sandbox.destination()).await,
        topics.settings(),
        kafka,
    );
    eventually(DEADLINE, "the circuit to open", || async {
        (sink.metric(names::CIRCUIT_STATE, None) == 1.0).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(150),
        "every charge after the outage",
        || async { (sandbox.applied("billing").await == 40).then_some(()) },
    )
    .await;

    // Back in its group, the sink goes on reading.
    publish_charges(&codec, &topics.input, after).await;
    eventually(DEADLINE, "the charges after it", || async {
        (sandbox.applied("billing").await == 50).then_some(())
    })
    .await;
    let summary = sink.stop().await;
    assert!(summary.circuit_opened >= 1, "{summary:?}");
    assert_eq!(charges_by_identity(&sandbox).await.len(), 50);
    assert_eq!(
        sandbox.applied("billing").await,
        50,
        "nothing applied twice"
    );
    let all = results(&codec, &topics.results, 50).await;
    assert_eq!(
        outcomes(&all).get("Delivered"),
        Some(&50),
        "{:?}",
        outcomes(&all)
    );
    let answered = backbone_testkit::end_offsets_total(&shared_settings(), &topics.results)
        .expect("results end offsets");
    assert_eq!(
        answered, 50,
        "one result per charge: no record was read twice"
    );
}

#[tokio::test]
async fn a_partition_assigned_while_the_circuit_is_open_waits_with_the_rest() {
    // Two instances meet an outage; one stops. The rebalance hands the other partitions it
    // never paused, with records its peer took but could not deliver: polled while its circuit
    // is open, it must neither read past them nor drop them.
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("billing-leave-outage", 4).await;
    let codec = WireCodec::new(registry_url());
    let charges: Vec<BillingCharge> = (0..40).map(|i| charge(i, "EUR")).collect();
    billing_outage(&sandbox, 20).await;
    let staying = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        topics.settings(),
    );
    let mut leaving_settings = topics.settings();
    leaving_settings.ledger_dir = topics.ledger_dir.join("leaving");
    let leaving = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        leaving_settings,
    );
    publish_charges(&codec, &topics.input, &charges).await;
    eventually(DEADLINE, "both circuits to open", || async {
        (staying.metric(names::CIRCUIT_STATE, None) == 1.0
            && leaving.metric(names::CIRCUIT_STATE, None) == 1.0)
            .then_some(())
    })
    .await;
    let left = leaving.stop().await;
    assert_eq!(left.delivered, 0, "{left:?}");

    eventually(
        Duration::from_secs(120),
        "every charge after the outage",
        || async { (sandbox.applied("billing").await == 40).then_some(()) },
    )
    .await;
    let stayed = staying.stop().await;
    assert!(stayed.circuit_opened >= 1, "{stayed:?}");
    assert_eq!(charges_by_identity(&sandbox).await.len(), 40);
    assert_eq!(
        sandbox.applied("billing").await,
        40,
        "nothing applied twice"
    );
}

#[tokio::test]
async fn a_partition_paused_under_an_open_circuit_is_read_when_it_comes_back_after_the_circuit_closed(
) {
    // librdkafka keeps a partition's pause across its revocation and a new assignment. The
    // staying instance pauses all four partitions under an outage; a peer joins and takes two;
    // the outage ends and the stayer resumes the two it has; the peer leaves and the two come
    // back to the stayer, paused still unless the sink resumes them.
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("billing-paused-return", 4).await;
    let codec = WireCodec::new(registry_url());
    let charges: Vec<BillingCharge> = (0..60).map(|i| charge(i, "EUR")).collect();
    let (first, later) = charges.split_at(20);
    billing_outage(&sandbox, 600).await;
    let staying = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        topics.settings(),
    );
    publish_charges(&codec, &topics.input, first).await;
    eventually(DEADLINE, "the stayer's circuit to open", || async {
        (staying.metric(names::CIRCUIT_STATE, None) == 1.0).then_some(())
    })
    .await;
    let mut peer_settings = topics.settings();
    peer_settings.ledger_dir = topics.ledger_dir.join("peer");
    let peer = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        peer_settings,
    );
    eventually(DEADLINE, "the peer to take partitions", || async {
        (peer.metric(names::CIRCUIT_STATE, None) == 1.0).then_some(())
    })
    .await;
    sandbox
        .client
        .clear_faults(System::Billing)
        .await
        .expect("end the outage");
    eventually(DEADLINE, "the charges so far", || async {
        (sandbox.applied("billing").await == 20).then_some(())
    })
    .await;
    peer.stop().await;

    // Charges on every partition, the peer's two among them, for the stayer alone.
    publish_charges(&codec, &topics.input, later).await;
    eventually(
        DEADLINE,
        "every charge, on every partition, through the stayer",
        || async { (sandbox.applied("billing").await == 60).then_some(()) },
    )
    .await;
    staying.stop().await;
    assert_eq!(charges_by_identity(&sandbox).await.len(), 60);
}

/// The binaries live next to this package's own in the target directory (`make test` builds
/// them all first).
fn workspace_binary(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_BIN_EXE_tally")).with_file_name(name)
}

fn spawn_billing_sink(topics: &SinkTopics, sandbox: &Sandbox, log: &Path) -> ChildProcess {
    let kafka = shared_settings();
    let ledger = topics.ledger_dir.to_string_lossy().into_owned();
    ChildProcess::spawn(
        &workspace_binary("billing-sink"),
        &[],
        &[
            (
                "BACKBONE__KAFKA__BOOTSTRAP_SERVERS",
                &kafka.bootstrap_servers,
            ),
            ("BACKBONE__KAFKA__SESSION_TIMEOUT", "6s"),
            ("BACKBONE__KAFKA__COMMIT_INTERVAL", "200ms"),
            ("BACKBONE__RUNTIME__GROUP_ID", &topics.group),
            ("BACKBONE__RUNTIME__LEDGER_DIR", &ledger),
            ("BACKBONE__RUNTIME__RESULTS_TOPIC", &topics.results),
            ("BACKBONE__RUNTIME__BATCH_MAX", "20"),
            ("BACKBONE__RUNTIME__LINGER", "20ms"),
            ("BACKBONE__SINK__TOPIC", &topics.input),
            ("BACKBONE__DESTINATION__URL", &sandbox.url),
            ("BACKBONE__DESTINATION__CREDENTIAL", "sandbox-token"),
            ("BACKBONE__SCHEMA_REGISTRY__URL", &registry_url()),
            ("BACKBONE__OBSERVABILITY__LISTEN", "127.0.0.1:0"),
        ],
        Some(log),
    )
    .expect("start billing-sink")
}

#[tokio::test]
async fn a_sink_killed_mid_batch_and_restarted_charges_each_record_once() {
    let mut config = SandboxConfig::default();
    // Slow answers, so that the kill lands with requests in flight.
    config.faults.billing.latency_ms = 40;
    let sandbox = Sandbox::start(config).await;
    let topics = SinkTopics::create("billing-kill", 3).await;
    let codec = WireCodec::new(registry_url());
    let charges: Vec<BillingCharge> = (0..300).map(|i| charge(i, "EUR")).collect();
    publish_charges(&codec, &topics.input, &charges).await;
    let log = std::env::temp_dir().join(format!("{}.log", topics.group));

    let mut sink = spawn_billing_sink(&topics, &sandbox, &log);
    eventually(DEADLINE, "a third of the charges", || async {
        (sandbox.applied("billing").await >= 100).then_some(())
    })
    .await;
    sink.crash().expect("SIGKILL the sink");
    let at_kill = sandbox.applied("billing").await;
    assert!(at_kill < 300, "killed before the end: {at_kill}");

    let mut restarted = spawn_billing_sink(&topics, &sandbox, &log.with_extension("restart.log"));
    eventually(DEADLINE, "every charge after the restart", || async {
        (sandbox.applied("billing").await == 300).then_some(())
    })
    .await;
    // Results are published before offsets are stored: once every input is committed, every
    // result is on the topic.
    eventually(DEADLINE, "every input committed", || async {
        let committed = committed_offsets(&shared_settings(), &topics.group, &topics.input)
            .expect("committed offsets");
        let total: i64 = committed.iter().map(|(_, o)| o.unwrap_or(0)).sum();
        (total == 300).then_some(())
    })
    .await;
    restarted
        .stop(Duration::from_secs(30))
        .expect("stop the sink");
    let published = backbone_testkit::end_offsets_total(&shared_settings(), &topics.results)
        .expect("results end offsets");
    let all = results(
        &codec,
        &topics.results,
        usize::try_from(published).expect("count"),
    )
    .await;
    assert_eq!(charges_by_identity(&sandbox).await.len(), 300);
    assert_eq!(
        sandbox.answered("billing", 422).await,
        0,
        "no key reused with another body"
    );
    let settled: BTreeSet<(i32, i64)> = all
        .iter()
        .map(|r| (r.source_partition, r.source_offset))
        .collect();
    assert_eq!(settled.len(), 300, "every input record has a result");
}

/// A throttled charge waits out its `Retry-After` beside the sink, which goes on delivering the
/// charges read after it; its offset holds the partition's commit until it settles, so a
/// restart delivers it, once, and answers the charges after it from the ledger.
#[tokio::test]
async fn charges_after_a_throttled_one_go_out_while_it_waits_and_its_offset_holds_the_commit() {
    const COUNT: usize = 300;
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    sandbox
        .client
        .set_faults(
            System::Billing,
            &Faults {
                throttle_rate: 0.05,
                // Longer than the test: a throttled charge is still waiting when the sink stops.
                retry_after_seconds: 600,
                ..Faults::default()
            },
        )
        .await
        .expect("faults");
    let topics = SinkTopics::create("billing-retry-aside", 1).await;
    let codec = WireCodec::new(registry_url());
    let charges: Vec<BillingCharge> = (0..COUNT).map(|i| charge(i, "EUR")).collect();
    publish_charges(&codec, &topics.input, &charges).await;
    let mut settings = topics.settings();
    settings.retry.max_retry_after = Duration::from_secs(600);
    let batch_max = settings.batch_max;

    let sink = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        settings,
    );
    let waiting = eventually(
        DEADLINE,
        "every charge delivered or waiting for its retry",
        || async {
            // The sink creates the results topic: its metadata may not be settled yet.
            let published =
                backbone_testkit::end_offsets_total(&shared_settings(), &topics.results).ok()?;
            let waiting = sink.metric(names::RETRYING, None) as i64;
            (waiting > 0 && published + waiting == COUNT as i64).then_some(waiting)
        },
    )
    .await;
    let summary = sink.stop().await;
    let all = results(&codec, &topics.results, COUNT - waiting as usize).await;
    let settled: BTreeSet<i64> = all.iter().map(|r| r.source_offset).collect();
    let unsettled: Vec<i64> = (0..COUNT as i64)
        .filter(|offset| !settled.contains(offset))
        .collect();
    assert_eq!(unsettled.len() as i64, waiting, "{summary:?}");
    let first_waiting = unsettled[0];
    assert!(
        settled
            .iter()
            .any(|offset| *offset >= first_waiting + batch_max as i64),
        "charges of later batches went out while charge {first_waiting} waited: {unsettled:?}"
    );
    // A group with nothing committed starts from the beginning (`auto.offset.reset`
    // earliest): when the first charge is the one waiting, no commit is the commit at 0.
    let committed: Vec<(i32, i64)> =
        committed_offsets(&shared_settings(), &topics.group, &topics.input)
            .expect("committed offsets")
            .into_iter()
            .map(|(partition, offset)| (partition, offset.unwrap_or(0)))
            .collect();
    assert_eq!(
        committed,
        vec![(0, first_waiting)],
        "the commit stops at the first charge still waiting"
    );

    sandbox
        .client
        .clear_faults(System::Billing)
        .await
        .expect("clear faults");
    let again = RunningSink::start(
        billing_sink(&topics.input, &sandbox.destination()).await,
        topics.settings(),
    );
    eventually(DEADLINE, "every charge committed", || async {
        let committed = committed_offsets(&shared_settings(), &topics.group, &topics.input)
            .expect("committed offsets");
        (committed == vec![(0, Some(COUNT as i64))]).then_some(())
    })
    .await;
    let again = again.stop().await;
    assert_eq!(
        again.delivered, waiting as u64,
        "only the waiting ones: {again:?}"
    );
    assert_eq!(
        again.already_delivered,
        (COUNT as i64 - first_waiting - waiting) as u64,
        "the charges after the first waiting one, from the ledger: {again:?}"
    );
    assert_eq!(charges_by_identity(&sandbox).await.len(), COUNT);
    assert_eq!(
        sandbox.applied("billing").await,
        COUNT as u64,
        "no charge applied twice"
    );
}

fn snapshot(customer: usize, as_of: i64, amount: &str) -> AccountHealthSnapshot {
    let customer_id = format!("c-{customer}");
    AccountHealthSnapshot {
        metadata: metadata(
            "acme",
            &format!("{customer_id}-{as_of}"),
            "backbone.crm.account_health",
        ),
        snapshot_id: format!("ahs-{customer_id}-{as_of}"),
        customer_id,
        as_of,
        crm_account_id: None,
        health: HealthStatus::Healthy,
        active_subscriptions: 1,
        period_start: 20_600,
        period_end: 20_630,
        period_to_date_amount: amount.parse().expect("amount"),
        previous_period_amount: None,
        currency: "EUR".to_owned(),
        usage_change_percent: None,
        last_usage_at: Some(as_of),
    }
}

#[tokio::test]
async fn crm_upserts_survive_a_429_storm_and_keep_the_newest_snapshot() {
    let mut config = SandboxConfig::default();
    config.crm.rate_limit_per_second = 5;
    let sandbox = Sandbox::start(config).await;
    sandbox
        .client
        .set_faults(
            System::Crm,
            &Faults {
                throttle_rate: 0.6,
                retry_after_seconds: 1,
                ..Faults::default()
            },
        )
        .await
        .expect("faults");
    let topics = SinkTopics::create("crm", 3).await;
    let codec = WireCodec::new(registry_url());
    let mut snapshots = Vec::new();
    for round in 0..6i64 {
        for customer in 0..40 {
            snapshots.push(snapshot(
                customer,
                1_000 + round,
                &format!("{}.5", round * 10),
            ));
        }
    }
    // A late, older snapshot after the newest: it must not roll an account back.
    snapshots.push(snapshot(3, 1_001, "999"));
    let mut records = Vec::with_capacity(snapshots.len());
    for s in &snapshots {
        let value = support::encode(&codec, &topics.input, s).await;
        records.push(TestRecord::new(format!("acme:{}", s.customer_id), value));
    }
    produce(&shared_settings(), &topics.input, &records)
        .await
        .expect("produce snapshots");

    let sink = RunningSink::start(
        crm_sink(&topics.input, &sandbox.destination()).await,
        topics.settings(),
    );
    let all = results(&codec, &topics.results, snapshots.len()).await;
    let summary = sink.stop().await;

    assert!(sandbox.answered("crm", 429).await > 0, "the storm happened");
    assert!(summary.retries > 0, "{summary:?}");
    let accounts = sandbox.client.accounts().await.expect("accounts");
    assert_eq!(accounts.len(), 40);
    for account in &accounts {
        assert_eq!(
            account.as_of, 1_005,
            "{} holds the newest snapshot",
            account.external_id
        );
        assert_eq!(
            account
                .fields
                .get("period_to_date_amount")
                .and_then(|v| v.as_str()),
            Some("50.500000"),
            "{}",
            account.external_id
        );
    }
    let counts = outcomes(&all);
    assert_eq!(all.len(), snapshots.len(), "{counts:?}");
    assert_eq!(counts.get("Rejected"), None, "{counts:?}");
    let applied: u64 = accounts.iter().map(|a| a.version).sum();
    assert!(
        applied <= 240,
        "each snapshot applied at most once: {applied}"
    );
}

#[tokio::test]
async fn an_https_destination_takes_deliveries_when_its_ca_is_trusted_and_stops_the_start_when_not()
{
    let ca = TestCa::new("sandbox").expect("a CA");
    let sandbox = Sandbox::start_https(SandboxConfig::default(), &ca).await;
    assert!(sandbox.url.starts_with("https://"), "{}", sandbox.url);
    let refusal = |settings: DestinationSettings| async move {
        JsonApi::connect(&settings)
            .await
            .expect_err("a destination that cannot work")
            .to_string()
    };

    let untrusted = refusal(DestinationSettings {
        ca_file: None,
        ..sandbox.destination()
    })
    .await;
    for part in ["destination.url", "destination.ca_file", "UnknownIssuer"] {
        assert!(
            untrusted.contains(part),
            "`{part}` missing from: {untrusted}"
        );
    }
    let missing = refusal(DestinationSettings {
        ca_file: Some("/nonexistent/backbone-ca.pem".into()),
        ..sandbox.destination()
    })
    .await;
    for part in ["destination.ca_file", "/nonexistent/backbone-ca.pem"] {
        assert!(missing.contains(part), "`{part}` missing from: {missing}");
    }
    let not_pem = std::env::temp_dir().join(format!("{}.pem", unique_topic("not-pem")));
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    let malformed = refusal(DestinationSettings {
        ca_file: Some(not_pem.clone()),
        ..sandbox.destination()
    })
    .await;
    let _ = std::fs::remove_file(&not_pem);
    for part in ["destination.ca_file", "holds no PEM certificate"] {
        assert!(
            malformed.contains(part),
            "`{part}` missing from: {malformed}"
        );
    }

    delivers_every_charge("billing-https", &sandbox.destination(), 10).await;
    assert_eq!(charges_by_identity(&sandbox).await.len(), 10);
}

/// A billing sink to `destination` delivers `count` charges, each with outcome `Delivered`.
async fn delivers_every_charge(name: &str, destination: &DestinationSettings, count: usize) {
    let topics = SinkTopics::create(name, 1).await;
    let codec = WireCodec::new(registry_url());
    let charges: Vec<BillingCharge> = (0..count).map(|i| charge(i, "EUR")).collect();
    publish_charges(&codec, &topics.input, &charges).await;
    let sink = RunningSink::start(
        billing_sink(&topics.input, destination).await,
        topics.settings(),
    );
    let delivered = results(&codec, &topics.results, charges.len()).await;
    sink.stop().await;
    assert_eq!(
        outcomes(&delivered).get("Delivered"),
        Some(&charges.len()),
        "{:?}",
        outcomes(&delivered)
    );
}

#[tokio::test]
async fn a_destination_that_wants_a_client_certificate_takes_ours_and_refuses_none_at_start() {
    let ca = TestCa::new("mutual").expect("a CA");
    let sandbox = Sandbox::start_mutual_tls(SandboxConfig::default(), &ca).await;
    let presenting = |cert: Option<&IssuedCert>| DestinationSettings {
        client_cert_file: cert.map(|c| c.cert.clone()),
        client_key_file: cert.map(|c| c.key.clone()),
        ..sandbox.destination()
    };
    let refused_with = |cert: Option<&IssuedCert>, parts: &[&str]| {
        let destination = presenting(cert);
        let parts: Vec<String> = parts.iter().map(|p| (*p).to_owned()).collect();
        async move {
            let refusal = JsonApi::connect(&destination)
                .await
                .expect_err("a client certificate that cannot work")
                .to_string();
            for part in parts {
                assert!(refusal.contains(&part), "`{part}` missing from: {refusal}");
            }
        }
    };

    let hint = "destination.client_cert_file";
    refused_with(None, &["destination.url", "CertificateRequired", hint]).await;
    let stranger = TestCa::new("stranger").expect("another CA");
    let foreign = stranger.issue("intruder").expect("a foreign certificate");
    refused_with(Some(&foreign), &["destination.url", hint]).await;
    let expired = ca.issue_expired("stale").expect("an expired certificate");
    let file = expired.cert.display().to_string();
    refused_with(Some(&expired), &[hint, &file, "expired on"]).await;

    let client = ca.issue("billing-sink").expect("a client certificate");
    let mutual = presenting(Some(&client));
    delivers_every_charge("billing-mtls", &mutual, 5).await;
}
