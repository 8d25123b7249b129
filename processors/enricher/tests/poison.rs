//! Bad inputs of the enricher on the real broker and registry, beside `park.rs`: an account
//! without its key and one that is not wire format go to the accounts topic's DLQ; usage naming
//! another customer's subscription, usage whose subscription or rate card does not decode, and a
//! usage tombstone go to the usage topic's DLQ; a valid event among them is enriched. See
//! docs/bad-inputs.md.

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_core::RuntimeSettings;
use backbone_enricher::{Enricher, EnricherSettings};
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::types::{Contract, EnrichedUsage, SubscriptionStatus};
use backbone_schemas::WireCodec;
use backbone_testkit::{
    consume_until, create_topic, dead_letter_reasons, produce, produce_tombstone, shared_settings,
    unique_group, unique_topic, RunningProcessor, TestRecord,
};

mod fixtures;

use fixtures::*;

#[tokio::test]
async fn bad_master_data_and_usage_are_dead_lettered_under_their_reasons() {
    let kafka = shared_settings();
    let registry = LocalRegistry::start(&RegistryConfig::ephemeral(
        kafka.clone(),
        &unique_topic("schemas"),
    ))
    .await
    .expect("registry");
    let codec = WireCodec::new(registry.url());
    let settings = EnricherSettings {
        usage_topic: unique_topic("usage.validated"),
        accounts_topic: unique_topic("master.customer-accounts"),
        subscriptions_topic: unique_topic("master.subscriptions"),
        rate_cards_topic: unique_topic("master.rate-cards"),
        legal_entities_topic: unique_topic("master.legal-entities"),
        output_topic: unique_topic("usage.enriched"),
        park_timeout: Duration::from_secs(3600),
        ..EnricherSettings::default()
    };
    for topic in [
        &settings.usage_topic,
        &settings.accounts_topic,
        &settings.subscriptions_topic,
        &settings.rate_cards_topic,
        &settings.legal_entities_topic,
    ] {
        create_topic(&kafka, topic, 1).await.expect("topic");
    }
    let encode = |topic: &str| format!("{topic}-value");
    let mut subscriptions = Vec::new();
    for (id, customer) in [("sub-1", "c-1"), ("sub-2", "c-2")] {
        let bytes = codec
            .encode_contract(
                &encode(&settings.subscriptions_topic),
                &subscription(id, customer),
            )
            .await
            .expect("encode");
        subscriptions.push(TestRecord::new(format!("acme:{id}"), bytes));
    }
    // Master data that does not decode: a subscription, and the rate card of sub-3's plan.
    subscriptions.push(TestRecord::new("acme:sub-bad", &b"not avro"[..]));
    let mut on_broken_plan = subscription("sub-3", "c-1");
    on_broken_plan.plan_id = "broken".into();
    let bytes = codec
        .encode_contract(&encode(&settings.subscriptions_topic), &on_broken_plan)
        .await
        .expect("encode");
    subscriptions.push(TestRecord::new("acme:sub-3", bytes));
    // A paused subscription, and one that begins tomorrow.
    let mut paused = subscription("sub-paused", "c-1");
    paused.status = SubscriptionStatus::Paused;
    let mut not_yet = subscription("sub-later", "c-1");
    not_yet.started_at = now_micros() + 86_400_000_000;
    for (id, value) in [("sub-paused", paused), ("sub-later", not_yet)] {
        let bytes = codec
            .encode_contract(&encode(&settings.subscriptions_topic), &value)
            .await
            .expect("encode");
        subscriptions.push(TestRecord::new(format!("acme:{id}"), bytes));
    }
    produce(&kafka, &settings.subscriptions_topic, &subscriptions)
        .await
        .expect("subscriptions");
    produce(
        &kafka,
        &settings.rate_cards_topic,
        &[TestRecord::new(
            "acme:broken:1",
            &b"\x00\x00\x00\x00\x01garbage"[..],
        )],
    )
    .await
    .expect("rate card");
    // Accounts: c-1's, then one without a key (offset 1), then one that is not Avro (2).
    let account_bytes = codec
        .encode_contract(&encode(&settings.accounts_topic), &account("c-1"))
        .await
        .expect("encode");
    let accounts = [
        TestRecord::new("acme:c-1", account_bytes.clone()),
        TestRecord {
            key: None,
            ..TestRecord::new("", account_bytes)
        },
        TestRecord::new("acme:c-3", &b"{\"customer_id\":\"c-3\"}"[..]),
    ];
    produce(&kafka, &settings.accounts_topic, &accounts)
        .await
        .expect("accounts");
    let accounts_expected = BTreeMap::from([
        (1, "missing_key".to_owned()),
        (2, "wrong_magic_byte".to_owned()),
    ]);

    // Usage: a tombstone (0), c-1's event naming c-2's subscription (1), a valid event (2),
    // then events whose subscription (3) or rate card (4) does not decode. An event naming no
    // subscription is billed under the one pricing its meter (tests/subscription.rs).
    produce_tombstone(
        &kafka,
        &settings.usage_topic,
        Some(b"acme:c-1".as_slice()),
        Some(0),
    )
    .await
    .expect("tombstone");
    let mut usage_records = Vec::new();
    for event in [
        usage("other-customers", "c-1", "sub-2"),
        usage("valid", "c-1", "sub-1"),
        usage("bad-subscription", "c-1", "sub-bad"),
        usage("bad-card", "c-1", "sub-3"),
        usage("paused", "c-1", "sub-paused"),
        usage("too-early", "c-1", "sub-later"),
    ] {
        let bytes = codec
            .encode_contract(&encode(&settings.usage_topic), &event)
            .await
            .expect("encode");
        usage_records.push(TestRecord::new("acme:c-1", bytes));
    }
    produce(&kafka, &settings.usage_topic, &usage_records)
        .await
        .expect("usage");
    let usage_expected = BTreeMap::from([
        (0, "missing_value".to_owned()),
        (1, "subscription_mismatch".to_owned()),
        (3, "invalid_subscription".to_owned()),
        (4, "invalid_rate_card".to_owned()),
        (5, "subscription_inactive".to_owned()),
        (6, "before_subscription_start".to_owned()),
    ]);

    let group = unique_group("enricher-poison");
    let mut runtime = RuntimeSettings {
        group_id: Some(group.clone()),
        topic_partitions: 1,
        ..RuntimeSettings::default()
    };
    runtime.state.dir = std::env::temp_dir().join("backbone-state").join(&group);
    let enricher = RunningProcessor::start(
        Enricher::new(settings.clone(), codec.clone()),
        &kafka,
        runtime,
    );
    let usage_dead = consume_until(
        &kafka,
        &format!("{}.dlq", settings.usage_topic),
        usage_expected.len(),
        DEADLINE,
    )
    .await
    .expect("usage dead letters");
    let accounts_dead = consume_until(
        &kafka,
        &format!("{}.dlq", settings.accounts_topic),
        accounts_expected.len(),
        DEADLINE,
    )
    .await
    .expect("account dead letters");
    let enriched = consume_until(&kafka, &settings.output_topic, 1, DEADLINE)
        .await
        .expect("the valid event enriched");
    enricher.stop(DEADLINE).await;

    assert_eq!(dead_letter_reasons(&usage_dead), usage_expected);
    assert_eq!(dead_letter_reasons(&accounts_dead), accounts_expected);
    assert_eq!(enriched.len(), 1);
    let event: EnrichedUsage = codec
        .decode_as(
            enriched[0].value.as_deref().expect("value"),
            EnrichedUsage::schema(),
        )
        .await
        .expect("decode");
    assert_eq!(event.usage.metadata.event_id, "valid");
}
