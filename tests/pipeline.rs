//! Usage through the enricher, the usage-rater and the fanout on the real broker and registry:
//! every billing charge exists once, the charges of a subscription add up to the price of its
//! total usage, a duplicate and a late account change nothing, and analytics gets a row per
//! rated line and per window revision, the ERP gets a balanced posting per non-zero line that
//! moves exactly the billed amount, and the CRM's latest snapshot per customer holds what was
//! billed. Then loadgen's workload through all four stages, the
//! validator included, against loadgen's own expectations.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use backbone_calendar::now_micros;
use serde::de::DeserializeOwned;

use backbone_calendar::days_from_civil;
use backbone_core::{KafkaSettings, RuntimeSettings};
use backbone_enricher::{Enricher, EnricherSettings};
use backbone_fanout::{Fanout, FanoutSettings, Routes};
use backbone_loadgen::{Destinations, LoadSpec, Workload};
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::types::{
    AccountHealthSnapshot, AccountStatus, AnalyticsFact, BillingCharge, BillingInterval,
    ChargeModel, Contract, CustomerAccount, EventMetadata, FactType, GlMapping, LedgerPosting,
    MeterAggregation, PriceTier, Quantity, RateCard, RateCharge, Subscription, SubscriptionStatus,
    TraceContext, UsageEvent,
};
use backbone_schemas::WireCodec;
use backbone_testkit::{
    await_committed, consume_all, consume_until, consume_while, create_topic, end_offsets_total,
    produce, reference_price, shared_settings, unique_group, unique_topic, ConsumedRecord,
    RunningProcessor, SaslMechanism, SecuredBroker, TestRecord,
};
use backbone_usage_rater::{RaterSettings, UsageRater};
use backbone_usage_validator::{UsageValidator, ValidatorSettings};

/// A bound, not a pace: `make test` runs this binary beside the chaos runs, and the run over
/// SASL_SSL with zstd once needed more than 90 s for its 1,401 charges there (30 s alone).
const DEADLINE: Duration = Duration::from_secs(180);

fn metadata(event_id: &str, occurred_at: i64) -> EventMetadata {
    EventMetadata {
        tenant_id: "acme".into(),
        event_id: event_id.into(),
        source: "api".into(),
        r#type: "backbone.test".into(),
        occurred_at,
        produced_at: occurred_at,
        trace: TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: None,
        },
        schema_version: None,
    }
}

/// Graduated API calls: the first 1,000 at 0.002, the next 9,000 at 0.0015, then 0.001.
fn api_calls() -> RateCharge {
    let tier = |up_to: Option<&str>, price: &str| PriceTier {
        up_to: up_to.map(|u| u.parse().expect("bound")),
        unit_price: price.parse().expect("price"),
        flat_fee: None,
    };
    RateCharge {
        charge_id: "api-calls".into(),
        name: "API calls".into(),
        meter_id: "api_calls".into(),
        aggregation: MeterAggregation::Sum,
        charge_model: ChargeModel::Graduated,
        flat_amount: None,
        unit_price: None,
        package_size: None,
        percentage: None,
        free_units: Some("100".parse().expect("free")),
        minimum_spend: None,
        maximum_spend: None,
        tiers: vec![
            tier(Some("1000"), "0.002"),
            tier(Some("10000"), "0.0015"),
            tier(None, "0.001"),
        ],
        group_by: Vec::new(),
    }
}

fn account(customer: &str) -> CustomerAccount {
    CustomerAccount {
        metadata: metadata(&format!("account-{customer}"), now_micros()),
        customer_id: customer.into(),
        name: customer.into(),
        status: AccountStatus::Active,
        currency: "EUR".into(),
        legal_entity_id: "acme-de".into(),
        country_code: "DE".into(),
        billing_contact_name: None,
        billing_email: None,
        billing_address: None,
        tax_id: None,
        crm_account_id: None,
        erp_customer_id: None,
    }
}

