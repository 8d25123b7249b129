//! The billing period of an event is the one holding its local day in the time zone of the
//! subscription's legal entity: usage on either side of midnight in Berlin lands in the period
//! of its Berlin day, whatever the UTC date says. An entity the table does not hold is UTC; one
//! whose zone is not an IANA zone dead-letters its usage as `invalid_legal_entity`.

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_calendar::{format_date, parse_rfc3339_ms};
use backbone_schemas::types::{Contract, EnrichedUsage, LegalEntity};
use backbone_testkit::{
    await_committed, consume_while, dead_letter_reasons, end_offsets_total, unique_group,
};

mod fixtures;

use fixtures::*;

fn legal_entity(id: &str, time_zone: &str) -> LegalEntity {
    LegalEntity {
        metadata: metadata(&format!("entity-{id}")),
        legal_entity_id: id.into(),
        name: format!("Acme {id}"),
        country_code: "DE".into(),
        functional_currency: "EUR".into(),
        time_zone: time_zone.into(),
        fiscal_year_start_month: 1,
        tax_id: None,
        registered_address: None,
    }
}

fn micros(text: &str) -> i64 {
    parse_rfc3339_ms(text).expect("instant") * 1_000
}

#[tokio::test]
async fn usage_is_billed_in_the_period_of_its_local_day_in_the_entitys_time_zone() {
    let fixture = Fixture::new(Duration::from_secs(3600)).await;
    let s = &fixture.settings;
    for entity in [
        legal_entity("acme-de", "Europe/Berlin"),
        legal_entity("acme-bad", "Europe/Atlantis"),
    ] {
        fixture
            .publish(
                &s.legal_entities_topic,
                &format!("acme:{}", entity.legal_entity_id),
                &entity,
            )
            .await;
    }
    // One customer per entity: `acme-xx` has no record.
    for (id, customer, entity) in [
        ("s-de", "c-de", "acme-de"),
        ("s-xx", "c-xx", "acme-xx"),
        ("s-bad", "c-bad", "acme-bad"),
    ] {
        let mut value = subscription(id, customer);
        value.legal_entity_id = entity.into();
        fixture
            .publish(&s.subscriptions_topic, &format!("acme:{id}"), &value)
            .await;
        fixture
            .publish(
                &s.accounts_topic,
                &format!("acme:{customer}"),
                &account(customer),
            )
            .await;
    }
    // Berlin is UTC+1 on 31 October 2026 (summer time ended on the 25th).
    let events = [
        ("de-2330-local", "c-de", "s-de", "2026-10-31T22:30:00Z"),
        ("de-0030-local", "c-de", "s-de", "2026-10-31T23:30:00Z"),
        ("xx-2330-utc", "c-xx", "s-xx", "2026-10-31T23:30:00Z"),
        ("bad", "c-bad", "s-bad", "2026-10-31T23:30:00Z"),
    ];
    for (event_id, customer, subscription, at) in events {
        let mut event = usage(event_id, customer, subscription);
        event.metadata.occurred_at = micros(at);
        fixture.publish_usage(&event).await;
    }

    let group = unique_group("enricher-zones");
    let _enricher = fixture.start_as(&group);
    await_committed(
        &fixture.kafka,
        &group,
        &s.usage_topic,
        i64::try_from(events.len()).expect("count"),
        DEADLINE,
    )
    .await;
    let end = usize::try_from(end_offsets_total(&fixture.kafka, &s.output_topic).expect("end"))
        .expect("an offset");
    let records = consume_while(
        &fixture.kafka,
        &s.output_topic,
        DEADLINE,
        format!("the output topic to its end, {end} records"),
        move |records| records.len() >= end,
    )
    .await
    .expect("the output topic");
    let mut periods = BTreeMap::new();
    for record in &records {
        let enriched: EnrichedUsage = fixture
            .codec
            .decode_as(
                record.value.as_deref().expect("value"),
                EnrichedUsage::schema(),
            )
            .await
            .expect("decode");
        periods.insert(
            enriched.usage.metadata.event_id.clone(),
            (
                format_date(enriched.billing_period_start),
                format_date(enriched.billing_period_end),
            ),
        );
    }
    let period = |start: &str, end: &str| (start.to_owned(), end.to_owned());
    assert_eq!(
        periods,
        BTreeMap::from([
            (
                "de-2330-local".to_owned(),
                period("2026-10-01", "2026-11-01")
            ),
            (
                "de-0030-local".to_owned(),
                period("2026-11-01", "2026-12-01")
            ),
            ("xx-2330-utc".to_owned(), period("2026-10-01", "2026-11-01")),
        ])
    );
    let dlq = format!("{}.dlq", s.usage_topic);
    let end =
        usize::try_from(end_offsets_total(&fixture.kafka, &dlq).expect("end")).expect("an offset");
    let letters = consume_while(
        &fixture.kafka,
        &dlq,
        DEADLINE,
        format!("the DLQ to its end, {end} records"),
        move |records| records.len() >= end,
    )
    .await
    .expect("the DLQ");
    let reasons: Vec<String> = dead_letter_reasons(&letters).into_values().collect();
    assert_eq!(reasons, ["invalid_legal_entity"]);
}
