//! Sinks alone, each against a topic filled before it starts: the analytics sink loading
//! `AnalyticsFact`s into PostgreSQL, the billing sink creating charges and the CRM sink
//! upserting account snapshots in the sandbox (in-process, its default latency and the CRM's
//! rate limit), each with the baseline of the same run: the sink runtime's own pass-through
//! (the same sink's `accept`, every delivery confirmed without calling out). The billing sink's
//! charges are months old, so each is looked up before it is posted; then it runs again on live
//! usage (posted without a lookup), and while the API throttles, fails and loses answers, each
//! against its rate on the old charges.
//!
//! Rate: from the broker timestamps of the delivery results, between the 10 % and the 90 %
//! marks, so consumer-group joins and the last linger do not count.
//!
//! `make bench` runs it on its own stack. By hand, with a stack up:
//! `BACKBONE_TEST_BOOTSTRAP=127.0.0.1:9092 BACKBONE_TEST_REGISTRY_URL=http://user:pw@127.0.0.1:8081
//! BACKBONE_TEST_POSTGRES_URL=postgres://backbone:backbone@127.0.0.1:5432/backbone
//! cargo bench -p backbone-e2e --bench sink_rates`; `BACKBONE_BENCH_FACTS` sets the count (100,000).

#[path = "../support/sinks.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use backbone_analytics_sink::{AnalyticsSettings, AnalyticsSink};
use backbone_billing_sink::{BillingSettings, BillingSink};
use backbone_core::InputRecord;
use backbone_crm_sink::{CrmSettings, CrmSink};
use backbone_sandbox::{Faults, SandboxConfig, System};
use backbone_schemas::types::{
    AccountHealthSnapshot, AnalyticsFact, BillingCharge, Contract, Destination, FactType,
    HealthStatus,
};
use backbone_schemas::WireCodec;
use backbone_sink::http::JsonApi;
use backbone_sink::settings::split_password;
use backbone_sink::{
    Accepted, Delivery, DeliveryError, DestinationSettings, Outcome, Rejection, Sink, SinkContext,
    SinkSettings,
};
use backbone_testkit::{consume_until, shared_settings};
use support::{metadata, registry_url, RunningSink, Sandbox, SinkTopics};

/// A sink's `accept`, with deliveries confirmed on the spot.
struct PassThrough<S>(S);

impl<S: Sink + Sync> Sink for PassThrough<S> {
    type Payload = S::Payload;

    fn name(&self) -> &str {
        "pass-through"
    }

    fn destination(&self) -> Destination {
        self.0.destination()
    }

    fn input_topic(&self) -> &str {
        self.0.input_topic()
    }

    fn accept(
        &mut self,
        record: &InputRecord<'_>,
        context: &SinkContext<'_>,
    ) -> Result<Accepted<Self::Payload>, Rejection> {
        self.0.accept(record, context)
    }

    async fn deliver(
        &self,
        batch: &[&Delivery<Self::Payload>],
    ) -> Result<Vec<Outcome>, DeliveryError> {
        Ok(batch
            .iter()
            .map(|_| Outcome::Delivered { reference: None })
            .collect())
    }
}

fn fact(i: usize) -> AnalyticsFact {
    AnalyticsFact {
        metadata: metadata("bench", &format!("f-{i}@1"), "backbone.analytics.fact"),
        fact_id: format!("f-{i}"),
        fact_type: FactType::RatedUsage,
        source_revision: 1,
        event_time: 1_790_000_000_000_000,
        fact_date: 20_716,
        customer_id: format!("c-{}", i % 200),
        legal_entity_id: Some("le-eu".to_owned()),
        subscription_id: Some(format!("s-{}", i % 200)),
        product_id: None,
        charge_id: Some("api-calls".to_owned()),
        meter_id: Some("api_calls".to_owned()),
        quantity: Some("12".parse().expect("quantity")),
        amount: Some("1.25".parse().expect("amount")),
        currency: Some("EUR".to_owned()),
        attributes: HashMap::from([("region".to_owned(), "eu-west".to_owned())]),
    }
}