fn subscription(customer: &str) -> Subscription {
    let today = i32::try_from(now_micros() / 86_400_000_000).expect("day");
    Subscription {
        metadata: metadata(&format!("subscription-{customer}"), now_micros()),
        subscription_id: format!("sub-{customer}"),
        customer_id: customer.into(),
        plan_id: "api".into(),
        status: SubscriptionStatus::Active,
        currency: "EUR".into(),
        legal_entity_id: "acme-de".into(),
        billing_interval: BillingInterval::Monthly,
        billing_anchor_day: 1,
        current_period_start: today,
        current_period_end: today + 30,
        started_at: 0,
        ends_at: None,
        trial_ends_at: None,
    }
}

fn usage(customer: &str, event_id: &str, quantity: u32, occurred_at: i64) -> UsageEvent {
    UsageEvent {
        metadata: metadata(event_id, occurred_at),
        customer_id: customer.into(),
        subscription_id: Some(format!("sub-{customer}")),
        meter_id: "api_calls".into(),
        quantity: Quantity::from_unscaled(i128::from(quantity) * 1_000_000_000).expect("qty"),
        unit: "call".into(),
        dimensions: None,
        unique_value: None,
    }
}

struct Topics {
    usage: String,
    accounts: String,
    subscriptions: String,
    rate_cards: String,
    legal_entities: String,
    gl_mappings: String,
    enriched: String,
    rated: String,
    windows: String,
    billing: String,
    analytics: String,
    crm: String,
    erp: String,
    by_customer: String,
}

impl Topics {
    /// Fresh topics, created: inputs co-partitioned in 3, master data read whole in 1.
    async fn create(kafka: &KafkaSettings) -> Topics {
        let t = Topics {
            usage: unique_topic("usage.validated"),
            accounts: unique_topic("master.customer-accounts"),
            subscriptions: unique_topic("master.subscriptions"),
            rate_cards: unique_topic("master.rate-cards"),
            legal_entities: unique_topic("master.legal-entities"),
            gl_mappings: unique_topic("master.gl-mappings"),
            enriched: unique_topic("usage.enriched"),
            rated: unique_topic("usage.rated"),
            windows: unique_topic("usage.window-aggregates"),
            billing: unique_topic("billing.charges"),
            analytics: unique_topic("analytics.facts"),
            crm: unique_topic("crm.account-health"),
            erp: unique_topic("erp.postings"),
            by_customer: unique_topic("usage.rated-by-customer"),
        };
        for topic in [&t.usage, &t.accounts, &t.enriched, &t.rated, &t.windows] {
            create_topic(kafka, topic, 3).await.expect("topic");
        }
        for topic in [
            &t.subscriptions,
            &t.rate_cards,
            &t.legal_entities,
            &t.gl_mappings,
        ] {
            create_topic(kafka, topic, 1).await.expect("topic");
        }
        t
    }
}

/// Enricher, usage-rater and fanout (every route on), running in-process.
struct Stages {
    enricher: RunningProcessor,
    rater: RunningProcessor,
    fanout: RunningProcessor,
    fanout_group: String,
}

impl Stages {
    fn start(t: &Topics, kafka: &KafkaSettings, codec: &WireCodec, park_timeout: Duration) -> Self {
        let enricher = RunningProcessor::start(
            Enricher::new(
                EnricherSettings {
                    usage_topic: t.usage.clone(),
                    accounts_topic: t.accounts.clone(),
                    subscriptions_topic: t.subscriptions.clone(),
                    rate_cards_topic: t.rate_cards.clone(),
                    legal_entities_topic: t.legal_entities.clone(),
                    output_topic: t.enriched.clone(),
                    park_timeout,
                    ..EnricherSettings::default()
                },
                codec.clone(),
            ),
            kafka,
            runtime("enricher"),
        );
        let rater = RunningProcessor::start(
            UsageRater::new(
                RaterSettings {
                    input_topic: t.enriched.clone(),
                    rate_cards_topic: t.rate_cards.clone(),
                    output_topic: t.rated.clone(),
                    aggregates_topic: t.windows.clone(),
                    ..RaterSettings::default()
                },
                codec.clone(),
            ),
            kafka,
            runtime("usage-rater"),
        );
        let fanout_runtime = runtime("fanout");
        let fanout_group = fanout_runtime.group_id.clone().expect("group");
        let fanout = RunningProcessor::start(
            Fanout::new(
                FanoutSettings {
                    rated_topic: t.rated.clone(),
                    aggregates_topic: t.windows.clone(),
                    gl_mappings_topic: t.gl_mappings.clone(),
                    legal_entities_topic: t.legal_entities.clone(),
                    by_customer_topic: t.by_customer.clone(),
                    routes: Routes {
                        billing: t.billing.clone(),
                        analytics: t.analytics.clone(),
                        crm: t.crm.clone(),
                        erp: t.erp.clone(),
                    },
                    dedup: true,
                },
                codec.clone(),
            ),
            kafka,
            fanout_runtime,
        );
        Stages {
            enricher,
            rater,
            fanout,
            fanout_group,
        }
    }

