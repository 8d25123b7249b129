//! Bad rated usage on the ERP route, on the real broker and registry: a line whose legal entity
//! no GL mapping covers, a line of a tenant whose GL mapping master data does not decode, a
//! tombstone and another contract's frame are dead-lettered under their reasons; a line with
//! its mapping becomes a balanced posting. See docs/bad-inputs.md.

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_core::RuntimeSettings;
use backbone_fanout::{Fanout, FanoutSettings, Routes};
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::types::{
    Amount, Contract, EventMetadata, GlMapping, LedgerPosting, Quantity, RatedUsage, RatingKind,
    TraceContext,
};
use backbone_schemas::WireCodec;
use backbone_testkit::{
    consume_until, create_topic, dead_letter_reasons, produce, produce_tombstone, shared_settings,
    unique_group, unique_topic, RunningProcessor, TestRecord,
};

const DEADLINE: Duration = Duration::from_secs(60);
/// 2026-11-27 00:00 UTC in microseconds.
const OCCURRED_AT: i64 = 1_795_737_600_000_000;

fn metadata(tenant: &str, id: &str, occurred_at: i64) -> EventMetadata {
    EventMetadata {
        tenant_id: tenant.into(),
        event_id: id.into(),
        source: "usage-rater".into(),
        r#type: "backbone.usage.rated".into(),
        occurred_at,
        produced_at: occurred_at,
        trace: TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: None,
        },
        schema_version: None,
    }
}

fn line(tenant: &str, id: &str, legal_entity: &str) -> RatedUsage {
    RatedUsage {
        metadata: metadata(tenant, id, OCCURRED_AT),
        rating_id: id.into(),
        revision: 1,
        kind: RatingKind::Normal,
        customer_id: "cust-1".into(),
        subscription_id: "sub-1".into(),
        plan_id: "pro".into(),
        rate_card_version: 1,
        charge_id: "api-calls".into(),
        meter_id: "api_calls".into(),
        group_key: String::new(),
        legal_entity_id: legal_entity.into(),
        period_start: 20_420,
        period_end: 20_450,
        quantity_before: Quantity::ZERO,
        quantity_after: "10".parse().expect("quantity"),
        amount_before: Amount::ZERO,
        amount_after: "12.5".parse().expect("amount"),
        delta_amount: "12.5".parse().expect("amount"),
        currency: "EUR".into(),
        source_event_count: 1,
        source_event_ids: Vec::new(),
        adjusted_period_start: None,
        adjusted_period_end: None,
    }
}

fn mapping(legal_entity: &str) -> GlMapping {
    GlMapping {
        metadata: metadata("acme", "gl-1", 0),
        mapping_id: "gl-1".into(),
        legal_entity_id: legal_entity.into(),
        product_id: None,
        charge_id: None,
        revenue_account: "4000".into(),
        receivable_account: "1200".into(),
        deferred_revenue_account: "2500".into(),
        tax_account: "3800".into(),
        effective_from: 0,
        effective_to: None,
    }
}

#[tokio::test]
async fn lines_without_a_usable_gl_mapping_and_bad_records_are_dead_lettered() {
    let kafka = shared_settings();
    let registry = LocalRegistry::start(&RegistryConfig::ephemeral(
        kafka.clone(),
        &unique_topic("schemas"),
    ))
    .await
    .expect("registry");
    let codec = WireCodec::new(registry.url());
    let settings = FanoutSettings {
        rated_topic: unique_topic("usage.rated"),
        aggregates_topic: unique_topic("usage.window-aggregates"),
        gl_mappings_topic: unique_topic("master.gl-mappings"),
        by_customer_topic: unique_topic("usage.rated-by-customer"),
        routes: Routes {
            billing: String::new(),
            analytics: String::new(),
            crm: String::new(),
            erp: unique_topic("erp.postings"),
        },
        dedup: true,
    };
    for topic in [
        &settings.rated_topic,
        &settings.aggregates_topic,
        &settings.gl_mappings_topic,
    ] {
        create_topic(&kafka, topic, 1).await.expect("topic");
    }
    // acme maps le-eu; globex's only mapping is not Avro.
    let acme_mapping = codec
        .encode_contract(
            &format!("{}-value", settings.gl_mappings_topic),
            &mapping("le-eu"),
        )
        .await
        .expect("encode mapping");
    produce(
        &kafka,
        &settings.gl_mappings_topic,
        &[
            TestRecord::new("acme:gl-1", acme_mapping.clone()),
            TestRecord::new("globex:gl-1", &b"{\"legal_entity_id\":\"le-eu\"}"[..]),
        ],
    )
    .await
    .expect("GL mappings");

    let subject = format!("{}-value", settings.rated_topic);
    produce_tombstone(
        &kafka,
        &settings.rated_topic,
        Some(b"acme:sub-1".as_slice()),
        Some(0),
    )
    .await
    .expect("tombstone");
    let mut records = vec![TestRecord::new("acme:sub-1", acme_mapping)];
    for event in [
        line("acme", "unmapped-entity", "le-us"),
        line("globex", "bad-mapping", "le-eu"),
        line("acme", "valid", "le-eu"),
    ] {
        let bytes = codec
            .encode_contract(&subject, &event)
            .await
            .expect("encode line");
        records.push(TestRecord::new("acme:sub-1", bytes));
    }
    produce(&kafka, &settings.rated_topic, &records)
        .await
        .expect("rated lines");
    let expected = BTreeMap::from([
        (0, "missing_value".to_owned()),
        (1, "contract_violation".to_owned()),
        (2, "unknown_gl_mapping".to_owned()),
        (3, "invalid_gl_mapping".to_owned()),
    ]);

    let group = unique_group("fanout-poison");
    let mut runtime = RuntimeSettings {
        group_id: Some(group.clone()),
        topic_partitions: 1,
        ..RuntimeSettings::default()
    };
    runtime.state.dir = std::env::temp_dir().join("backbone-state").join(&group);
    let postings_topic = settings.routes.erp.clone();
    let dlq = format!("{}.dlq", settings.rated_topic);
    let fanout = RunningProcessor::start(Fanout::new(settings, codec.clone()), &kafka, runtime);
    let dead = consume_until(&kafka, &dlq, expected.len(), DEADLINE)
        .await
        .expect("dead letters");
    let postings = consume_until(&kafka, &postings_topic, 1, DEADLINE)
        .await
        .expect("the valid line posted");
    fanout.stop(DEADLINE).await;

    let reasons = dead_letter_reasons(&dead);
    assert_eq!(reasons, expected);
    assert_eq!(postings.len(), 1);
    let posting: LedgerPosting = codec
        .decode_as(
            postings[0].value.as_deref().expect("value"),
            LedgerPosting::schema(),
        )
        .await
        .expect("decode posting");
    assert_eq!(posting.rating_id, "valid");
}
