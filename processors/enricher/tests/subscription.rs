//! The usage contract's promise for an event that names no subscription: the enricher bills
//! it under the customer's subscription that has a charge for the event's meter. One such
//! subscription: enriched under it, whether it is the customer's only one or one of two. Two:
//! dead-lettered as `ambiguous_subscription`. None: parked like any event whose subscription
//! is missing, and dead-lettered as `unknown_subscription` once the park timeout passed.

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_core::RuntimeSettings;
use backbone_enricher::{Enricher, EnricherSettings, AMBIGUOUS_SUBSCRIPTION};
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::types::{
    ChargeModel, Contract, EnrichedUsage, MeterAggregation, RateCard, RateCharge, UsageEvent,
};
use backbone_schemas::WireCodec;
use backbone_testkit::{
    await_committed, consume_while, create_topic, end_offsets_total, produce, shared_settings,
    unique_group, unique_topic, RunningProcessor, TestRecord,
};

mod fixtures;

use fixtures::*;

/// A rate card of `plan` pricing `meters`, one unit-priced charge each.
fn rate_card(plan: &str, meters: &[&str]) -> RateCard {
    RateCard {
        metadata: metadata(&format!("card-{plan}")),
        plan_id: plan.into(),
        version: 1,
        name: format!("Plan {plan}"),
        currency: "EUR".into(),
        effective_from: 0,
        effective_to: None,
        charges: meters
            .iter()
            .map(|meter| RateCharge {
                charge_id: format!("{plan}-{meter}"),
                name: (*meter).into(),
                meter_id: (*meter).into(),
                aggregation: MeterAggregation::Sum,
                charge_model: ChargeModel::Unit,
                flat_amount: None,
                unit_price: Some("0.01".parse().expect("price")),
                package_size: None,
                percentage: None,
                free_units: None,
                minimum_spend: None,
                maximum_spend: None,
                tiers: Vec::new(),
                group_by: Vec::new(),
            })
            .collect(),
    }
}