    /// Waits until the fanout has committed every input up to the end, so that everything it
    /// writes once per batch (snapshots, facts) is on its topics: a batch's inputs commit only
    /// once its outputs are acknowledged. Rated lines first: the fanout's repartition topic is
    /// complete once they are.
    async fn fanout_caught_up(&self, kafka: &KafkaSettings, t: &Topics) {
        for topic in [&t.rated, &t.windows, &t.by_customer] {
            let end = end_offsets_total(kafka, topic).expect("end offsets");
            await_committed(kafka, &self.fanout_group, topic, end, DEADLINE).await;
        }
    }

    async fn stop(self) {
        for running in [self.fanout, self.rater, self.enricher] {
            running.stop(DEADLINE).await;
        }
    }
}

async fn decode_all<T: Contract + DeserializeOwned>(
    codec: &WireCodec,
    records: &[ConsumedRecord],
) -> Vec<T> {
    let mut decoded = Vec::with_capacity(records.len());
    for record in records {
        let value = record.value.as_deref().expect("value");
        decoded.push(codec.decode_as(value, T::schema()).await.expect("decode"));
    }
    decoded
}

/// Charges once each by `rating_id`, summed per subscription.
fn billed_per_subscription(charges: &[BillingCharge]) -> BTreeMap<String, i128> {
    let mut billed: BTreeMap<String, i128> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for charge in charges {
        assert!(
            ids.insert(charge.rating_id.clone()),
            "charge {} twice",
            charge.rating_id
        );
        *billed.entry(charge.subscription_id.clone()).or_default() += charge.amount.unscaled();
    }
    billed
}

/// Reads ERP postings until there is one per non-zero charge, checks that each balances and
/// none repeats, and sums the receivable movement per `<legal entity>/<currency>`.
async fn ledger(
    kafka: &KafkaSettings,
    codec: &WireCodec,
    topic: &str,
    charges: &[BillingCharge],
) -> BTreeMap<String, i128> {
    let non_zero = charges.iter().filter(|c| c.amount.unscaled() != 0).count();
    let records = consume_until(kafka, topic, non_zero, DEADLINE)
        .await
        .expect("ERP postings");
    let postings: Vec<LedgerPosting> = decode_all(codec, &records).await;
    assert_eq!(
        postings.len(),
        non_zero,
        "one posting per non-zero rated line"
    );
    let mut ids = BTreeSet::new();
    let mut net: BTreeMap<String, i128> = BTreeMap::new();
    for posting in &postings {
        assert!(
            ids.insert(posting.rating_id.clone()),
            "{} posted twice",
            posting.rating_id
        );
        let debits: i128 = posting.lines.iter().map(|l| l.debit.unscaled()).sum();
        let credits: i128 = posting.lines.iter().map(|l| l.credit.unscaled()).sum();
        assert_eq!(debits, credits, "posting {} balances", posting.rating_id);
        assert_eq!(debits, posting.amount.unscaled().abs());
        let key = format!("{}/{}", posting.legal_entity_id, posting.currency);
        *net.entry(key).or_default() += posting.amount.unscaled();
    }
    net
}

