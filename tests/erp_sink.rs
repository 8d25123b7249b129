//! The ERP sink against the sandbox: postings become balanced journal batches whose control
//! totals match the postings they came from; a late posting becomes an adjustment; a batch for
//! a closed period is dead-lettered with the ERP's answer; a replay posts nothing twice; the
//! ERP is asked before each batch, so a lost answer, a lost disk or a partition moved to
//! another instance posts nothing twice and never reuses a posted batch's id. Every batch the
//! ERP holds is announced as a `JournalBatch` as it was posted, the lost answer's too.

#[path = "support/sinks.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_calendar::days_from_civil;
use backbone_calendar::now_ms;
use backbone_erp_sink::{ErpSettings, ErpSink};
use backbone_sandbox::{Faults, PostedBatch, SandboxConfig, System};
use backbone_schemas::types::DeliveryOutcome;
use backbone_schemas::types::{Amount, JournalBatch, LedgerPosting, PostingLine};
use backbone_schemas::WireCodec;
use backbone_sink::http::JsonApi;
use backbone_sink::{SinkSettings, DESTINATION_REJECTED};
use backbone_testkit::{consume_until, dead_letter_reasons, shared_settings};
use support::{
    eventually, metadata, publish, read_all, registry_url, results, RunningSink, Sandbox,
    SinkTopics,
};

const DEADLINE: Duration = Duration::from_secs(120);

fn amount(text: &str) -> Amount {
    text.parse().expect("amount")
}

/// A posting of `value` (receivable against revenue) for `entity` in `currency`, in the
/// accounting month `year-month`.
fn posting(
    i: usize,
    entity: &str,
    currency: &str,
    value: &str,
    (year, month): (i64, u32),
) -> LedgerPosting {
    let a = amount(value);
    let (debit, credit) = if a >= Amount::ZERO {
        (a, Amount::ZERO)
    } else {
        (Amount::ZERO, amount(&value[1..]))
    };
    let line = |n: i32, account: &str, debit: Amount, credit: Amount| PostingLine {
        line_number: n,
        gl_account: account.to_owned(),
        debit,
        credit,
        currency: currency.to_owned(),
        description: format!("usage {i}"),
        source_rating_id: None,
        customer_id: None,
    };
    let rating_id = format!("rt-{entity}-{i:04}");
    let next = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    LedgerPosting {
        metadata: metadata("acme", &rating_id, "backbone.erp.ledger_posting"),
        rating_id,
        legal_entity_id: entity.to_owned(),
        customer_id: format!("c-{}", i % 5),
        subscription_id: format!("s-{}", i % 5),
        charge_id: "api-calls".to_owned(),
        mapping_id: "default".to_owned(),
        posting_date: days_from_civil(year, month, 15),
        period_start: days_from_civil(year, month, 1),
        period_end: days_from_civil(next.0, next.1, 1) - 1,
        currency: currency.to_owned(),
        amount: a,
        lines: vec![
            line(1, "1200-receivables", debit, credit),
            line(2, "4000-revenue", credit, debit),
        ],
    }
}

/// Where the sink reading `input` announces its batches.
fn journal_topic(input: &str) -> String {
    format!("{input}-journal-batches")
}

async fn erp_sink(topic: &str, sandbox: &Sandbox) -> ErpSink {
    erp_sink_with(topic, sandbox, ErpSettings::default().max_batch_postings).await
}

/// [`erp_sink`] with batches of at most `max_batch_postings` postings.
async fn erp_sink_with(topic: &str, sandbox: &Sandbox, max_batch_postings: usize) -> ErpSink {
    let settings = ErpSettings {
        max_batch_postings,
        topic: topic.to_owned(),
        window: Duration::from_secs(2),
        grace: Duration::from_secs(1),
        outbox_dir: None,
        journal_batches_topic: journal_topic(topic),
        ..ErpSettings::default()
    };
    ErpSink::new(
        settings,
        JsonApi::connect(&sandbox.destination())
            .await
            .expect("ERP client"),
    )
    .expect("settings")
}

/// Sum of `text` decimals as unscaled micro-units.
fn micros(text: &str) -> i128 {
    let a: Amount = text.parse().expect("decimal");
    a.unscaled()
}

