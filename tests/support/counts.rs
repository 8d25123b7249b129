//! Tally's outputs checked at the business identity: every event counted once, each account's
//! counts without gaps, whatever redeliveries repeated.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use backbone_core::KafkaSettings;
use backbone_testkit::{consume_while, ConsumedRecord, TestRecord};

const DEADLINE: Duration = Duration::from_secs(90);

/// Reads Tally's outputs until every one of `events` events has one, then checks them against
/// what a run without failures gives: per account the counts 1..n, each count for one event and
/// each event counted once. A redelivery may repeat an output (same event, same count); lost or
/// stale state would give one count to two events, an event two counts, or leave a gap.
pub async fn check_counts(kafka: &KafkaSettings, topic: &str, events: usize) {
    let outputs = consume_while(
        kafka,
        topic,
        DEADLINE,
        format!("a count for each of {events} events"),
        move |records| distinct(records).len() >= events,
    )
    .await
    .expect("outputs");
    let mut accounts: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    let mut counted: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for (key, value) in distinct(&outputs) {
        let account = String::from_utf8_lossy(key).into_owned();
        let value = String::from_utf8_lossy(value);
        let (event, count) = value.split_once(' ').expect("`<event> <count>`");
        let count: u64 = count.parse().expect("count");
        if let Some(previous) = accounts
            .entry(account.clone())
            .or_default()
            .insert(count, event.to_owned())
        {
            panic!("account {account}: count {count} given to {previous} and {event}");
        }
        if let Some(earlier) = counted.insert(event.to_owned(), (account.clone(), count)) {
            panic!("{event} counted twice: {earlier:?} and ({account}, {count})");
        }
    }
    for (account, counts) in &accounts {
        let expected: Vec<u64> = (1..=counts.len() as u64).collect();
        assert_eq!(
            counts.keys().copied().collect::<Vec<_>>(),
            expected,
            "account {account}: a gap in its counts"
        );
    }
    assert_eq!(counted.len(), events, "every event counted once");
}

pub fn distinct(records: &[ConsumedRecord]) -> BTreeSet<(&[u8], &[u8])> {
    records
        .iter()
        .map(|r| {
            (
                r.key.as_deref().unwrap_or_default(),
                r.value.as_deref().unwrap_or_default(),
            )
        })
        .collect()
}

/// `count` events from event number `from` over `accounts` accounts, every fifth sent twice.
pub fn events_with_repeats(from: usize, count: usize, accounts: usize) -> Vec<TestRecord> {
    (from..from + count)
        .flat_map(|i| {
            let event = TestRecord::new(format!("account-{}", i % accounts), format!("e-{i}"));
            let times = if i % 5 == 0 { 2 } else { 1 };
            std::iter::repeat_n(event, times)
        })
        .collect()
}