/// Reads every CRM snapshot, checks their ids are distinct, and keeps the latest per
/// customer: its current and previous period amounts together.
async fn latest_spend(
    kafka: &KafkaSettings,
    codec: &WireCodec,
    topic: &str,
) -> BTreeMap<String, i128> {
    let records = consume_all(kafka, topic, DEADLINE)
        .await
        .expect("CRM snapshots");
    let snapshots: Vec<AccountHealthSnapshot> = decode_all(codec, &records).await;
    let ids: BTreeSet<&str> = snapshots.iter().map(|s| s.snapshot_id.as_str()).collect();
    assert_eq!(ids.len(), snapshots.len(), "snapshot ids repeat");
    let mut latest: BTreeMap<String, &AccountHealthSnapshot> = BTreeMap::new();
    for snapshot in &snapshots {
        let entry = latest
            .entry(snapshot.customer_id.clone())
            .or_insert(snapshot);
        if snapshot.as_of > entry.as_of {
            *entry = snapshot;
        }
    }
    latest
        .into_iter()
        .map(|(customer, s)| {
            let previous = s.previous_period_amount.map_or(0, |a| a.unscaled());
            (customer, s.period_to_date_amount.unscaled() + previous)
        })
        .collect()
}

fn gl_mapping(entity: &str) -> GlMapping {
    GlMapping {
        metadata: metadata(&format!("gl-{entity}"), now_micros()),
        mapping_id: format!("gl-{entity}"),
        legal_entity_id: entity.into(),
        product_id: None,
        charge_id: None,
        revenue_account: "4000".into(),
        receivable_account: "1210".into(),
        deferred_revenue_account: "2400".into(),
        tax_account: "3800".into(),
        effective_from: 0,
        effective_to: None,
    }
}

async fn publish<T: Contract>(
    kafka: &KafkaSettings,
    codec: &WireCodec,
    topic: &str,
    records: &[(String, T)],
) {
    let mut encoded = Vec::new();
    for (key, value) in records {
        let bytes = codec
            .encode_contract(&format!("{topic}-value"), value)
            .await
            .expect("encode");
        encoded.push(TestRecord::new(key.clone(), bytes));
    }
    produce(kafka, topic, &encoded).await.expect("produce");
}

/// The plan `api` (rate card version 1 with [`api_calls`]) and the GL mapping of legal entity
/// `acme-de`, for tenant `acme`.
async fn publish_api_plan(kafka: &KafkaSettings, codec: &WireCodec, t: &Topics) {
    publish(
        kafka,
        codec,
        &t.gl_mappings,
        &[("acme:gl-acme-de".to_owned(), gl_mapping("acme-de"))],
    )
    .await;
    let card = RateCard {
        metadata: metadata("card-api-1", now_micros()),
        plan_id: "api".into(),
        version: 1,
        name: "API".into(),
        currency: "EUR".into(),
        effective_from: days_from_civil(2020, 1, 1),
        effective_to: None,
        charges: vec![api_calls()],
        recurring_fees: Vec::new(),
    };
    publish(
        kafka,
        codec,
        &t.rate_cards,
        &[("acme:api:1".to_owned(), card)],
    )
    .await;
}

/// The usage validator from `raw` to the deployment's validated usage topic, deduplicating.
fn start_validator(
    raw: &str,
    t: &Topics,
    kafka: &KafkaSettings,
    codec: &WireCodec,
    runtime: RuntimeSettings,
) -> RunningProcessor {
    let settings = ValidatorSettings {
        input_topic: raw.to_owned(),
        output_topic: t.usage.clone(),
        dedup: true,
    };
    RunningProcessor::start(UsageValidator::new(settings, codec.clone()), kafka, runtime)
}

fn runtime(stage: &str) -> RuntimeSettings {
    let group = unique_group(stage);
    let mut settings = RuntimeSettings {
        group_id: Some(group.clone()),
        topic_partitions: 3,
        ..RuntimeSettings::default()
    };
    settings.state.dir = std::env::temp_dir().join("backbone-state").join(group);
    settings
}

