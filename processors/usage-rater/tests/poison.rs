//! Bad enriched usage on the real broker and registry, beside `rating.rs`: each input the
//! rater cannot rate is dead-lettered under its reason (a tombstone, another contract's frame,
//! an event time in the future or at the end of time's range, a rate card in another currency
//! than the subscription, a quantity whose price exceeds the amount's precision), and a valid
//! event among them is rated. See docs/bad-inputs.md.

use std::collections::BTreeMap;

use backbone_testkit::{
    consume_until, dead_letter_reasons, produce, produce_tombstone, shared_settings, unique_group,
    RunningProcessor, TestRecord,
};
use backbone_usage_rater::UsageRater;

mod fixtures;

use fixtures::*;

#[tokio::test]
async fn each_kind_of_bad_enriched_usage_is_dead_lettered_under_its_reason() {
    let kafka = shared_settings();
    let RaterSetup {
        registry: _registry,
        codec,
        settings,
        card,
    } = rater_setup(&kafka, 1).await;
    // Plan `broken`'s card does not decode.
    produce(
        &kafka,
        &settings.rate_cards_topic,
        &[
            TestRecord::new("acme:pro:1", card.clone()),
            TestRecord::new("acme:broken:1", &b"not avro"[..]),
        ],
    )
    .await
    .expect("rate cards");

    let now = now_micros();
    let subject = format!("{}-value", settings.input_topic);
    produce_tombstone(
        &kafka,
        &settings.input_topic,
        Some(b"acme:sub-1".as_slice()),
        Some(0),
    )
    .await
    .expect("tombstone");
    let mut expected = BTreeMap::from([(0, "missing_value".to_owned())]);
    let mut records = vec![TestRecord::new("acme:sub-1", card)];
    expected.insert(1, "contract_violation".to_owned());
    let future = enriched("sub-1", "pro", "fonts", "future", "1", now + 2 * HOUR);
    let mut other_currency = enriched("sub-1", "pro", "fonts", "eur", "1", now - HOUR);
    other_currency.currency = "EUR".into();
    let end_of_time = enriched("sub-1", "pro", "fonts", "min", "1", i64::MIN);
    // The largest quantity the contract holds, priced at 6 per unit: more than the 12 whole
    // digits of an amount.
    let absurd = enriched(
        "sub-1",
        "pro",
        "fonts",
        "absurd",
        "999999999999999.999999999",
        now - HOUR,
    );
    let valid = enriched("sub-1", "pro", "fonts", "valid", "2", now - HOUR);
    let broken_card = enriched("sub-1", "broken", "fonts", "broken", "1", now - HOUR);
    for (event, reason) in [
        (broken_card, Some("invalid_rate_card")),
        (future, Some("in_future")),
        (other_currency, Some("currency_mismatch")),
        (end_of_time, Some("too_late")),
        (absurd, Some("rating_error")),
        (valid, None),
    ] {
        let offset = records.len() as i64 + 1;
        if let Some(reason) = reason {
            expected.insert(offset, reason.to_owned());
        }
        let bytes = codec
            .encode_contract(&subject, &event)
            .await
            .expect("encode");
        records.push(TestRecord::new("acme:sub-1", bytes));
    }
    produce(&kafka, &settings.input_topic, &records)
        .await
        .expect("events");

    let group = unique_group("usage-rater-poison");
    let runtime = runtime(&group, 1);
    let output = settings.output_topic.clone();
    let dlq = format!("{}.dlq", settings.input_topic);
    let rater = RunningProcessor::start(UsageRater::new(settings, codec.clone()), &kafka, runtime);
    let dead = consume_until(&kafka, &dlq, expected.len(), DEADLINE)
        .await
        .expect("dead letters");
    let rated = consume_until(&kafka, &output, 1, DEADLINE)
        .await
        .expect("the valid event rated");
    rater.stop(DEADLINE).await;

    let reasons = dead_letter_reasons(&dead);
    assert_eq!(reasons, expected);
    assert_eq!(rated.len(), 1, "only the valid event is rated");
}
