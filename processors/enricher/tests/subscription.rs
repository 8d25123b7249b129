//! The usage contract's promise for an event that names no subscription: the enricher bills
//! it under the customer's subscription that has a charge for the event's meter. One such
//! subscription: enriched under it, whether it is the customer's only one or one of two. Two:
//! dead-lettered as `ambiguous_subscription`. None: parked like any event whose subscription
//! is missing, and dead-lettered as `unknown_subscription` once the park timeout passed.

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_enricher::AMBIGUOUS_SUBSCRIPTION;
use backbone_schemas::types::{ChargeModel, MeterAggregation, RateCard, RateCharge, UsageEvent};
use backbone_testkit::{await_committed, consume_while, end_offsets_total, unique_group};

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
        recurring_fees: Vec::new(),
    }
}

#[tokio::test]
async fn an_event_naming_no_subscription_is_billed_under_the_one_pricing_its_meter() {
    // Long enough for the accounts to be read, short enough to expire c-4's event.
    let fixture = Fixture::new(Duration::from_secs(3)).await;
    let s = &fixture.settings;
    // `pro` prices fonts, `basic` does not.
    for (plan, meters) in [
        ("pro", &["fonts", "storage"][..]),
        ("basic", &["storage"][..]),
    ] {
        fixture
            .publish(
                &s.rate_cards_topic,
                &format!("acme:{plan}:1"),
                &rate_card(plan, meters),
            )
            .await;
    }
    // c-1: one subscription, on pro. c-2: one on pro, one on basic. c-3: two on pro.
    // c-4: one on basic only.
    for (id, customer, plan) in [
        ("s-1", "c-1", "pro"),
        ("s-2a", "c-2", "basic"),
        ("s-2b", "c-2", "pro"),
        ("s-3a", "c-3", "pro"),
        ("s-3b", "c-3", "pro"),
        ("s-4", "c-4", "basic"),
    ] {
        let mut value = subscription(id, customer);
        value.plan_id = plan.into();
        fixture
            .publish(&s.subscriptions_topic, &format!("acme:{id}"), &value)
            .await;
    }
    for customer in ["c-1", "c-2", "c-3", "c-4"] {
        fixture
            .publish(
                &s.accounts_topic,
                &format!("acme:{customer}"),
                &account(customer),
            )
            .await;
    }
    for (event_id, customer) in [
        ("e-1", "c-1"),
        ("e-2", "c-2"),
        ("e-3", "c-3"),
        ("e-4", "c-4"),
    ] {
        fixture
            .publish_usage(&UsageEvent {
                subscription_id: None,
                ..usage(event_id, customer, "unused")
            })
            .await;
    }

    let group = unique_group("enricher-unnamed");
    let enricher = fixture.start_as(&group);
    // e-3 is ambiguous at once; e-4 waits for a subscription pricing fonts until later records
    // move the partition's time past the park timeout.
    let dead = fixture.expire_parked(2).await;
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
    await_committed(&fixture.kafka, &group, &s.usage_topic, 4, DEADLINE).await;
    let end = end_offsets_total(&fixture.kafka, &s.output_topic).expect("end offsets");
    let end = usize::try_from(end).expect("an offset");
    let enriched = consume_while(
        &fixture.kafka,
        &s.output_topic,
        DEADLINE,
        format!("the output topic to its end, {end} records"),
        move |records| records.len() >= end,
    )
    .await
    .expect("the output topic");
    let billed_under: BTreeMap<String, String> = fixture
        .enriched(&enriched)
        .await
        .into_iter()
        .flat_map(|(subscription, events)| {
            events
                .into_iter()
                .map(move |event| (event, subscription.clone()))
        })
        .collect();
    assert_eq!(
        billed_under,
        BTreeMap::from([
            ("e-1".to_owned(), "s-1".to_owned()),
            ("e-2".to_owned(), "s-2b".to_owned()),
        ]),
        "c-1's and c-2's events, under the subscription pricing fonts"
    );
    assert_eq!(enriched.len(), 2, "nothing else enriched");
    enricher.stop(DEADLINE).await;
}

/// An event naming no subscription, read by an enricher that has decoded no subscription since
/// it started, with nothing after it: the subscriptions' schema is not resolved yet when the
/// event is looked at. It is resolved and the event billed, not parked until some later record
/// of the customer tries it again (found by `make up`: the first event sent by hand waited for
/// ever).
#[tokio::test]
async fn an_event_naming_no_subscription_is_billed_without_waiting_for_another_record() {
    let fixture = Fixture::new(Duration::from_secs(600)).await;
    let s = &fixture.settings;
    fixture
        .publish(
            &s.rate_cards_topic,
            "acme:pro:1",
            &rate_card("pro", &["fonts"]),
        )
        .await;
    let mut value = subscription("s-1", "c-1");
    value.plan_id = "pro".into();
    fixture
        .publish(&s.subscriptions_topic, "acme:s-1", &value)
        .await;
    fixture
        .publish(&s.accounts_topic, "acme:c-1", &account("c-1"))
        .await;
    let group = unique_group("enricher-cold");
    let enricher = fixture.start_cold(&group);
    // The account is in partition state before the event comes.
    await_committed(&fixture.kafka, &group, &s.accounts_topic, 1, DEADLINE).await;
    fixture
        .publish_usage(&UsageEvent {
            subscription_id: None,
            ..usage("e-1", "c-1", "unused")
        })
        .await;
    let enriched = consume_while(
        &fixture.kafka,
        &s.output_topic,
        DEADLINE,
        "e-1 enriched".to_owned(),
        |records| !records.is_empty(),
    )
    .await
    .expect("e-1 enriched, not parked");
    let billed_under = fixture.enriched(&enriched).await;
    assert_eq!(
        billed_under,
        BTreeMap::from([("s-1".to_owned(), vec!["e-1".to_owned()])])
    );
    enricher.stop(DEADLINE).await;
}