#[tokio::test]
async fn every_charge_once_and_totals_equal_the_price_of_the_usage() {
    let kafka = shared_settings();
    let registry = LocalRegistry::start(&RegistryConfig::ephemeral(
        kafka.clone(),
        &unique_topic("schemas"),
    ))
    .await
    .expect("registry");
    let codec = WireCodec::new(registry.url());
    let t = Topics::create(&kafka).await;

    let customers = ["c-1", "c-2", "c-3"];
    publish_api_plan(&kafka, &codec, &t).await;
    let subscriptions: Vec<(String, Subscription)> = customers
        .iter()
        .map(|c| (format!("acme:sub-{c}"), subscription(c)))
        .collect();
    publish(&kafka, &codec, &t.subscriptions, &subscriptions).await;
    // c-3's account comes only after its usage: its events park, then are released.
    let accounts: Vec<(String, CustomerAccount)> = customers[..2]
        .iter()
        .map(|c| (format!("acme:{c}"), account(c)))
        .collect();
    publish(&kafka, &codec, &t.accounts, &accounts).await;

    // Usage: per customer 40 events of growing size, one of them sent twice.
    let now = now_micros();
    let mut events = Vec::new();
    let mut totals: BTreeMap<String, u32> = BTreeMap::new();
    for (n, customer) in customers.iter().enumerate() {
        for i in 0..40u32 {
            let quantity = (i + 1) * 25 * (n as u32 + 1);
            let event = usage(
                customer,
                &format!("{customer}-{i}"),
                quantity,
                now - 60_000_000,
            );
            *totals.entry(format!("sub-{customer}")).or_default() += quantity;
            events.push((format!("acme:{customer}"), event));
        }
        events.push(events[events.len() - 7].clone());
    }
    publish(&kafka, &codec, &t.usage, &events).await;

    let stages = Stages::start(&t, &kafka, &codec, EnricherSettings::default().park_timeout);

    // c-3's account arrives once the pipeline runs.
    publish(
        &kafka,
        &codec,
        &t.accounts,
        &[("acme:c-3".to_owned(), account("c-3"))],
    )
    .await;

    let distinct_events = 3 * 40;
    let billing = consume_until(&kafka, &t.billing, distinct_events, DEADLINE)
        .await
        .expect("billing charges");
    stages.fanout_caught_up(&kafka, &t).await;
    let analytics = consume_all(&kafka, &t.analytics, DEADLINE)
        .await
        .expect("analytics facts");
    let charges: Vec<BillingCharge> = decode_all(&codec, &billing).await;
    let billed = billed_per_subscription(&charges);
    assert_eq!(
        billing.len(),
        distinct_events,
        "one charge per distinct event"
    );
    let net = ledger(&kafka, &codec, &t.erp, &charges).await;
    let spend = latest_spend(&kafka, &codec, &t.crm).await;
    stages.stop().await;
    assert_eq!(
        net,
        BTreeMap::from([("acme-de/EUR".to_owned(), billed.values().sum::<i128>())]),
        "the ledger moves exactly what was billed"
    );
    for (customer, amount) in &spend {
        assert_eq!(
            Some(amount),
            billed.get(&format!("sub-{customer}")),
            "{customer}: the CRM's latest snapshot holds what was billed"
        );
    }
    assert_eq!(spend.len(), customers.len());
    for (subscription, total) in &totals {
        // Priced by the test kit's own reading of the charge models, not the rating crate.
        let expected = reference_price(
            &api_calls(),
            Quantity::from_unscaled(i128::from(*total) * 1_000_000_000).expect("total"),
        )
        .expect("price");
        assert_eq!(
            billed.get(subscription).copied().unwrap_or(0),
            expected.unscaled(),
            "{subscription}: charges add up to the price of {total} calls"
        );
    }
    // One fact per rated line; a window's facts are its revisions (the fanout writes only the
    // newest of a batch), and the newest of each adds up to the usage.
    let mut rated = BTreeSet::new();
    let mut windows: BTreeMap<String, (i64, i128)> = BTreeMap::new();
    for record in &analytics {
        let fact: AnalyticsFact = codec
            .decode_as(
                record.value.as_deref().expect("value"),
                AnalyticsFact::schema(),
            )
            .await
            .expect("decode fact");
        let quantity = fact.quantity.map_or(0, |q| q.unscaled());
        match fact.fact_type {
            FactType::RatedUsage => assert!(rated.insert(fact.fact_id), "a rated fact twice"),
            FactType::UsageWindow => {
                let newest = windows.entry(fact.fact_id).or_default();
                if fact.source_revision > newest.0 {
                    *newest = (fact.source_revision, quantity);
                }
            }
            other => panic!("a fact of type {other:?}"),
        }
    }
    assert_eq!(rated.len(), distinct_events);
    let usage: i128 = totals.values().map(|t| i128::from(*t)).sum();
    assert_eq!(
        windows.values().map(|(_, q)| q).sum::<i128>(),
        usage * 1_000_000_000,
        "the windows' newest figures add up to the usage"
    );
}

