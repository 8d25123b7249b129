//! The usage-rater on the real broker and registry: split usage adds up to the published
//! graduated price per subscription, duplicates are dropped, and late, unknown-plan and
//! unpriced-meter events land in the DLQ under their reasons.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use backbone_calendar::{day_of_micros, month_bounds, DAY_MICROS};
use backbone_core::RuntimeSettings;
use backbone_schemas::types::{
    Amount, ChargeModel, Contract, RatedUsage, RatingKind, UsageWindowAggregate,
};
use backbone_testkit::{
    consume_all, consume_until, produce, shared_settings, unique_group, RunningProcessor,
    TestRecord,
};
use backbone_usage_rater::UsageRater;

mod fixtures;

use fixtures::*;

#[tokio::test]
async fn split_usage_adds_up_to_the_price_of_the_total_and_bad_events_are_dead_lettered() {
    let kafka = shared_settings();
    let RaterSetup {
        registry: _registry,
        codec,
        settings,
        card,
    } = rater_setup(&kafka, 2).await;
    // Another tenant's plan and subscription carry the same ids.
    produce(
        &kafka,
        &settings.rate_cards_topic,
        &[
            TestRecord::new("acme:pro:1", card.clone()),
            TestRecord::new("globex:pro:1", card),
        ],
    )
    .await
    .expect("rate cards");

    let now = now_micros();
    let subject = format!("{}-value", settings.input_topic);
    let mut events = Vec::new();
    // sub-1: 15 fonts in five events, one of them sent twice: 35 + 32.50 + 30 = 97.50.
    for (i, quantity) in ["2", "3", "1", "4", "5"].into_iter().enumerate() {
        events.push(enriched(
            "sub-1",
            "pro",
            "fonts",
            &format!("s1-{i}"),
            quantity,
            now - HOUR,
        ));
    }
    events.push(enriched("sub-1", "pro", "fonts", "s1-3", "4", now - HOUR));
    // sub-2: 6 fonts in three events, the last one earlier in time: 35 + 6.50 = 41.50.
    for (i, (quantity, at)) in [("1", now - HOUR), ("2", now - HOUR), ("3", now - 2 * HOUR)]
        .into_iter()
        .enumerate()
    {
        events.push(enriched(
            "sub-2",
            "pro",
            "fonts",
            &format!("s2-{i}"),
            quantity,
            at,
        ));
    }
    // Dead letters: 40 days late, a plan without a rate card, a meter the plan does not price.
    events.push(enriched(
        "sub-3",
        "pro",
        "fonts",
        "late",
        "1",
        now - 40 * 24 * HOUR,
    ));
    events.push(enriched(
        "sub-3",
        "basic",
        "fonts",
        "no-card",
        "1",
        now - HOUR,
    ));
    events.push(enriched(
        "sub-3",
        "pro",
        "storage",
        "no-charge",
        "1",
        now - HOUR,
    ));
    // globex's sub-1: 8 fonts in two events, rated apart from acme's sub-1: 35 + 19.50.
    for (i, quantity) in ["4", "4"].into_iter().enumerate() {
        let mut event = enriched(
            "sub-1",
            "pro",
            "fonts",
            &format!("g-{i}"),
            quantity,
            now - HOUR,
        );
        event.metadata.tenant_id = "globex".into();
        event.usage.metadata.tenant_id = "globex".into();
        events.push(event);
    }
    let mut records = Vec::new();
    for event in &events {
        let bytes = codec
            .encode_contract(&subject, event)
            .await
            .expect("encode");
        // One partition for all: both tenants' sub-1 share a partition's state.
        records.push(TestRecord {
            partition: Some(0),
            ..TestRecord::new(
                format!("{}:{}", event.metadata.tenant_id, event.subscription_id),
                bytes,
            )
        });
    }
    produce(&kafka, &settings.input_topic, &records)
        .await
        .expect("events");

    let group = unique_group("usage-rater");
    let runtime = RuntimeSettings {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..runtime(&group, 2)
    };
    let output = settings.output_topic.clone();
    let dlq = format!("{}.dlq", settings.input_topic);
    let aggregates = settings.aggregates_topic.clone();
    let rater = RunningProcessor::start(UsageRater::new(settings, codec.clone()), &kafka, runtime);

    let rated = consume_until(&kafka, &output, 10, DEADLINE)
        .await
        .expect("rated lines");
    let dead = consume_until(&kafka, &dlq, 3, DEADLINE)
        .await
        .expect("dead letters");
    let summary = rater.stop(DEADLINE).await;
    // Stopped, so every window revision it will write is out: read to the topic's end.
    let windows = consume_all(&kafka, &aggregates, DEADLINE)
        .await
        .expect("window aggregates");
    assert_eq!(summary.duplicates, 1);

    let mut lines: BTreeMap<String, Vec<RatedUsage>> = BTreeMap::new();
    for record in &rated {
        let line: RatedUsage = codec
            .decode_as(
                record.value.as_deref().expect("value"),
                RatedUsage::schema(),
            )
            .await
            .expect("decode");
        let tenant = line.metadata.tenant_id.clone();
        lines
            .entry(format!("{tenant}/{}", line.subscription_id))
            .or_default()
            .push(line);
    }
    assert_eq!(rated.len(), 10, "one line per distinct event");
    let total = |subscription: &str| -> Amount {
        lines[subscription].iter().fold(Amount::ZERO, |sum, l| {
            sum.checked_add(l.delta_amount).expect("sum")
        })
    };
    assert_eq!(total("acme/sub-1"), "97.5".parse().expect("amount"));
    assert_eq!(total("acme/sub-2"), "41.5".parse().expect("amount"));
    assert_eq!(total("globex/sub-1"), "54.5".parse().expect("amount"));
    for (subscription, lines) in &lines {
        let revisions: BTreeSet<i64> = lines.iter().map(|l| l.revision).collect();
        let expected: BTreeSet<i64> = (1..=lines.len() as i64).collect();
        assert_eq!(revisions, expected, "{subscription}: revisions");
        let ids: BTreeSet<&str> = lines.iter().map(|l| l.rating_id.as_str()).collect();
        assert_eq!(
            ids.len(),
            lines.len(),
            "{subscription}: distinct rating ids"
        );
    }
    assert!(
        lines["acme/sub-2"]
            .iter()
            .any(|l| l.kind == RatingKind::Restatement),
        "the earlier-in-time event restates"
    );

    let reasons: BTreeSet<String> = dead
        .iter()
        .filter_map(|r| r.header("backbone.dlq.reason"))
        .collect();
    let expected: BTreeSet<String> = ["too_late", "retries_exhausted", "unknown_meter"]
        .map(str::to_owned)
        .into();
    assert_eq!(reasons, expected);
    // Four windows: acme's sub-1 (five events), sub-2's two hours (two events and one),
    // globex's sub-1 (two). Each record is keyed by its window; the newest of each key counts
    // every event of the window, however many revisions a batch left out.
    let mut newest: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for record in &windows {
        let window: UsageWindowAggregate = codec
            .decode_as(
                record.value.as_deref().expect("value"),
                UsageWindowAggregate::schema(),
            )
            .await
            .expect("decode");
        let key = String::from_utf8(record.key.clone().expect("key")).expect("text");
        assert_eq!(
            key,
            format!("{}:{}", window.metadata.tenant_id, window.aggregate_id)
        );
        let seen = newest.entry(key).or_insert((0, 0));
        assert!(window.revision > seen.0, "revisions of a window in order");
        *seen = (window.revision, window.event_count);
    }
    let mut counts: Vec<i64> = newest.values().map(|(_, events)| *events).collect();
    counts.sort_unstable();
    assert_eq!(counts, [1, 2, 2, 5], "{newest:?}");
}