/// Checks every batch balances per currency and its control totals match its lines.
fn check_balanced(batches: &[PostedBatch]) {
    for batch in batches {
        let mut per_currency: BTreeMap<&str, (u64, i128, i128)> = BTreeMap::new();
        for line in &batch.lines {
            let entry = per_currency.entry(line.currency.as_str()).or_default();
            entry.0 += 1;
            entry.1 += micros(&line.debit);
            entry.2 += micros(&line.credit);
        }
        for (currency, (count, debits, credits)) in &per_currency {
            assert_eq!(
                debits, credits,
                "batch {} balances in {currency}",
                batch.external_id
            );
            let total = batch
                .control_totals
                .iter()
                .find(|t| t.currency == *currency)
                .expect("a control total per currency");
            assert_eq!(total.line_count, *count);
            assert_eq!(micros(&total.total_debits), *debits);
            assert_eq!(micros(&total.total_credits), *credits);
        }
    }
}

/// Receivables posted per legal entity and currency (debits minus credits on 1200).
fn receivables(batches: &[PostedBatch]) -> BTreeMap<(String, String), i128> {
    let mut totals = BTreeMap::new();
    for batch in batches {
        for line in batch
            .lines
            .iter()
            .filter(|l| l.gl_account.starts_with("1200"))
        {
            *totals
                .entry((batch.legal_entity_id.clone(), line.currency.clone()))
                .or_default() += micros(&line.debit) - micros(&line.credit);
        }
    }
    totals
}

/// A batch's kind and lines (account, debit, credit, reference), as the ERP and the
/// announcement both carry them.
type BatchShape = (String, Vec<(String, i128, i128, Option<String>)>);

/// Each batch the ERP holds is announced on the journal-batch topic of the sink reading
/// `input` as it was posted: every copy of a batch id alike, and no id the ERP lacks. Read to
/// the topic's end.
async fn assert_announced_as_held(codec: &WireCodec, input: &str, held: &[PostedBatch]) {
    let erp: BTreeMap<String, BatchShape> = held
        .iter()
        .map(|b| {
            let lines = b.lines.iter().map(|l| {
                let (debit, credit) = (micros(&l.debit), micros(&l.credit));
                (l.gl_account.clone(), debit, credit, l.reference.clone())
            });
            let shape = (format!("{:?}", b.batch_type), lines.collect());
            (b.external_id.clone(), shape)
        })
        .collect();
    let mut announced: BTreeMap<String, BatchShape> = BTreeMap::new();
    for batch in read_all::<JournalBatch>(codec, &journal_topic(input)).await {
        let lines = batch.lines.iter().map(|l| {
            let (debit, credit) = (l.debit.unscaled(), l.credit.unscaled());
            (
                l.gl_account.clone(),
                debit,
                credit,
                l.source_rating_id.clone(),
            )
        });
        let shape: BatchShape = (format!("{:?}", batch.batch_type), lines.collect());
        if let Some(earlier) = announced.insert(batch.batch_id.clone(), shape.clone()) {
            assert_eq!(
                earlier, shape,
                "batch {} announced again alike",
                batch.batch_id
            );
        }
    }
    assert_eq!(announced, erp, "the batches announced are the ERP's");
}

/// Every batch balances, and the ERP holds `euros` of receivables for `le-eu`, nothing else.
fn assert_le_eu_receivables(batches: &[PostedBatch], euros: &str, what: &str) {
    check_balanced(batches);
    let expected = BTreeMap::from([(("le-eu".to_owned(), "EUR".to_owned()), micros(euros))]);
    assert_eq!(receivables(batches), expected, "{what}");
}