/// Dead-letter reasons on `topic` once at least `count` letters arrived.
async fn reasons(kafka: &KafkaSettings, topic: &str, count: usize) -> BTreeMap<String, usize> {
    let mut reasons = BTreeMap::new();
    if count == 0 {
        return reasons;
    }
    for letter in consume_until(kafka, topic, count, DEADLINE)
        .await
        .expect("dead letters")
    {
        let reason = letter.header("backbone.dlq.reason").unwrap_or_default();
        *reasons.entry(reason).or_default() += 1;
    }
    reasons
}

#[tokio::test]
async fn loadgen_expectations_hold_through_every_stage() {
    loadgen_expectations_hold(shared_settings()).await;
}

/// The same run on a broker that wants SASL over TLS, every client (the registry's, the
/// stages', the test's own) authenticating with SCRAM, every producer compressing with zstd:
/// the way a managed cluster is used.
#[tokio::test(flavor = "multi_thread")]
async fn loadgen_expectations_hold_over_sasl_ssl_with_zstd() {
    let broker = tokio::task::block_in_place(SecuredBroker::start).expect("a SASL_SSL broker");
    let mut kafka = broker.settings(SaslMechanism::ScramSha512);
    kafka
        .producer_properties
        .insert("compression.type".into(), "zstd".into());
    loadgen_expectations_hold(kafka).await;
}

async fn loadgen_expectations_hold(kafka: KafkaSettings) {
    let registry = LocalRegistry::start(&RegistryConfig::ephemeral(
        kafka.clone(),
        &unique_topic("schemas"),
    ))
    .await
    .expect("registry");
    let codec = WireCodec::new(registry.url());
    let workload = Workload::generate(&LoadSpec {
        seed: 11,
        tenant: "acme".to_owned(),
        customers: 30,
        plans: 2,
        events: 1_500,
        duplicate_share: 0.03,
        late_share: 0.05,
        out_of_window_share: 0.01,
        poison_share: 0.03,
        now_micros: now_micros(),
    });
    let raw = unique_topic("usage.events");
    create_topic(&kafka, &raw, 3).await.expect("topic");
    let t = Topics::create(&kafka).await;
    let producer: rdkafka::producer::FutureProducer =
        kafka.producer_config().create().expect("producer");
    workload
        .publish(
            &producer,
            &codec,
            Destinations {
                usage: &raw,
                accounts: &t.accounts,
                subscriptions: &t.subscriptions,
                rate_cards: &t.rate_cards,
                gl_mappings: &t.gl_mappings,
            },
            0,
        )
        .await
        .expect("workload");

    let validator = start_validator(&raw, &t, &kafka, &codec, runtime("usage-validator"));
    let park_timeout = Duration::from_secs(3);
    let stages = Stages::start(&t, &kafka, &codec, park_timeout);

    let expected = &workload.expected;
    let billing = consume_until(&kafka, &t.billing, expected.billed_events, DEADLINE)
        .await
        .expect("billing charges");

    // Events of customers without an account wait out the park timeout; account updates on
    // every partition move the enricher's time past it.
    let ghosts = expected
        .dead_letters
        .get("unknown_account")
        .copied()
        .unwrap_or(0);
    let tick = codec
        .encode_contract(&format!("{}-value", t.accounts), &workload.accounts[0])
        .await
        .expect("encode");
    let enricher_dlq = format!("{}.dlq", t.usage);
    let started = std::time::Instant::now();
    loop {
        let ticks: Vec<TestRecord> = (0..3)
            .map(|partition| TestRecord {
                partition: Some(partition),
                ..TestRecord::new("acme:tick", tick.clone())
            })
            .collect();
        produce(&kafka, &t.accounts, &ticks).await.expect("ticks");
        let expired = consume_while(
            &kafka,
            &enricher_dlq,
            park_timeout,
            format!("{ghosts} expired parked events"),
            move |records| records.len() >= ghosts,
        )
        .await;
        if expired.is_ok() {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "parked events never expired");
    }

    let mut dead = reasons(
        &kafka,
        &format!("{raw}.dlq"),
        ["wrong_magic_byte", "unknown_schema_id", "invalid_quantity"]
            .iter()
            .filter_map(|r| expected.dead_letters.get(*r))
            .sum(),
    )
    .await;
    dead.extend(reasons(&kafka, &enricher_dlq, ghosts).await);
    let late = expected.dead_letters.get("too_late").copied().unwrap_or(0);
    dead.extend(reasons(&kafka, &format!("{}.dlq", t.enriched), late).await);
    assert_eq!(
        &dead, &expected.dead_letters,
        "every poison record under its reason"
    );

    let charges: Vec<BillingCharge> = decode_all(&codec, &billing).await;
    let billed = billed_per_subscription(&charges);
    let net = ledger(&kafka, &codec, &t.erp, &charges).await;
    stages.fanout_caught_up(&kafka, &t).await;
    let spend = latest_spend(&kafka, &codec, &t.crm).await;
    let validated = validator.stop(DEADLINE).await;
    stages.stop().await;
    assert_eq!(validated.duplicates as usize, expected.duplicates);

    assert_eq!(charges.len(), expected.billed_events);
    let amount = |text: &str| -> i128 {
        text.parse::<backbone_schemas::types::Amount>()
            .expect("amount")
            .unscaled()
    };
    for (subscription, want) in &expected.subscriptions {
        let want = amount(&want.amount);
        assert_eq!(
            billed.get(subscription).copied().unwrap_or(0),
            want,
            "{subscription}"
        );
        let customer = subscription.trim_start_matches("sub-");
        assert_eq!(
            spend.get(customer).copied().unwrap_or(0),
            want,
            "CRM of {customer}"
        );
    }
    let want: BTreeMap<String, i128> = expected
        .ledger
        .iter()
        .map(|(key, total)| (key.clone(), amount(total)))
        .collect();
    assert_eq!(net, want, "the ledger against loadgen's expectation");
}