/// A price change published ahead of its start: version 2 of plan `pro` (unit price 10) takes
/// effect with the current month while version 1 (graduated, 7 for the first five) is still
/// open-ended. Last month's usage is priced by version 1 and this month's by version 2, each
/// line naming the version that priced it.
#[tokio::test]
async fn a_price_change_prices_only_the_periods_from_its_start() {
    let kafka = shared_settings();
    let RaterSetup {
        registry: _registry,
        codec,
        settings,
        card,
    } = rater_setup(&kafka, 1).await;
    let now = now_micros();
    let (this_month, next_month) = month_bounds(day_of_micros(now));
    let (last_month, _) = month_bounds(this_month - 1);
    let mut change = rate_card();
    change.version = 2;
    change.effective_from = this_month;
    change.charges[0].charge_model = ChargeModel::Unit;
    change.charges[0].unit_price = Some("10".parse().expect("price"));
    change.charges[0].tiers.clear();
    let change = codec
        .encode_contract(&format!("{}-value", settings.rate_cards_topic), &change)
        .await
        .expect("encode card");
    produce(
        &kafka,
        &settings.rate_cards_topic,
        &[
            TestRecord::new("acme:pro:2", change),
            TestRecord::new("acme:pro:1", card),
        ],
    )
    .await
    .expect("rate cards");

    let mut before = enriched(
        "sub-old",
        "pro",
        "fonts",
        "before",
        "2",
        i64::from(this_month) * DAY_MICROS - HOUR,
    );
    (before.billing_period_start, before.billing_period_end) = (last_month, this_month);
    let mut after = enriched("sub-new", "pro", "fonts", "after", "2", now - HOUR);
    (after.billing_period_start, after.billing_period_end) = (this_month, next_month);
    let subject = format!("{}-value", settings.input_topic);
    let mut records = Vec::new();
    for event in [&before, &after] {
        let bytes = codec
            .encode_contract(&subject, event)
            .await
            .expect("encode");
        records.push(TestRecord::new(
            format!("acme:{}", event.subscription_id),
            bytes,
        ));
    }
    produce(&kafka, &settings.input_topic, &records)
        .await
        .expect("events");

    let group = unique_group("usage-rater-versions");
    let output = settings.output_topic.clone();
    let rater = RunningProcessor::start(
        UsageRater::new(settings, codec.clone()),
        &kafka,
        runtime(&group, 1),
    );
    let rated = consume_until(&kafka, &output, 2, DEADLINE)
        .await
        .expect("rated lines");
    rater.stop(DEADLINE).await;
    let amount = |text: &str| -> Amount { text.parse().expect("amount") };
    let mut priced = BTreeMap::new();
    for record in &rated {
        let line: RatedUsage = codec
            .decode_as(
                record.value.as_deref().expect("value"),
                RatedUsage::schema(),
            )
            .await
            .expect("decode");
        priced.insert(
            line.subscription_id.clone(),
            (line.rate_card_version, line.delta_amount),
        );
    }
    assert_eq!(
        priced,
        BTreeMap::from([
            ("sub-new".to_owned(), (2, amount("20"))),
            ("sub-old".to_owned(), (1, amount("14"))),
        ])
    );
}