#[tokio::test]
async fn an_event_naming_no_subscription_is_billed_under_the_one_pricing_its_meter() {
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
        output_topic: unique_topic("usage.enriched"),
        // Long enough for the accounts to be read, short enough to expire c-4's event.
        park_timeout: Duration::from_secs(3),
        ..EnricherSettings::default()
    };
    for topic in [&settings.usage_topic, &settings.accounts_topic] {
        create_topic(&kafka, topic, 1).await.expect("topic");
    }
    for topic in [&settings.subscriptions_topic, &settings.rate_cards_topic] {
        create_topic(&kafka, topic, 1).await.expect("topic");
    }
    let publish = |topic: String, key: String, bytes: Vec<u8>| {
        let kafka = kafka.clone();
        async move {
            produce(&kafka, &topic, &[TestRecord::new(key.as_str(), bytes)])
                .await
                .expect("produce");
        }
    };
    // `pro` prices fonts, `basic` does not.
    for (plan, meters) in [
        ("pro", &["fonts", "storage"][..]),
        ("basic", &["storage"][..]),
    ] {
        let subject = format!("{}-value", settings.rate_cards_topic);
        let bytes = codec
            .encode_contract(&subject, &rate_card(plan, meters))
            .await
            .expect("encode");
        publish(
            settings.rate_cards_topic.clone(),
            format!("acme:{plan}"),
            bytes,
        )
        .await;
    }
    // c-1: one subscription, on pro. c-2: one on pro, one on basic. c-3: two on pro.
    // c-4: one on basic only.
    let subscriptions = [
        ("s-1", "c-1", "pro"),
        ("s-2a", "c-2", "basic"),
        ("s-2b", "c-2", "pro"),
        ("s-3a", "c-3", "pro"),
        ("s-3b", "c-3", "pro"),
        ("s-4", "c-4", "basic"),
    ];
    for (id, customer, plan) in subscriptions {
        let mut value = subscription(id, customer);
        value.plan_id = plan.into();
        let subject = format!("{}-value", settings.subscriptions_topic);
        let bytes = codec
            .encode_contract(&subject, &value)
            .await
            .expect("encode");
        publish(
            settings.subscriptions_topic.clone(),
            format!("acme:{id}"),
            bytes,
        )
        .await;
    }
    for customer in ["c-1", "c-2", "c-3", "c-4"] {
        let subject = format!("{}-value", settings.accounts_topic);
        let bytes = codec
            .encode_contract(&subject, &account(customer))
            .await
            .expect("encode");
        publish(
            settings.accounts_topic.clone(),
            format!("acme:{customer}"),
            bytes,
        )
        .await;
    }
    let unnamed = |event_id: &str, customer: &str| UsageEvent {
        subscription_id: None,
        ..usage(event_id, customer, "unused")
    };
    for (event_id, customer) in [
        ("e-1", "c-1"),
        ("e-2", "c-2"),
        ("e-3", "c-3"),
        ("e-4", "c-4"),
    ] {
        let subject = format!("{}-value", settings.usage_topic);
        let bytes = codec
            .encode_contract(&subject, &unnamed(event_id, customer))
            .await
            .expect("encode");
        publish(
            settings.usage_topic.clone(),
            format!("acme:{customer}"),
            bytes,
        )
        .await;
    }

    let group = unique_group("enricher-unnamed");
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

    // e-4 waits for a subscription pricing fonts; later records move the partition's time past
    // the park timeout, until both dead letters are there.
    let dlq = format!("{}.dlq", settings.usage_topic);
    let tick = codec
        .encode_contract(
            &format!("{}-value", settings.accounts_topic),
            &account("tick"),
        )
        .await
        .expect("encode");
    let mut rounds = 0;
    let dead = loop {
        publish(
            settings.accounts_topic.clone(),
            "acme:tick".into(),
            tick.clone(),
        )
        .await;
        rounds += 1;
        let found = consume_while(
            &kafka,
            &dlq,
            Duration::from_secs(2),
            "two dead letters".to_owned(),
            |records| records.len() >= 2,
        )
        .await;
        if let Ok(found) = found {
            break found;
        }
        assert!(rounds < 30, "the unpriced event never expired");
    };
    let reasons: BTreeMap<String, String> = dead
        .iter()
        .map(|r| {
            let reason = r.header("backbone.dlq.reason").unwrap_or_default();
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            (key, reason)
        })
        .collect();
    assert_eq!(
        reasons,
        BTreeMap::from([
            ("acme:c-3".to_owned(), AMBIGUOUS_SUBSCRIPTION.to_owned()),
            ("acme:c-4".to_owned(), "unknown_subscription".to_owned()),
        ])
    );

    // Every usage record processed, then the output read to its end, whatever it holds.
    await_committed(&kafka, &group, &settings.usage_topic, 4, DEADLINE).await;
    let end = end_offsets_total(&kafka, &settings.output_topic).expect("end offsets");
    let end = usize::try_from(end).expect("an offset");
    let enriched = consume_while(
        &kafka,
        &settings.output_topic,
        DEADLINE,
        format!("the output topic to its end, {end} records"),
        move |records| records.len() >= end,
    )
    .await
    .expect("the output topic");
    let mut billed_under = BTreeMap::new();
    for record in &enriched {
        let event: EnrichedUsage = codec
            .decode_as(
                record.value.as_deref().expect("value"),
                EnrichedUsage::schema(),
            )
            .await
            .expect("decode");
        billed_under.insert(
            event.usage.customer_id.clone(),
            event.subscription_id.clone(),
        );
    }
    assert_eq!(
        billed_under,
        BTreeMap::from([
            ("c-1".to_owned(), "s-1".to_owned()),
            ("c-2".to_owned(), "s-2b".to_owned()),
        ]),
        "one enriched event each for c-1 and c-2, under the subscription pricing fonts"
    );
    assert_eq!(enriched.len(), 2, "nothing else enriched");
    enricher.stop(DEADLINE).await;
}