/// A product team's producer written from the contract alone, in Python with Confluent's client
/// (`examples/producers/python`): it fetches the contract from the registry with its own
/// credentials, and sends its facts twice. Every fact is billed once, at the price of its calls.
#[tokio::test]
async fn the_python_producer_example_is_billed_once_per_fact() {
    an_example_producer_is_billed_once_per_fact(Example::Python).await;
}

/// The same with the Go example (`examples/producers/go`: franz-go, its registry client, and
/// hamba/avro).
#[tokio::test]
async fn the_go_producer_example_is_billed_once_per_fact() {
    an_example_producer_is_billed_once_per_fact(Example::Go).await;
}

/// The same with the Java example (`examples/producers/java`: kafka-clients and Apache Avro,
/// the wire format framed by hand).
#[tokio::test]
async fn the_java_producer_example_is_billed_once_per_fact() {
    an_example_producer_is_billed_once_per_fact(Example::Java).await;
}

/// The producer examples, each a program a product team could have written.
#[derive(Debug, Clone, Copy)]
enum Example {
    Python,
    Go,
    Java,
}

async fn an_example_producer_is_billed_once_per_fact(example: Example) {
    let kafka = shared_settings();
    let url = reqwest::Url::parse(
        &std::env::var("BACKBONE_TEST_REGISTRY_URL")
            .expect("scripts/test.sh sets BACKBONE_TEST_REGISTRY_URL"),
    )
    .expect("a registry URL");
    let codec = WireCodec::new(url.as_str());
    let t = Topics::create(&kafka).await;
    publish_api_plan(&kafka, &codec, &t).await;
    publish(
        &kafka,
        &codec,
        &t.subscriptions,
        &[("acme:sub-c-example".to_owned(), subscription("c-example"))],
    )
    .await;
    publish(
        &kafka,
        &codec,
        &t.accounts,
        &[("acme:c-example".to_owned(), account("c-example"))],
    )
    .await;
    let raw = unique_topic("usage.events");
    create_topic(&kafka, &raw, 3).await.expect("topic");
    // The platform registers the contract; the producer only reads it.
    codec
        .contract_id::<UsageEvent>(&format!("{raw}-value"))
        .await
        .expect("the usage contract registered");

    let facts = 20;
    let run = unique_topic("run");
    for _ in 0..2 {
        run_example(example, &kafka, &url, &raw, &run, facts).await;
    }

    let validator_runtime = runtime("usage-validator");
    let validator_group = validator_runtime.group_id.clone().expect("a group");
    let validator = start_validator(&raw, &t, &kafka, &codec, validator_runtime);
    let stages = Stages::start(&t, &kafka, &codec, EnricherSettings::default().park_timeout);
    consume_until(&kafka, &t.billing, facts, DEADLINE)
        .await
        .expect("billing charges");
    // Every record the producer sent was read, the repeats dropped; then the whole topic.
    await_committed(&kafka, &validator_group, &raw, 2 * facts as i64, DEADLINE).await;
    let end = usize::try_from(end_offsets_total(&kafka, &t.billing).expect("end")).expect("end");
    let billing = consume_until(&kafka, &t.billing, end, DEADLINE)
        .await
        .expect("billing charges");
    stages.stop().await;
    validator.stop(DEADLINE).await;

    let charges: Vec<BillingCharge> = decode_all(&codec, &billing).await;
    let rating_ids: BTreeSet<&str> = charges.iter().map(|c| c.rating_id.as_str()).collect();
    assert_eq!(
        charges.len(),
        facts,
        "one charge per fact, the repeats billed nothing"
    );
    assert_eq!(rating_ids.len(), facts);
    let expected = reference_price(
        &api_calls(),
        Quantity::from_unscaled(25 * facts as i128 * 1_000_000_000).expect("total"),
    )
    .expect("price");
    assert_eq!(
        billed_per_subscription(&charges)
            .get("sub-c-example")
            .copied(),
        Some(expected.unscaled()),
        "the charges add up to the price of {facts} x 25 calls"
    );
}

