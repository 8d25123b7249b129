//! Usage through the enricher, the usage-rater and the fanout on the real broker and registry:
//! every billing charge exists once, the charges of a subscription add up to the price of its
//! total usage, a duplicate and a late account change nothing, and analytics gets a row per
//! rated line and per window revision. Then loadgen's workload through all four stages, the
//! validator included, against loadgen's own expectations.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backbone_core::{KafkaSettings, RuntimeSettings};
use backbone_enricher::{Enricher, EnricherSettings};
use backbone_fanout::{Fanout, FanoutSettings, Routes};
use backbone_loadgen::{Destinations, LoadSpec, Workload};
use backbone_rating::{days_from_civil, price};
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::types::{
    AccountStatus, AnalyticsFact, BillingCharge, BillingInterval, ChargeModel, Contract,
    CustomerAccount, EventMetadata, FactType, MeterAggregation, PriceTier, Quantity, RateCard,
    RateCharge, Subscription, SubscriptionStatus, TraceContext, UsageEvent,
};
use backbone_schemas::WireCodec;
use backbone_testkit::{
    consume_until, consume_while, create_topic, produce, shared_settings, unique_group,
    unique_topic, RunningProcessor, TestRecord,
};
use backbone_usage_rater::{RaterSettings, UsageRater};
use backbone_usage_validator::{UsageValidator, ValidatorSettings};