#[tokio::test]
async fn postings_become_balanced_batches_then_adjustments_and_replays_post_nothing_twice() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    sandbox
        .client
        .close_period("2026-05")
        .await
        .expect("close May");
    let topics = SinkTopics::create("erp", 2).await;
    let codec = WireCodec::new(registry_url());
    let now = now_ms();
    let month = (2026, 11);
    let mut values = Vec::new();
    let mut expected: BTreeMap<(String, String), i128> = BTreeMap::new();
    for i in 0..30 {
        let (entity, currency) = if i % 3 == 0 {
            ("le-us", "USD")
        } else {
            ("le-eu", "EUR")
        };
        let value = if i % 7 == 6 {
            format!("-{i}.5")
        } else {
            format!("{i}.125")
        };
        let p = posting(i, entity, currency, &value, month);
        *expected
            .entry((entity.to_owned(), currency.to_owned()))
            .or_default() += p.amount.unscaled();
        values.push((format!("acme:{entity}"), p, Some(now)));
    }
    // A posting for a period the ERP has closed: the ERP refuses its batch.
    let closed = posting(99, "le-eu", "EUR", "7.000", (2026, 5));
    values.push(("acme:le-eu".to_owned(), closed.clone(), Some(now)));
    let records = publish(&codec, &topics.input, &values).await;

    let sink = RunningSink::start(erp_sink(&topics.input, &sandbox).await, topics.settings());
    results(&codec, &topics.results, values.len()).await;
    let batches = sandbox.client.batches().await.expect("batches");
    check_balanced(&batches);
    assert_eq!(
        receivables(&batches),
        expected,
        "the ERP holds what the postings add up to"
    );
    assert!(
        batches.iter().all(|b| b.period == "2026-11"),
        "the closed period posted nothing"
    );
    let lines: usize = batches.iter().map(|b| b.lines.len()).sum();
    assert_eq!(lines, 60, "two lines per posting, each posting once");
    let dlq = consume_until(
        &shared_settings(),
        &format!("{}.dlq", topics.input),
        1,
        DEADLINE,
    )
    .await
    .expect("the refused posting");
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].header("backbone.dlq.reason").as_deref(),
        Some(DESTINATION_REJECTED)
    );
    assert!(
        dlq[0]
            .header("backbone.dlq.message")
            .unwrap_or_default()
            .contains("period_closed"),
        "the ERP's answer travels with the dead letter"
    );

    // A posting that arrives for a window already posted becomes an adjustment batch that
    // references the regular one.
    let regular = batches
        .iter()
        .find(|b| b.legal_entity_id == "le-eu" && b.adjusts.is_none())
        .expect("a regular le-eu batch")
        .clone();
    let late = posting(200, "le-eu", "EUR", "3.5", month);
    publish(
        &codec,
        &topics.input,
        &[("acme:le-eu".to_owned(), late, Some(now))],
    )
    .await;
    let adjustment = eventually(DEADLINE, "the adjustment batch", || async {
        let batches = sandbox.client.batches().await.expect("batches");
        batches
            .into_iter()
            .find(|b| b.lines.iter().any(|l| l.description == "usage 200"))
    })
    .await;
    assert_eq!(format!("{:?}", adjustment.batch_type), "Adjustment");
    assert_eq!(
        adjustment.adjusts.as_deref(),
        Some(regular.external_id.as_str())
    );
    assert_eq!(adjustment.lines.len(), 2);

    // A replay of every posting by the same group: the ledger knows each one's batch.
    let posted = sandbox.applied("erp").await;
    let summary_before = sink.stop().await;
    assert!(summary_before.delivered >= 3, "{summary_before:?}");
    publish(
        &codec,
        &topics.input,
        &values
            .iter()
            .map(|(k, p, _)| (k.clone(), p.clone(), Some(now_ms())))
            .collect::<Vec<_>>(),
    )
    .await;
    let replay = RunningSink::start(erp_sink(&topics.input, &sandbox).await, topics.settings());
    results(&codec, &topics.results, 2 * values.len() + 1).await;
    let replay_summary = replay.stop().await;
    assert_eq!(replay_summary.already_delivered, 30, "{replay_summary:?}");
    assert_eq!(
        sandbox.applied("erp").await,
        posted,
        "no batch posted twice"
    );
    let held = sandbox.client.batches().await.expect("batches");
    check_balanced(&held);
    assert_announced_as_held(&codec, &topics.input, &held).await;
    drop(records);
}