fn analytics(topics: &SinkTopics, schema: &str) -> AnalyticsSink {
    let url = std::env::var("BACKBONE_TEST_POSTGRES_URL")
        .expect("BACKBONE_TEST_POSTGRES_URL names the PostgreSQL server to load into");
    let (url, password) = split_password(&url);
    let destination = DestinationSettings {
        url,
        credential: password.unwrap_or_default(),
        ..DestinationSettings::default()
    };
    let settings = AnalyticsSettings {
        topic: topics.input.clone(),
        schema: schema.to_owned(),
    };
    AnalyticsSink::new(settings, &destination).expect("analytics sink")
}

/// Records per second the sink settled, between the 10 % and 90 % marks of its results.
async fn rate<S: Sink>(sink: S, topics: &SinkTopics, count: usize, batch_max: usize) -> f64 {
    let settings = SinkSettings {
        batch_max,
        ..topics.settings()
    };
    let running = RunningSink::start(sink, settings);
    let results = consume_until(
        &shared_settings(),
        &topics.results,
        count,
        Duration::from_secs(600),
    )
    .await
    .expect("a result per record");
    running.stop().await;
    let mut times: Vec<i64> = results.iter().filter_map(|r| r.timestamp_ms).collect();
    times.sort_unstable();
    let (low, high) = (times[count / 10], times[count * 9 / 10]);
    (count * 8 / 10) as f64 / ((high - low).max(1) as f64 / 1_000.0)
}

/// A topic of `count` records made by `record`, and the names of a second group on it for the
/// baseline, with results and ledger of its own.
async fn filled<T: Contract>(
    name: &str,
    codec: &WireCodec,
    count: usize,
    record: impl Fn(usize) -> (String, T),
) -> (SinkTopics, SinkTopics) {
    let topics = SinkTopics::create(name, 3).await;
    let records: Vec<(String, T, Option<i64>)> = (0..count)
        .map(|i| {
            let (key, value) = record(i);
            (key, value, None)
        })
        .collect();
    for chunk in records.chunks(10_000) {
        support::publish(codec, &topics.input, chunk).await;
    }
    let baseline = SinkTopics {
        results: format!("{}.pass-through-results", topics.input),
        group: format!("{}-pass-through", topics.group),
        ledger_dir: topics.ledger_dir.join("pass-through"),
        input: topics.input.clone(),
    };
    (topics, baseline)
}