const DEADLINE: Duration = Duration::from_secs(90);

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .expect("clock")
}

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
    enriched: String,
    rated: String,
    windows: String,
    billing: String,
    analytics: String,
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
    let t = Topics {
        usage: unique_topic("usage.validated"),
        accounts: unique_topic("master.customer-accounts"),
        subscriptions: unique_topic("master.subscriptions"),
        rate_cards: unique_topic("master.rate-cards"),
        enriched: unique_topic("usage.enriched"),
        rated: unique_topic("usage.rated"),
        windows: unique_topic("usage.window-aggregates"),
        billing: unique_topic("billing.charges"),
        analytics: unique_topic("analytics.facts"),
    };
    for topic in [&t.usage, &t.accounts, &t.enriched, &t.rated, &t.windows] {
        create_topic(&kafka, topic, 3).await.expect("topic");
    }
    for topic in [&t.subscriptions, &t.rate_cards] {
        create_topic(&kafka, topic, 1).await.expect("topic");
    }

    let customers = ["c-1", "c-2", "c-3"];
    let card = RateCard {
        metadata: metadata("card-api-1", now_micros()),
        plan_id: "api".into(),
        version: 1,
        name: "API".into(),
        currency: "EUR".into(),
        effective_from: days_from_civil(2020, 1, 1),
        effective_to: None,
        charges: vec![api_calls()],
    };
    publish(
        &kafka,
        &codec,
        &t.rate_cards,
        &[("acme:api".to_owned(), card)],
    )
    .await;
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

    let enricher = RunningProcessor::start(
        Enricher::new(
            EnricherSettings {
                usage_topic: t.usage.clone(),
                accounts_topic: t.accounts.clone(),
                subscriptions_topic: t.subscriptions.clone(),
                rate_cards_topic: t.rate_cards.clone(),
                output_topic: t.enriched.clone(),
                ..EnricherSettings::default()
            },
            codec.clone(),
        ),
        &kafka,
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
        &kafka,
        runtime("usage-rater"),
    );
    let fanout = RunningProcessor::start(
        Fanout::new(
            FanoutSettings {
                rated_topic: t.rated.clone(),
                aggregates_topic: t.windows.clone(),
                routes: Routes {
                    billing: t.billing.clone(),
                    analytics: t.analytics.clone(),
                },
            },
            codec.clone(),
        ),
        &kafka,
        runtime("fanout"),
    );

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
    // One fact per rated line and one per window revision: both are one per distinct event.
    let analytics = consume_until(&kafka, &t.analytics, 2 * distinct_events, DEADLINE)
        .await
        .expect("analytics facts");
    for running in [fanout, rater, enricher] {
        running.stop(DEADLINE).await;
    }

    let mut billed: BTreeMap<String, i128> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for record in &billing {
        let charge: BillingCharge = codec
            .decode_as(
                record.value.as_deref().expect("value"),
                BillingCharge::schema(),
            )
            .await
            .expect("decode charge");
        assert!(
            ids.insert(charge.rating_id.clone()),
            "charge {} twice",
            charge.rating_id
        );
        *billed.entry(charge.subscription_id).or_default() += charge.amount.unscaled();
    }
    assert_eq!(
        billing.len(),
        distinct_events,
        "one charge per distinct event"
    );
    for (subscription, total) in &totals {
        let expected = price(
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
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for record in &analytics {
        let fact: AnalyticsFact = codec
            .decode_as(
                record.value.as_deref().expect("value"),
                AnalyticsFact::schema(),
            )
            .await
            .expect("decode fact");
        let kind = match fact.fact_type {
            FactType::RatedUsage => "rated",
            FactType::UsageWindow => "window",
            _ => "other",
        };
        *kinds.entry(kind.to_owned()).or_default() += 1;
    }
    assert_eq!(kinds.get("rated"), Some(&distinct_events));
    assert_eq!(kinds.get("window"), Some(&distinct_events));
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
    let kafka = shared_settings();
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
    let t = Topics {
        usage: unique_topic("usage.validated"),
        accounts: unique_topic("master.customer-accounts"),
        subscriptions: unique_topic("master.subscriptions"),
        rate_cards: unique_topic("master.rate-cards"),
        enriched: unique_topic("usage.enriched"),
        rated: unique_topic("usage.rated"),
        windows: unique_topic("usage.window-aggregates"),
        billing: unique_topic("billing.charges"),
        analytics: unique_topic("analytics.facts"),
    };
    for topic in [
        &raw,
        &t.usage,
        &t.accounts,
        &t.enriched,
        &t.rated,
        &t.windows,
    ] {
        create_topic(&kafka, topic, 3).await.expect("topic");
    }
    for topic in [&t.subscriptions, &t.rate_cards] {
        create_topic(&kafka, topic, 1).await.expect("topic");
    }
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
            },
            0,
        )
        .await
        .expect("workload");

    let validator = RunningProcessor::start(
        UsageValidator::new(
            ValidatorSettings {
                input_topic: raw.clone(),
                output_topic: t.usage.clone(),
                dedup: true,
            },
            codec.clone(),
        ),
        &kafka,
        runtime("usage-validator"),
    );
    let park_timeout = Duration::from_secs(3);
    let enricher = RunningProcessor::start(
        Enricher::new(
            EnricherSettings {
                usage_topic: t.usage.clone(),
                accounts_topic: t.accounts.clone(),
                subscriptions_topic: t.subscriptions.clone(),
                rate_cards_topic: t.rate_cards.clone(),
                output_topic: t.enriched.clone(),
                park_timeout,
            },
            codec.clone(),
        ),
        &kafka,
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
        &kafka,
        runtime("usage-rater"),
    );
    let fanout = RunningProcessor::start(
        Fanout::new(
            FanoutSettings {
                rated_topic: t.rated.clone(),
                aggregates_topic: t.windows.clone(),
                routes: Routes {
                    billing: t.billing.clone(),
                    analytics: String::new(),
                },
            },
            codec.clone(),
        ),
        &kafka,
        runtime("fanout"),
    );

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

    let validated = validator.stop(DEADLINE).await;
    for running in [fanout, rater, enricher] {
        running.stop(DEADLINE).await;
    }
    assert_eq!(validated.duplicates as usize, expected.duplicates);

    let mut billed: BTreeMap<String, i128> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for record in &billing {
        let charge: BillingCharge = codec
            .decode_as(
                record.value.as_deref().expect("value"),
                BillingCharge::schema(),
            )
            .await
            .expect("decode charge");
        assert!(
            ids.insert(charge.rating_id.clone()),
            "charge {} twice",
            charge.rating_id
        );
        *billed.entry(charge.subscription_id).or_default() += charge.amount.unscaled();
    }
    assert_eq!(ids.len(), expected.billed_events);
    for (subscription, want) in &expected.subscriptions {
        let amount = billed.get(subscription).copied().unwrap_or(0);
        let want: i128 = want
            .amount
            .parse::<backbone_schemas::types::Amount>()
            .expect("amount")
            .unscaled();
        assert_eq!(amount, want, "{subscription}");
    }
}
