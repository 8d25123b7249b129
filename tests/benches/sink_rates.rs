//! Sinks alone, each against a topic filled before it starts: the analytics sink loading
//! `AnalyticsFact`s into PostgreSQL, and as the baseline of the same run the sink runtime's
//! own pass-through (the same sink's `accept`, every delivery confirmed without calling out).
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
use backbone_core::InputRecord;
use backbone_schemas::types::{AnalyticsFact, Destination, FactType};
use backbone_schemas::WireCodec;
use backbone_sink::settings::split_password;
use backbone_sink::{
    Accepted, Delivery, DeliveryError, DestinationSettings, Outcome, Rejection, Sink, SinkContext,
    SinkSettings,
};
use backbone_testkit::{consume_until, shared_settings};
use support::{metadata, registry_url, RunningSink, SinkTopics};

/// The analytics sink's `accept`, with deliveries confirmed on the spot.
struct PassThrough(AnalyticsSink);

impl Sink for PassThrough {
    type Payload = <AnalyticsSink as Sink>::Payload;

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

/// Facts per second the sink settled, between the 10 % and 90 % marks of its results.
async fn rate<S: Sink>(sink: S, topics: &SinkTopics, count: usize) -> f64 {
    let settings = SinkSettings {
        batch_max: 500,
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
    .expect("a result per fact");
    running.stop().await;
    let mut times: Vec<i64> = results.iter().filter_map(|r| r.timestamp_ms).collect();
    times.sort_unstable();
    let (low, high) = (times[count / 10], times[count * 9 / 10]);
    (count * 8 / 10) as f64 / ((high - low).max(1) as f64 / 1_000.0)
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("BACKBONE_BENCH_FACTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let codec = WireCodec::new(registry_url());
    let input = SinkTopics::create("bench-analytics", 3).await;
    let facts: Vec<(String, AnalyticsFact, Option<i64>)> = (0..count)
        .map(|i| (format!("bench:f-{i}"), fact(i), None))
        .collect();
    for chunk in facts.chunks(10_000) {
        support::publish(&codec, &input.input, chunk).await;
    }
    // Two groups on the same filled topic, each writing its results apart.
    let baseline_topics = SinkTopics {
        results: format!("{}.pass-through-results", input.input),
        group: format!("{}-pass-through", input.group),
        ledger_dir: input.ledger_dir.join("pass-through"),
        input: input.input.clone(),
    };
    let schema = format!("bench_{}", std::process::id());
    let baseline = rate(
        PassThrough(analytics(&input, &schema)),
        &baseline_topics,
        count,
    )
    .await;
    let loaded = rate(analytics(&input, &schema), &input, count).await;
    println!(
        "sinks/analytics: {count} facts, batches of 500: pass-through {baseline:.0} facts/s, \
         analytics-sink into PostgreSQL {loaded:.0} facts/s, ratio {:.2}",
        loaded / baseline
    );
}