fn report(sink: &str, count: usize, batch_max: usize, baseline: f64, measured: f64) {
    println!(
        "sinks/{sink}: {count} records, batches of {batch_max}: pass-through {baseline:.0}/s, \
         {sink}-sink {measured:.0}/s, ratio {:.2}",
        measured / baseline
    );
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("BACKBONE_BENCH_FACTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let codec = WireCodec::new(registry_url());

    let (topics, baseline_topics) = filled("bench-analytics", &codec, count, |i| {
        (format!("bench:f-{i}"), fact(i))
    })
    .await;
    let schema = format!("bench_{}", std::process::id());
    let baseline = rate(
        PassThrough(analytics(&topics, &schema)),
        &baseline_topics,
        count,
        500,
    )
    .await;
    let loaded = rate(analytics(&topics, &schema), &topics, count, 500).await;
    report("analytics", count, 500, baseline, loaded);

    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let records = 20_000;
    let (topics, baseline_topics) = filled("bench-billing", &codec, records, |i| {
        let charge = charge(i);
        (format!("bench:{}", charge.subscription_id), charge)
    })
    .await;
    let billing = |topic: &str| {
        let settings = BillingSettings {
            topic: topic.to_owned(),
            ..BillingSettings::default()
        };
        let destination = sandbox.destination();
        async move {
            BillingSink::new(
                settings,
                JsonApi::connect(&destination).await.expect("client"),
            )
        }
    };
    let batch = SinkSettings::default().batch_max;
    let baseline = rate(
        PassThrough(billing(&topics.input).await),
        &baseline_topics,
        records,
        batch,
    )
    .await;
    let billed = rate(billing(&topics.input).await, &topics, records, batch).await;
    report("billing", records, batch, baseline, billed);

    // The same sink on live usage: a charge whose usage occurred within `sink.lookup_after` is
    // posted without the lookup (the charges above are months old, so each is looked up
    // first); baseline: the rate just measured.
    let now = backbone_calendar::now_micros();
    let (topics, _) = filled("bench-billing-live", &codec, records, |i| {
        let mut charge = charge(2 * records + i);
        charge.metadata.occurred_at = now;
        (format!("bench:{}", charge.subscription_id), charge)
    })
    .await;
    let live = rate(billing(&topics.input).await, &topics, records, batch).await;
    println!(
        "sinks/billing on live usage, posted without a lookup: {records} records, {live:.0}/s, \
         ratio to old usage looked up first {:.2}",
        live / billed
    );

    // The same sink while the billing API throttles, fails and loses answers, as in the chaos
    // run's background; baseline: the rate without faults just measured.
    let faulted = 4_000;
    let (topics, _) = filled("bench-billing-faults", &codec, faulted, |i| {
        let charge = charge(records + i);
        (format!("bench:{}", charge.subscription_id), charge)
    })
    .await;
    sandbox
        .client
        .set_faults(
            System::Billing,
            &Faults {
                throttle_rate: 0.05,
                error_rate: 0.05,
                lost_response_rate: 0.05,
                retry_after_seconds: 1,
                ..Faults::default()
            },
        )
        .await
        .expect("faults");
    let through_faults = rate(billing(&topics.input).await, &topics, faulted, batch).await;
    sandbox
        .client
        .clear_faults(System::Billing)
        .await
        .expect("clear faults");
    println!(
        "sinks/billing with 5 % throttled (Retry-After 1 s), 5 % failed, 5 % answers lost: \
         {faulted} records, {through_faults:.0}/s, ratio to without faults {:.2}",
        through_faults / billed
    );

    let (topics, baseline_topics) = filled("bench-crm", &codec, records, |i| {
        let snapshot = snapshot(i);
        (format!("bench:{}", snapshot.customer_id), snapshot)
    })
    .await;
    let crm = |topic: &str| {
        let settings = CrmSettings {
            topic: topic.to_owned(),
            ..CrmSettings::default()
        };
        let destination = sandbox.destination();
        async move {
            CrmSink::new(
                settings,
                JsonApi::connect(&destination).await.expect("client"),
            )
        }
    };
    // As deployed (components.toml): the CRM takes 200 upserts a request.
    let baseline = rate(
        PassThrough(crm(&topics.input).await),
        &baseline_topics,
        records,
        200,
    )
    .await;
    let upserted = rate(crm(&topics.input).await, &topics, records, 200).await;
    report("crm", records, 200, baseline, upserted);
}

fn charge(i: usize) -> BillingCharge {
    support::api_charge("bench", format!("rt-bench-{i}"), i, 200, "EUR")
}

/// Snapshot `i`: 2,000 customers, each newer snapshot of one a later `as_of`.
fn snapshot(i: usize) -> AccountHealthSnapshot {
    let customer_id = format!("c-{}", i % 2_000);
    let as_of = 1_790_000_000_000_000 + i as i64;
    AccountHealthSnapshot {
        metadata: metadata(
            "bench",
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
        period_to_date_amount: "12.5".parse().expect("amount"),
        previous_period_amount: None,
        currency: "EUR".to_owned(),
        usage_change_percent: None,
        last_usage_at: Some(as_of),
    }
}