/// Runs `example` for customer `c-example` of tenant `acme`: `facts` events of 25 calls, the
/// registry credentials from `url` passed as its flags.
async fn run_example(
    example: Example,
    kafka: &KafkaSettings,
    url: &reqwest::Url,
    topic: &str,
    run: &str,
    facts: usize,
) {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/producers");
    let tools = std::env::var_os("BACKBONE_TOOLS_DIR").map_or_else(
        || std::path::Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache/backbone"),
        std::path::PathBuf::from,
    );
    let mut command = match example {
        Example::Python => {
            let mut python = tokio::process::Command::new(tools.join("bin/pyclient-python"));
            python.arg(examples.join("python/produce_usage.py"));
            python
        }
        Example::Go => {
            let mut go = tokio::process::Command::new("go");
            go.current_dir(examples.join("go")).args(["run", "."]);
            go
        }
        Example::Java => {
            let mut java = tokio::process::Command::new("java");
            java.arg("-cp")
                .arg(tools.join("java-example-libs/*"))
                .arg(examples.join("java/ProduceUsage.java"));
            java
        }
    };
    let mut bare = url.clone();
    bare.set_username("").expect("a base URL");
    bare.set_password(None).expect("a base URL");
    let password_file = std::env::temp_dir().join(format!("{run}.registry-password"));
    std::fs::write(&password_file, url.password().unwrap_or_default()).expect("password file");
    let output = command
        .args(["--bootstrap-servers", &kafka.bootstrap_servers])
        .args(["--registry-url", bare.as_str().trim_end_matches('/')])
        .args(["--registry-user", url.username()])
        .arg("--registry-password-file")
        .arg(&password_file)
        .args([
            "--topic",
            topic,
            "--tenant",
            "acme",
            "--customer",
            "c-example",
        ])
        .args(["--subscription", "sub-c-example", "--quantity", "25"])
        .args(["--count", &facts.to_string(), "--run", run])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .expect("the producer finishes")
        .unwrap_or_else(|err| panic!("{example:?} example: {err}; run `make setup`"));
    assert!(
        output.status.success(),
        "{example:?} example failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        printed.lines().count(),
        facts,
        "one line per acknowledged event:\n{printed}"
    );
}
