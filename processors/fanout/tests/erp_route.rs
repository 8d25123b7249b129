//! The ERP route on the real broker and registry.
//!
//! - Bad rated usage: a line whose legal entity no GL mapping covers, a line of a tenant whose
//!   GL mapping master data does not decode, a tombstone and another contract's frame are
//!   dead-lettered under their reasons; a line with its mapping becomes a balanced posting. See
//!   docs/bad-inputs.md.
//! - Posting dates: a posting is dated by the usage's local day in its legal entity's time zone,
//!   and its accounting period is that day's month, whatever the UTC date says.

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_calendar::format_date;

use backbone_core::RuntimeSettings;
use backbone_fanout::{Fanout, FanoutSettings, Routes};
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::types::{
    Amount, Contract, EventMetadata, GlMapping, LedgerPosting, LegalEntity, Quantity, RatedUsage,
    RatingKind, TraceContext,
};
use backbone_schemas::WireCodec;
use backbone_testkit::{
    consume_until, create_topic, dead_letter_reasons, end_offsets_total, produce,
    produce_tombstone, shared_settings, unique_group, unique_topic, ConsumedRecord,
    RunningProcessor, TestRecord,
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
    line_at(tenant, id, legal_entity, OCCURRED_AT)
}

fn line_at(tenant: &str, id: &str, legal_entity: &str, occurred_at: i64) -> RatedUsage {
    RatedUsage {
        metadata: metadata(tenant, id, occurred_at),
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
    mapping_of("gl-1", legal_entity)
}

fn mapping_of(id: &str, legal_entity: &str) -> GlMapping {
    GlMapping {
        metadata: metadata("acme", id, 0),
        mapping_id: id.into(),
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

fn legal_entity(id: &str, time_zone: &str) -> LegalEntity {
    LegalEntity {
        metadata: metadata("acme", id, 0),
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

/// A fanout with only the ERP route on, its topics unique to the test and created.
struct ErpRoute {
    kafka: backbone_core::KafkaSettings,
    codec: WireCodec,
    settings: FanoutSettings,
    _registry: LocalRegistry,
}

impl ErpRoute {
    async fn new() -> Self {
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
            legal_entities_topic: unique_topic("master.legal-entities"),
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
            &settings.legal_entities_topic,
        ] {
            create_topic(&kafka, topic, 1).await.expect("topic");
        }
        Self {
            kafka,
            codec,
            settings,
            _registry: registry,
        }
    }

    async fn encode<T: Contract + serde::Serialize>(&self, topic: &str, value: &T) -> Vec<u8> {
        self.codec
            .encode_contract(&format!("{topic}-value"), value)
            .await
            .expect("encode")
    }

    /// Runs the fanout until `dead` dead letters and `posted` postings are out; both, as read.
    async fn run(&self, dead: usize, posted: usize) -> (Vec<ConsumedRecord>, Vec<LedgerPosting>) {
        let group = unique_group("fanout-erp");
        let mut runtime = RuntimeSettings {
            group_id: Some(group.clone()),
            topic_partitions: 1,
            ..RuntimeSettings::default()
        };
        runtime.state.dir = std::env::temp_dir().join("backbone-state").join(&group);
        let dlq = format!("{}.dlq", self.settings.rated_topic);
        let fanout = RunningProcessor::start(
            Fanout::new(self.settings.clone(), self.codec.clone()),
            &self.kafka,
            runtime,
        );
        let dead = consume_until(&self.kafka, &dlq, dead, DEADLINE)
            .await
            .expect("dead letters");
        let postings = consume_until(&self.kafka, &self.settings.routes.erp, posted, DEADLINE)
            .await
            .expect("postings");
        fanout.stop(DEADLINE).await;
        let mut decoded = Vec::new();
        for record in &postings {
            let posting: LedgerPosting = self
                .codec
                .decode_as(
                    record.value.as_deref().expect("value"),
                    LedgerPosting::schema(),
                )
                .await
                .expect("decode posting");
            decoded.push(posting);
        }
        (dead, decoded)
    }

    /// How many dead letters and postings the topics hold.
    fn written(&self) -> (i64, i64) {
        let dlq = format!("{}.dlq", self.settings.rated_topic);
        let total = |topic: &str| end_offsets_total(&self.kafka, topic).expect("end offsets");
        (total(&dlq), total(&self.settings.routes.erp))
    }
}

#[tokio::test]
async fn lines_without_a_usable_gl_mapping_and_bad_records_are_dead_lettered() {
    let route = ErpRoute::new().await;
    let s = &route.settings;
    // acme maps le-eu; globex's only mapping is not Avro.
    let acme_mapping = route.encode(&s.gl_mappings_topic, &mapping("le-eu")).await;
    produce(
        &route.kafka,
        &s.gl_mappings_topic,
        &[
            TestRecord::new("acme:gl-1", acme_mapping.clone()),
            TestRecord::new("globex:gl-1", &b"{\"legal_entity_id\":\"le-eu\"}"[..]),
        ],
    )
    .await
    .expect("GL mappings");

    produce_tombstone(
        &route.kafka,
        &s.rated_topic,
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
        let bytes = route.encode(&s.rated_topic, &event).await;
        records.push(TestRecord::new("acme:sub-1", bytes));
    }
    produce(&route.kafka, &s.rated_topic, &records)
        .await
        .expect("rated lines");
    let expected = BTreeMap::from([
        (0, "missing_value".to_owned()),
        (1, "contract_violation".to_owned()),
        (2, "unknown_gl_mapping".to_owned()),
        (3, "invalid_gl_mapping".to_owned()),
    ]);

    let (dead, postings) = route.run(expected.len(), 1).await;

    assert_eq!(dead_letter_reasons(&dead), expected);
    let posted: Vec<&str> = postings.iter().map(|p| p.rating_id.as_str()).collect();
    assert_eq!(posted, ["valid"]);
    assert_eq!(route.written(), (expected.len() as i64, 1));
}

/// 2026-11-30 22:30 UTC in microseconds: 23:30 in Berlin, 17:30 in New York.
const NOV_30_2230_UTC: i64 = 1_796_077_800_000_000;
const HOUR: i64 = 3_600_000_000;

#[tokio::test]
async fn a_posting_is_dated_by_the_local_day_of_its_legal_entity() {
    let route = ErpRoute::new().await;
    let s = &route.settings;
    let mut entities = Vec::new();
    for entity in [
        legal_entity("le-berlin", "Europe/Berlin"),
        legal_entity("le-ny", "America/New_York"),
        legal_entity("le-bad", "Europe/Atlantis"),
    ] {
        let key = format!("acme:{}", entity.legal_entity_id);
        entities.push(TestRecord::new(
            key,
            route.encode(&s.legal_entities_topic, &entity).await,
        ));
    }
    produce(&route.kafka, &s.legal_entities_topic, &entities)
        .await
        .expect("legal entities");
    let mut mappings = Vec::new();
    for entity in ["le-berlin", "le-ny", "le-bad", "le-utc"] {
        let id = format!("gl-{entity}");
        let mapping = route
            .encode(&s.gl_mappings_topic, &mapping_of(&id, entity))
            .await;
        mappings.push(TestRecord::new(format!("acme:{id}"), mapping));
    }
    produce(&route.kafka, &s.gl_mappings_topic, &mappings)
        .await
        .expect("GL mappings");
    // le-utc has no record: its days are UTC days.
    let mut lines = Vec::new();
    for (id, entity, at) in [
        ("berlin-late-evening", "le-berlin", NOV_30_2230_UTC),
        ("berlin-after-midnight", "le-berlin", NOV_30_2230_UTC + HOUR),
        ("ny-evening", "le-ny", NOV_30_2230_UTC + 5 * HOUR),
        ("ny-after-midnight", "le-ny", NOV_30_2230_UTC + 7 * HOUR),
        ("utc-before-midnight", "le-utc", NOV_30_2230_UTC + HOUR),
        ("utc-after-midnight", "le-utc", NOV_30_2230_UTC + 2 * HOUR),
        ("bad-zone", "le-bad", NOV_30_2230_UTC),
    ] {
        let line = route
            .encode(&s.rated_topic, &line_at("acme", id, entity, at))
            .await;
        lines.push(TestRecord::new("acme:sub-1", line));
    }
    produce(&route.kafka, &s.rated_topic, &lines)
        .await
        .expect("rated lines");

    let (dead, postings) = route.run(1, 6).await;

    assert_eq!(
        dead_letter_reasons(&dead),
        BTreeMap::from([(6, "invalid_legal_entity".to_owned())])
    );
    let dated: BTreeMap<&str, (String, String, String)> = postings
        .iter()
        .map(|p| {
            (
                p.rating_id.as_str(),
                (
                    format_date(p.posting_date),
                    format_date(p.period_start),
                    format_date(p.period_end),
                ),
            )
        })
        .collect();
    let day =
        |date: &str, start: &str, end: &str| (date.to_owned(), start.to_owned(), end.to_owned());
    let november = |date| day(date, "2026-11-01", "2026-12-01");
    let december = |date| day(date, "2026-12-01", "2027-01-01");
    assert_eq!(
        dated,
        BTreeMap::from([
            ("berlin-late-evening", november("2026-11-30")),
            ("berlin-after-midnight", december("2026-12-01")),
            ("ny-evening", november("2026-11-30")),
            ("ny-after-midnight", december("2026-12-01")),
            ("utc-before-midnight", november("2026-11-30")),
            ("utc-after-midnight", december("2026-12-01")),
        ])
    );
    assert_eq!(
        route.written(),
        (1, 6),
        "nothing after the dead letter and the postings"
    );
}