#[tokio::test]
async fn postings_that_do_not_balance_are_dead_lettered_on_arrival() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("erp-poison", 1).await;
    let codec = WireCodec::new(registry_url());
    let now = now_ms();
    let month = (2026, 11);
    // Debits 7, credits 5.
    let mut unbalanced = posting(1, "le-eu", "EUR", "7", month);
    unbalanced.lines[1].credit = amount("5");
    // A line in another currency than its posting.
    let mut mixed = posting(2, "le-eu", "EUR", "3", month);
    mixed.lines[1].currency = "USD".to_owned();
    let mut empty = posting(3, "le-eu", "EUR", "4", month);
    empty.lines.clear();
    let valid = posting(4, "le-eu", "EUR", "9.5", month);
    let values: Vec<(String, LedgerPosting, Option<i64>)> = [unbalanced, mixed, empty, valid]
        .into_iter()
        .map(|p| ("acme:le-eu".to_owned(), p, Some(now)))
        .collect();
    publish(&codec, &topics.input, &values).await;

    let sink = RunningSink::start(erp_sink(&topics.input, &sandbox).await, topics.settings());
    let dlq = consume_until(
        &shared_settings(),
        &format!("{}.dlq", topics.input),
        3,
        DEADLINE,
    )
    .await
    .expect("dead letters");
    let batches = eventually(DEADLINE, "the valid posting's batch", || async {
        let batches = sandbox.client.batches().await.expect("batches");
        (!batches.is_empty()).then_some(batches)
    })
    .await;
    sink.stop().await;

    let reasons = dead_letter_reasons(&dlq);
    let expected: BTreeMap<i64, String> = (0..3)
        .map(|offset| (offset, "unbalanced_posting".to_owned()))
        .collect();
    assert_eq!(reasons, expected);
    assert_le_eu_receivables(&batches, "9.5", "only the valid posting reached the ERP");
}

/// The ERP posts a batch but every answer is lost on the way back, so the sink never hears that
/// it was posted. Asked before the next attempt, the ERP shows the batch's postings as held:
/// settled as already delivered, not posted again (the sandbox would refuse nothing: the same
/// body under the same id is a duplicate, so the check is the count of batches it holds). Then a
/// posting with a time inside that window arrives (a producer held it back while the broker
/// was away): an adjustment of the posted batch, not another body under its external id, which
/// the ERP refuses as a conflict (the newcomer would be dead-lettered).
#[tokio::test]
async fn a_batch_whose_answer_was_lost_is_found_in_the_erp_and_a_newcomer_adjusts_it() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("erp-lost-answer", 1).await;
    let codec = WireCodec::new(registry_url());
    let month = (2026, 11);
    // A window (2 s) that closed a while ago: it is posted as soon as its partition is quiet.
    let start = (now_ms() - 60_000) / 2_000 * 2_000;
    let entity = |p: LedgerPosting, at: i64| ("acme:le-eu".to_owned(), p, Some(at));
    let first = [
        entity(posting(1, "le-eu", "EUR", "10", month), start + 100),
        entity(posting(2, "le-eu", "EUR", "20", month), start + 200),
    ];
    publish(&codec, &topics.input, &first).await;
    sandbox
        .client
        .set_faults(
            System::Erp,
            &Faults {
                lost_response_rate: 1.0,
                ..Faults::default()
            },
        )
        .await
        .expect("faults");
    let sink = RunningSink::start(erp_sink(&topics.input, &sandbox).await, topics.settings());
    let found: Vec<DeliveryOutcome> = results(&codec, &topics.results, first.len())
        .await
        .into_iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        found,
        [
            DeliveryOutcome::AlreadyDelivered,
            DeliveryOutcome::AlreadyDelivered
        ]
    );

    let late = [entity(posting(3, "le-eu", "EUR", "5", month), start + 300)];
    publish(&codec, &topics.input, &late).await;
    sandbox
        .client
        .clear_faults(System::Erp)
        .await
        .expect("clear faults");
    let outcomes: Vec<DeliveryOutcome> = results(&codec, &topics.results, first.len() + 1)
        .await
        .into_iter()
        .map(|r| r.outcome)
        .collect();
    let summary = sink.stop().await;
    // Results are read across partitions, in no set order: counted.
    let delivered = outcomes
        .iter()
        .filter(|o| **o == DeliveryOutcome::Delivered)
        .count();
    assert_eq!(delivered, 1, "the newcomer: {outcomes:?}, {summary:?}");
    let batches = sandbox.client.batches().await.expect("batches");
    assert_le_eu_receivables(&batches, "35", "every posting once");
    let shapes: Vec<(String, usize)> = batches
        .iter()
        .map(|b| (format!("{:?}", b.batch_type), b.lines.len()))
        .collect();
    assert_eq!(
        shapes,
        [("Regular".to_owned(), 4), ("Adjustment".to_owned(), 2)],
        "the batch as first sent, then the newcomer's adjustment"
    );
    // The ERP never answered for the first batch: it is announced as rebuilt from the
    // postings it holds.
    assert_announced_as_held(&codec, &topics.input, &batches).await;
}

