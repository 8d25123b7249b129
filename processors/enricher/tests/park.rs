//! The enricher on the real broker and registry: usage with its master data is enriched at once,
//! usage whose account has not arrived is parked and released in order when it does, and usage
//! that waits longer than the park timeout is dead-lettered as `unknown_account` or
//! `unknown_subscription`.

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_core::RuntimeSettings;
use backbone_enricher::{Enricher, EnricherSettings};
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::types::{Contract, EnrichedUsage, UsageEvent};
use backbone_schemas::WireCodec;
use backbone_testkit::{
    consume_until, consume_while, create_topic, produce, shared_settings, unique_group,
    unique_topic, ConsumedRecord, RunningProcessor, TestRecord,
};

mod fixtures;

use fixtures::*;

struct Fixture {
    kafka: backbone_core::KafkaSettings,
    codec: WireCodec,
    settings: EnricherSettings,
    _registry: LocalRegistry,
}

impl Fixture {
    async fn new(park_timeout: Duration) -> Self {
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
            park_timeout,
        };
        for (topic, partitions) in [
            (&settings.usage_topic, 2),
            (&settings.accounts_topic, 2),
            (&settings.subscriptions_topic, 1),
            (&settings.rate_cards_topic, 1),
        ] {
            create_topic(&kafka, topic, partitions)
                .await
                .expect("topic");
        }
        Self {
            kafka,
            codec,
            settings,
            _registry: registry,
        }
    }

    async fn publish<T: Contract>(&self, topic: &str, key: &str, value: &T) {
        let bytes = self
            .codec
            .encode_contract(&format!("{topic}-value"), value)
            .await
            .expect("encode");
        produce(&self.kafka, topic, &[TestRecord::new(key, bytes)])
            .await
            .expect("produce");
    }

    async fn publish_usage(&self, event: &UsageEvent) {
        let key = format!("acme:{}", event.customer_id);
        self.publish(&self.settings.usage_topic, &key, event).await;
    }

    fn start(&self) -> RunningProcessor {
        let group = unique_group("enricher");
        let mut runtime = RuntimeSettings {
            group_id: Some(group.clone()),
            topic_partitions: 2,
            ..RuntimeSettings::default()
        };
        runtime.state.dir = std::env::temp_dir().join("backbone-state").join(&group);
        RunningProcessor::start(
            Enricher::new(self.settings.clone(), self.codec.clone()),
            &self.kafka,
            runtime,
        )
    }

    /// Enriched events by subscription, event ids in output order.
    async fn enriched(&self, records: &[ConsumedRecord]) -> BTreeMap<String, Vec<String>> {
        let mut by_subscription: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for record in records {
            let event: EnrichedUsage = self
                .codec
                .decode_as(
                    record.value.as_deref().expect("value"),
                    EnrichedUsage::schema(),
                )
                .await
                .expect("decode");
            let day = event.usage.metadata.occurred_at.div_euclid(86_400_000_000) as i32;
            assert!(
                event.billing_period_start <= day && day < event.billing_period_end,
                "the period holds the event"
            );
            by_subscription
                .entry(event.subscription_id.clone())
                .or_default()
                .push(event.usage.metadata.event_id.clone());
        }
        by_subscription
    }
}

#[tokio::test]
async fn events_wait_for_their_account_and_are_released_in_order() {
    let fixture = Fixture::new(Duration::from_secs(3600)).await;
    let s = &fixture.settings;
    fixture
        .publish(
            &s.subscriptions_topic,
            "acme:sub-1",
            &subscription("sub-1", "c-1"),
        )
        .await;
    fixture
        .publish(
            &s.subscriptions_topic,
            "acme:sub-2",
            &subscription("sub-2", "c-2"),
        )
        .await;
    fixture
        .publish(&s.accounts_topic, "acme:c-1", &account("c-1"))
        .await;
    for i in 0..3 {
        fixture
            .publish_usage(&usage(&format!("c1-{i}"), "c-1", "sub-1"))
            .await;
    }
    // c-2's account has not arrived: its events park.
    for i in 0..3 {
        fixture
            .publish_usage(&usage(&format!("c2-{i}"), "c-2", "sub-2"))
            .await;
    }
    let enricher = fixture.start();
    let first = consume_until(&fixture.kafka, &s.output_topic, 3, DEADLINE)
        .await
        .expect("c-1 enriched");
    let enriched = fixture.enriched(&first).await;
    assert_eq!(enriched["sub-1"], vec!["c1-0", "c1-1", "c1-2"]);
    assert!(!enriched.contains_key("sub-2"), "c-2 has no account yet");

    // The account arrives: the parked events come out, in the order they came in.
    fixture
        .publish(&s.accounts_topic, "acme:c-2", &account("c-2"))
        .await;
    let all = consume_until(&fixture.kafka, &s.output_topic, 6, DEADLINE)
        .await
        .expect("c-2 released");
    let enriched = fixture.enriched(&all).await;
    assert_eq!(enriched["sub-2"], vec!["c2-0", "c2-1", "c2-2"]);
    assert_eq!(all.len(), 6);
    enricher.stop(DEADLINE).await;
}

#[tokio::test]
async fn events_that_wait_too_long_are_dead_lettered_with_the_reason() {
    let fixture = Fixture::new(Duration::from_millis(1)).await;
    let s = &fixture.settings;
    fixture
        .publish(
            &s.subscriptions_topic,
            "acme:sub-1",
            &subscription("sub-1", "c-1"),
        )
        .await;
    fixture
        .publish(&s.accounts_topic, "acme:c-1", &account("c-1"))
        .await;
    // No account for c-9; no subscription sub-missing for c-1.
    fixture
        .publish_usage(&usage("no-account", "c-9", "sub-9"))
        .await;
    fixture
        .publish_usage(&usage("no-subscription", "c-1", "sub-missing"))
        .await;
    let dlq = format!("{}.dlq", s.usage_topic);
    let enricher = fixture.start();
    // Later records move each partition's time past the timeout: an account update on both
    // partitions, again until both parked events expired.
    let tick = fixture
        .codec
        .encode_contract(&format!("{}-value", s.accounts_topic), &account("tick"))
        .await
        .expect("encode");
    let mut i = 0;
    let dead = loop {
        let ticks: Vec<TestRecord> = (0..2)
            .map(|partition| TestRecord {
                partition: Some(partition),
                ..TestRecord::new("acme:tick", tick.clone())
            })
            .collect();
        produce(&fixture.kafka, &s.accounts_topic, &ticks)
            .await
            .expect("ticks");
        i += 1;
        let dead = consume_while(
            &fixture.kafka,
            &dlq,
            Duration::from_secs(2),
            "both parked events dead-lettered".to_owned(),
            |records| records.len() >= 2,
        )
        .await;
        if let Ok(dead) = dead {
            break dead;
        }
        assert!(i < 30, "parked events never expired");
    };
    let mut reasons: Vec<String> = dead
        .iter()
        .filter_map(|r| r.header("backbone.dlq.reason"))
        .collect();
    reasons.sort();
    assert_eq!(reasons, vec!["unknown_account", "unknown_subscription"]);
    // Byte for byte: the dead letter holds the input as published.
    for letter in &dead {
        let event: UsageEvent = fixture
            .codec
            .decode_as(
                letter.value.as_deref().expect("value"),
                UsageEvent::schema(),
            )
            .await
            .expect("the original usage event");
        assert!(["no-account", "no-subscription"].contains(&event.metadata.event_id.as_str()));
    }
    enricher.stop(DEADLINE).await;
}
