//! The enricher on the real broker and registry: usage with its master data is enriched at once,
//! usage whose account has not arrived is parked and released in order when it does, and usage
//! that waits longer than the park timeout is dead-lettered as `unknown_account` or
//! `unknown_subscription`. Usage parked for its subscription is released when the subscription
//! arrives, with no later input to trigger it, whether the enricher was running or restarted.

use std::time::Duration;

use backbone_schemas::types::{Contract, UsageEvent};
use backbone_testkit::{
    consume_until, end_offsets_total, produce, produce_tombstone, unique_group, TestRecord,
};

mod fixtures;

use fixtures::*;

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
    let enricher = fixture.start();
    let dead = fixture.expire_parked(2).await;
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
    let dead = fixture.expire_parked(1).await;
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