/// Two instances, each with its own disk. The first posts a window; the partition moves to the
/// second, which has none of the first's ledger; a posting already in the ERP is produced again
/// (a new record, so a new arrival window), and a newcomer arrives with a time inside the posted
/// window. The ERP is asked before each batch: the copy is found and posted nowhere, and the
/// newcomer becomes an adjustment, not a second body under the posted window's id.
#[tokio::test]
async fn a_partition_moved_to_an_instance_without_the_ledger_posts_nothing_twice() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("erp-moved", 1).await;
    let codec = WireCodec::new(registry_url());
    let month = (2026, 11);
    let start = (now_ms() - 60_000) / 2_000 * 2_000;
    let entity = |p: LedgerPosting, at: Option<i64>| ("acme:le-eu".to_owned(), p, at);
    let first = [
        entity(posting(1, "le-eu", "EUR", "10", month), Some(start + 100)),
        entity(posting(2, "le-eu", "EUR", "20", month), Some(start + 200)),
    ];
    publish(&codec, &topics.input, &first).await;
    let sink = RunningSink::start(erp_sink(&topics.input, &sandbox).await, topics.settings());
    results(&codec, &topics.results, first.len()).await;
    sink.stop().await;

    let again = [
        entity(posting(1, "le-eu", "EUR", "10", month), None),
        entity(posting(3, "le-eu", "EUR", "5", month), Some(start + 300)),
    ];
    publish(&codec, &topics.input, &again).await;
    let second_disk = SinkSettings {
        ledger_dir: topics.ledger_dir.with_extension("second-instance"),
        ..topics.settings()
    };
    let sink = RunningSink::start(erp_sink(&topics.input, &sandbox).await, second_disk);
    let outcomes: Vec<DeliveryOutcome> = results(&codec, &topics.results, first.len() + 2)
        .await
        .into_iter()
        .map(|r| r.outcome)
        .collect();
    let summary = sink.stop().await;
    assert!(
        !outcomes.contains(&DeliveryOutcome::Rejected),
        "nothing refused: {outcomes:?}, {summary:?}"
    );
    let batches = sandbox.client.batches().await.expect("batches");
    assert_le_eu_receivables(&batches, "35", "every posting once");
    let shapes: Vec<(String, usize, Option<&str>)> = batches
        .iter()
        .map(|b| {
            let kind = format!("{:?}", b.batch_type);
            (kind, b.lines.len(), b.adjusts.as_deref())
        })
        .collect();
    let regular = batches[0].external_id.as_str();
    assert_eq!(
        shapes,
        [
            ("Regular".to_owned(), 4, None),
            ("Adjustment".to_owned(), 2, Some(regular))
        ],
        "the first window, then the newcomer's adjustment of it"
    );
    assert_announced_as_held(&codec, &topics.input, &batches).await;
}

#[tokio::test]
async fn a_window_over_the_batch_limit_posts_in_parts_each_posting_once() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("erp-parts", 1).await;
    let codec = WireCodec::new(registry_url());
    let now = now_ms();
    let values: Vec<_> = (0..25)
        .map(|i| {
            let p = posting(i, "le-eu", "EUR", "2", (2026, 11));
            ("acme:le-eu".to_owned(), p, Some(now))
        })
        .collect();
    publish(&codec, &topics.input, &values).await;
    let sink = RunningSink::start(
        erp_sink_with(&topics.input, &sandbox, 10).await,
        topics.settings(),
    );
    results(&codec, &topics.results, values.len()).await;
    sink.stop().await;
    let batches = sandbox.client.batches().await.expect("batches");
    let mut sizes: Vec<usize> = batches.iter().map(|b| b.lines.len()).collect();
    sizes.sort_unstable();
    assert_eq!(
        sizes,
        [10, 20, 20],
        "25 postings, two lines each, in parts of 10"
    );
    assert!(batches
        .iter()
        .all(|b| format!("{:?}", b.batch_type) == "Regular" && b.adjusts.is_none()));
    assert_le_eu_receivables(&batches, "50", "every posting once");
    assert_announced_as_held(&codec, &topics.input, &batches).await;
}
