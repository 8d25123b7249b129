//! The enricher on the real broker and registry: usage with its master data is enriched at once,
//! usage whose account has not arrived is parked and released in order when it does, and usage
//! that waits longer than the park timeout is dead-lettered as `unknown_account` or
//! `unknown_subscription`. Usage parked for its subscription is released when the subscription
//! arrives, with no later input to trigger it, whether the enricher was running or restarted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backbone_core::RuntimeSettings;
use backbone_enricher::{Enricher, EnricherSettings};
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::types::{Contract, EnrichedUsage, UsageEvent};
use backbone_schemas::WireCodec;
use backbone_testkit::{
    committed_offsets, consume_until, consume_while, create_topic, end_offsets_total, produce,
    produce_tombstone, shared_settings, unique_group, unique_topic, ConsumedRecord,
    RunningProcessor, TestRecord,
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
            ..EnricherSettings::default()
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
        self.start_as(&unique_group("enricher"))
    }

    /// An enricher in consumer group `group`, with that group's state directory: starting
    /// one again in the same group is a restart.
    fn start_as(&self, group: &str) -> RunningProcessor {
        let mut runtime = RuntimeSettings {
            group_id: Some(group.to_owned()),
            topic_partitions: 2,
            ..RuntimeSettings::default()
        };
        runtime.state.dir = std::env::temp_dir().join("backbone-state").join(group);
        RunningProcessor::start(
            Enricher::new(self.settings.clone(), self.codec.clone()),
            &self.kafka,
            runtime,
        )
    }

    /// Waits until `group` has committed `count` usage records: each was processed, and one
    /// that gave no output was parked.
    async fn committed(&self, group: &str, count: i64) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let committed: i64 = committed_offsets(&self.kafka, group, &self.settings.usage_topic)
                .expect("committed offsets")
                .into_iter()
                .filter_map(|(_, offset)| offset)
                .sum();
            if committed >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{group} committed {committed} of {count} usage records"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

#[tokio::test]
async fn events_parked_for_their_subscription_are_released_when_it_arrives() {
    let fixture = Fixture::new(Duration::from_secs(3600)).await;
    let s = &fixture.settings;
    for customer in ["c-1", "c-2"] {
        fixture
            .publish(
                &s.accounts_topic,
                &format!("acme:{customer}"),
                &account(customer),
            )
            .await;
    }
    fixture
        .publish_usage(&usage("early-1", "c-1", "sub-1"))
        .await;
    let group = unique_group("enricher");
    let enricher = fixture.start_as(&group);
    fixture.committed(&group, 1).await;

    // The subscription arrives through the global table; nothing more comes on the usage or
    // account topics.
    fixture
        .publish(
            &s.subscriptions_topic,
            "acme:sub-1",
            &subscription("sub-1", "c-1"),
        )
        .await;
    let released = consume_until(&fixture.kafka, &s.output_topic, 1, DEADLINE)
        .await
        .expect("released once its subscription arrived");
    assert_eq!(fixture.enriched(&released).await["sub-1"], vec!["early-1"]);

    // Parked, then the enricher stops; the subscription arrives while it is down, and no input
    // follows its restart.
    fixture
        .publish_usage(&usage("early-2", "c-2", "sub-2"))
        .await;
    fixture.committed(&group, 2).await;
    enricher.stop(DEADLINE).await;
    fixture
        .publish(
            &s.subscriptions_topic,
            "acme:sub-2",
            &subscription("sub-2", "c-2"),
        )
        .await;
    let enricher = fixture.start_as(&group);
    let all = consume_until(&fixture.kafka, &s.output_topic, 2, DEADLINE)
        .await
        .expect("released after the restart");
    let enriched = fixture.enriched(&all).await;
    assert_eq!(enriched["sub-2"], vec!["early-2"]);
    enricher.stop(DEADLINE).await;
}

#[tokio::test]
async fn a_backlog_longer_than_the_park_timeout_does_not_expire_events_whose_account_comes_later() {
    let fixture = Fixture::new(Duration::from_secs(30)).await;
    let s = &fixture.settings;
    fixture
        .publish(
            &s.subscriptions_topic,
            "acme:sub-1",
            &subscription("sub-1", "c-1"),
        )
        .await;
    // A backlog whose record times span two park timeouts, read before the account: by stream
    // time alone the first event would expire as the second is processed.
    let start = now_micros() / 1000 - 120_000;
    let mut backlog = Vec::new();
    for (i, offset_ms) in [0, 60_000, 120_000].into_iter().enumerate() {
        let bytes = fixture
            .codec
            .encode_contract(
                &format!("{}-value", s.usage_topic),
                &usage(&format!("backlog-{i}"), "c-1", "sub-1"),
            )
            .await
            .expect("encode");
        backlog.push(TestRecord {
            timestamp_ms: Some(start + offset_ms),
            ..TestRecord::new("acme:c-1", bytes)
        });
    }
    produce(&fixture.kafka, &s.usage_topic, &backlog)
        .await
        .expect("backlog");
    let group = unique_group("enricher");
    let enricher = fixture.start_as(&group);
    fixture.committed(&group, 3).await;

    fixture
        .publish(&s.accounts_topic, "acme:c-1", &account("c-1"))
        .await;
    let released = consume_until(&fixture.kafka, &s.output_topic, 3, DEADLINE)
        .await
        .expect("all three released");
    assert_eq!(
        fixture.enriched(&released).await["sub-1"],
        vec!["backlog-0", "backlog-1", "backlog-2"]
    );
    let dlq = format!("{}.dlq", s.usage_topic);
    assert_eq!(
        end_offsets_total(&fixture.kafka, &dlq).unwrap_or(0),
        0,
        "nothing dead-lettered"
    );
    enricher.stop(DEADLINE).await;
}

#[tokio::test]
async fn usage_of_a_deleted_account_waits_for_it_then_is_dead_lettered() {
    let fixture = Fixture::new(Duration::from_secs(3)).await;
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
    fixture
        .publish_usage(&usage("before", "c-1", "sub-1"))
        .await;
    let enricher = fixture.start();
    consume_until(&fixture.kafka, &s.output_topic, 1, DEADLINE)
        .await
        .expect("enriched while the account exists");

    // The account is deleted (a tombstone on its compacted topic); later usage of it waits for
    // an account like any unknown customer's, then goes to the DLQ.
    produce_tombstone(
        &fixture.kafka,
        &s.accounts_topic,
        Some(b"acme:c-1".as_slice()),
        None,
    )
    .await
    .expect("tombstone");
    fixture.publish_usage(&usage("after", "c-1", "sub-1")).await;
    let dlq = format!("{}.dlq", s.usage_topic);
    let tick = fixture
        .codec
        .encode_contract(&format!("{}-value", s.accounts_topic), &account("tick"))
        .await
        .expect("encode");
    let mut rounds = 0;
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
        rounds += 1;
        if let Ok(dead) = consume_while(
            &fixture.kafka,
            &dlq,
            Duration::from_secs(2),
            "the event after the deletion dead-lettered".to_owned(),
            |records| !records.is_empty(),
        )
        .await
        {
            break dead;
        }
        assert!(
            rounds < 30,
            "the event of the deleted account never expired"
        );
    };
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].header("backbone.dlq.reason").as_deref(),
        Some("unknown_account")
    );
    let after: UsageEvent = fixture
        .codec
        .decode_as(
            dead[0].value.as_deref().expect("value"),
            UsageEvent::schema(),
        )
        .await
        .expect("the event as it came in");
    assert_eq!(after.metadata.event_id, "after");
    enricher.stop(DEADLINE).await;
}
