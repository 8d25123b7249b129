//! Journal windows: posting lines held per legal entity, currency, accounting period and
//! arrival window, and the balanced `JournalBatch` each window becomes once it closes.
//!
//! A batch is a function of its window and the set of postings in it: postings are ordered by
//! `rating_id` and the `batch_id` is derived from the window's fields and the batch's sequence
//! number, so a window rebuilt after a crash from the same input posts the same batch under
//! the same id, which the ERP recognises. Sequence 0 is the window's `REGULAR` batch; postings
//! that arrive for a window already posted make `ADJUSTMENT` batches 1, 2, ... that reference
//! it, because a posted batch is never edited.
//!
//! A window holds at most `max_batch_postings` postings per part; the next ones start its next
//! part, a batch of its own (an id with the part number). A batch stays within what an ERP
//! takes in one journal and what the broker takes as one record when it is announced: a
//! minute's postings at a thousand usage events a second are 60,000, a record of several
//! megabytes, and the broker's default limit is one.
//!
//! The same input does not always give the same set: a window the wall clock closed can gain
//! postings later (a producer holds records back while the broker is away, and they keep the
//! times they were made at). The sink asks the ERP before each batch what it holds, so the
//! numbering here is a first guess the ERP's answer may move on (see the crate's `post`).

use std::collections::{BTreeMap, BTreeSet};

use backbone_rating::content_id;

use crate::route::ErpTarget;
use backbone_schemas::types::{
    Amount, BatchType, ControlTotal, EventMetadata, JournalBatch, LedgerPosting, PostingLine,
};

/// What makes two postings belong to the same batch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WindowKey {
    /// Tenant.
    pub tenant_id: String,
    /// Legal entity posted for.
    pub legal_entity_id: String,
    /// Currency of every line.
    pub currency: String,
    /// First day of the accounting period (days since the epoch).
    pub period_start: i32,
    /// Start of the arrival window, microseconds since the epoch.
    pub window_start: i64,
    /// The ERP that keeps the entity's books on the postings' dates.
    pub erp: ErpTarget,
    /// Which part of the window: a window holds at most a batch's worth of postings, and the
    /// next ones start the next part.
    pub part: u32,
}

impl WindowKey {
    /// The id of this window's batch number `sequence` (0 is the regular batch).
    pub fn batch_id(&self, sequence: u32) -> String {
        let period_start = self.period_start.to_string();
        let window_start = self.window_start.to_string();
        let sequence = sequence.to_string();
        let mut fields = vec![
            self.tenant_id.as_str(),
            &self.legal_entity_id,
            &self.currency,
            &period_start,
            &window_start,
            &sequence,
        ];
        // The cloud ERP's batches, and a window's first part, keep the ids they had before
        // there were two ERPs and parts.
        if self.erp == ErpTarget::Legacy {
            fields.push("legacy");
        }
        let part = format!("part-{}", self.part);
        if self.part > 0 {
            fields.push(&part);
        }
        content_id("jb-", &fields)
    }
}

/// Where a held posting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeldAt {
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
}

/// One window's postings, waiting for it to close.
#[derive(Debug, Clone, Default)]
pub struct OpenWindow {
    /// Postings by `rating_id`: one each, whatever the number of copies received.
    pub postings: BTreeMap<String, LedgerPosting>,
    /// Every record held for the window, with the posting it carried; a copy of a posting
    /// already held is a source without money.
    pub sources: Vec<(HeldAt, String, bool)>,
    /// Period end of the postings.
    pub period_end: i32,
    /// Input partition the window's postings come from (an entity's postings share one).
    pub partition: i32,
}

/// How far one input partition has got: its stream time (the latest arrival time held) and
/// when, by the wall clock, it last gave a posting.
#[derive(Debug, Clone, Copy, Default)]
struct PartitionClock {
    stream_time: i64,
    last_held_at: i64,
}

/// The windows of one sink instance.
///
/// A window closes when its partition's stream time passes the window's end plus the grace,
/// so a backlog read after an outage closes its windows in order and each becomes one batch,
/// not one adjustment per read. A partition that has gone quiet for the grace (it is caught
/// up) closes its windows by the wall clock instead, so the last window is not held for ever.
#[derive(Debug, Default)]
pub struct Windows {
    open: BTreeMap<WindowKey, OpenWindow>,
    clocks: BTreeMap<i32, PartitionClock>,
    /// Window length in microseconds.
    length: i64,
    /// Most postings one part of a window holds.
    max_postings: usize,
}

impl Windows {
    /// Windows of `length_micros` each, in parts of at most `max_postings` postings.
    pub fn new(length_micros: i64, max_postings: usize) -> Self {
        Self {
            open: BTreeMap::new(),
            clocks: BTreeMap::new(),
            length: length_micros.max(1),
            max_postings: max_postings.max(1),
        }
    }

    /// The key of the window `posting`, routed to `erp`, falls in by its arrival time.
    pub fn key_for(
        &self,
        posting: &LedgerPosting,
        erp: ErpTarget,
        arrived_micros: i64,
    ) -> WindowKey {
        WindowKey {
            erp,
            part: 0,
            tenant_id: posting.metadata.tenant_id.clone(),
            legal_entity_id: posting.legal_entity_id.clone(),
            currency: posting.currency.clone(),
            period_start: posting.period_start,
            window_start: arrived_micros.div_euclid(self.length) * self.length,
        }
    }

    /// Holds `posting`, which arrived (by its record time) at `arrived_micros` and was read at
    /// `now_micros` from `at`, in window `key`; or, when another open window already holds
    /// that posting, as a copy in that one. An upstream stage that restarts produces its output
    /// again, later, so a copy can fall in another window; two windows holding it would post
    /// it twice.
    pub fn hold(
        &mut self,
        key: WindowKey,
        at: HeldAt,
        posting: LedgerPosting,
        arrived_micros: i64,
        now_micros: i64,
    ) {
        let clock = self.clocks.entry(at.partition).or_default();
        clock.stream_time = clock.stream_time.max(arrived_micros);
        clock.last_held_at = now_micros;
        let id = posting.rating_id.clone();
        let key = match self
            .open
            .iter()
            .find(|(_, window)| window.postings.contains_key(&id))
        {
            Some((held_in, _)) => held_in.clone(),
            None => self.part_with_room(key),
        };
        let window = self.open.entry(key).or_default();
        window.partition = at.partition;
        window.period_end = posting.period_end;
        let first = !window.postings.contains_key(&id);
        window.sources.push((at, id.clone(), first));
        if first {
            window.postings.insert(id, posting);
        }
    }

    /// `key`'s first part with room for a posting more, the window's parts filled in order.
    fn part_with_room(&self, mut key: WindowKey) -> WindowKey {
        while self
            .open
            .get(&key)
            .is_some_and(|window| window.postings.len() >= self.max_postings)
        {
            key.part += 1;
        }
        key
    }

    /// Takes out every window that has closed by `now_micros` (wall clock) with `grace_micros`
    /// of grace: by its partition's stream time, or by the wall clock once the partition has
    /// been quiet for the grace.
    pub fn close(&mut self, now_micros: i64, grace_micros: i64) -> Vec<(WindowKey, OpenWindow)> {
        let closed: Vec<WindowKey> = self
            .open
            .iter()
            .filter(|(key, window)| {
                let due = key.window_start + self.length + grace_micros;
                let clock = self
                    .clocks
                    .get(&window.partition)
                    .copied()
                    .unwrap_or_default();
                let quiet = now_micros - clock.last_held_at >= grace_micros;
                clock.stream_time >= due || (quiet && now_micros >= due)
            })
            .map(|(key, _)| key.clone())
            .collect();
        closed
            .into_iter()
            .filter_map(|key| self.open.remove(&key).map(|window| (key, window)))
            .collect()
    }

    /// Forgets what came from `partitions`.
    pub fn forget(&mut self, partitions: &[i32]) {
        for window in self.open.values_mut() {
            window
                .sources
                .retain(|(at, _, _)| !partitions.contains(&at.partition));
            let kept: BTreeSet<&String> = window.sources.iter().map(|(_, id, _)| id).collect();
            window.postings.retain(|id, _| kept.contains(id));
        }
        self.open.retain(|_, window| !window.sources.is_empty());
        self.clocks
            .retain(|partition, _| !partitions.contains(partition));
    }

    /// Window length in microseconds.
    pub fn length(&self) -> i64 {
        self.length
    }

    /// Postings held, over every window.
    pub fn held(&self) -> usize {
        self.open.values().map(|w| w.postings.len()).sum()
    }
}

/// Why a window cannot become a batch (a posting that breaks the journal's arithmetic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JournalError(pub String);

/// Builds batch number `sequence` of `window`: lines numbered in `rating_id` order, one
/// control total for the window's currency, posting date the latest of its postings'.
pub fn build_batch(
    key: &WindowKey,
    window: &OpenWindow,
    sequence: u32,
    window_length: i64,
    source: &str,
    now_micros: i64,
) -> Result<JournalBatch, JournalError> {
    let batch_id = key.batch_id(sequence);
    let mut lines = Vec::new();
    let mut debits = Amount::ZERO;
    let mut credits = Amount::ZERO;
    let mut posting_date = i32::MIN;
    let overflow = || JournalError(format!("batch {batch_id}: control totals overflow"));
    for posting in window.postings.values() {
        posting_date = posting_date.max(posting.posting_date);
        for line in &posting.lines {
            if line.currency != key.currency {
                return Err(JournalError(format!(
                    "posting {} has a {} line in a {} journal",
                    posting.rating_id, line.currency, key.currency
                )));
            }
            debits = debits.checked_add(line.debit).ok_or_else(overflow)?;
            credits = credits.checked_add(line.credit).ok_or_else(overflow)?;
            let number = i32::try_from(lines.len() + 1).map_err(|_| overflow())?;
            // The line keeps its own customer: set on receivable lines, null on the others,
            // as the posting-line contract says.
            lines.push(PostingLine {
                line_number: number,
                source_rating_id: Some(posting.rating_id.clone()),
                ..line.clone()
            });
        }
    }
    let line_count = i32::try_from(lines.len()).map_err(|_| overflow())?;
    let first = window
        .postings
        .values()
        .next()
        .ok_or_else(|| JournalError(format!("batch {batch_id} has no postings")))?;
    Ok(JournalBatch {
        metadata: EventMetadata {
            tenant_id: key.tenant_id.clone(),
            event_id: batch_id.clone(),
            source: source.to_owned(),
            r#type: "backbone.erp.journal_batch".to_owned(),
            // The journal-batch contract: occurred_at is the window's end.
            occurred_at: key.window_start + window_length,
            produced_at: now_micros,
            trace: first.metadata.trace.clone(),
            schema_version: None,
        },
        batch_id,
        legal_entity_id: key.legal_entity_id.clone(),
        period_start: key.period_start,
        period_end: window.period_end,
        window_start: key.window_start,
        window_end: key.window_start + window_length,
        batch_type: if sequence == 0 {
            BatchType::Regular
        } else {
            BatchType::Adjustment
        },
        posting_date,
        line_count,
        control_totals: vec![ControlTotal {
            currency: key.currency.clone(),
            line_count,
            total_debits: debits,
            total_credits: credits,
        }],
        source_rating_count: i64::try_from(window.postings.len()).unwrap_or(i64::MAX),
        lines,
        adjusts_batch_id: (sequence > 0).then(|| key.batch_id(0)),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use backbone_schemas::types::TraceContext;

    fn empty_trace() -> TraceContext {
        TraceContext {
            traceparent: String::new(),
            tracestate: None,
        }
    }

    fn amount(text: &str) -> Amount {
        text.parse().expect("amount")
    }

    /// A posting of `value` EUR for `le-eu`, receivable 1200 against revenue 4000.
    pub(crate) fn posting(rating_id: &str, value: &str) -> LedgerPosting {
        let a = amount(value);
        // As the fanout writes them: the customer on the receivable line only.
        let line = |n: i32, account: &str, debit: Amount, credit: Amount| PostingLine {
            line_number: n,
            gl_account: account.into(),
            debit,
            credit,
            currency: "EUR".into(),
            description: "usage".into(),
            source_rating_id: None,
            customer_id: (account == "1200").then(|| "c-1".to_owned()),
        };
        LedgerPosting {
            metadata: EventMetadata {
                tenant_id: "acme".into(),
                event_id: rating_id.into(),
                source: "fanout".into(),
                r#type: "backbone.erp.ledger_posting".into(),
                occurred_at: 0,
                produced_at: 0,
                trace: empty_trace(),
                schema_version: None,
            },
            rating_id: rating_id.into(),
            legal_entity_id: "le-eu".into(),
            customer_id: "c-1".into(),
            subscription_id: "s-1".into(),
            charge_id: "api".into(),
            mapping_id: "default".into(),
            posting_date: 20_500,
            period_start: 20_484,
            period_end: 20_513,
            currency: "EUR".into(),
            amount: a,
            lines: vec![
                line(1, "1200", a, Amount::ZERO),
                line(2, "4000", Amount::ZERO, a),
            ],
        }
    }

    const MINUTE: i64 = 60_000_000;

    #[test]
    fn a_window_closes_after_its_grace_and_balances() {
        let mut windows = Windows::new(MINUTE, 1_000);
        let p1 = posting("r-2", "10.50");
        let p2 = posting("r-1", "4.25");
        let key = windows.key_for(&p1, ErpTarget::Cloud, 5 * MINUTE + 3);
        assert_eq!(key.window_start, 5 * MINUTE);
        windows.hold(
            key.clone(),
            HeldAt {
                partition: 0,
                offset: 7,
            },
            p1,
            5 * MINUTE + 3,
            5 * MINUTE + 3,
        );
        windows.hold(
            key.clone(),
            HeldAt {
                partition: 0,
                offset: 8,
            },
            p2,
            5 * MINUTE + 3,
            5 * MINUTE + 3,
        );
        assert!(windows.close(6 * MINUTE + 9_999_999, 10_000_000).is_empty());
        let closed = windows.close(6 * MINUTE + 10_000_000, 10_000_000);
        assert_eq!(closed.len(), 1);
        let (key, window) = &closed[0];
        let batch = build_batch(key, window, 0, MINUTE, "erp-sink", 0).expect("batch");
        assert_eq!(batch.batch_type, BatchType::Regular);
        assert_eq!(batch.line_count, 4);
        assert_eq!(batch.control_totals[0].total_debits, amount("14.75"));
        assert_eq!(batch.control_totals[0].total_credits, amount("14.75"));
        let order: Vec<_> = batch
            .lines
            .iter()
            .map(|l| l.source_rating_id.clone())
            .collect();
        assert_eq!(
            order[0].as_deref(),
            Some("r-1"),
            "lines follow rating_id order"
        );
        assert_eq!(batch.adjusts_batch_id, None);
        // The posting-line contract: the customer on receivable lines, null on the others.
        let customers: Vec<(&str, Option<&str>)> = batch
            .lines
            .iter()
            .map(|l| (l.gl_account.as_str(), l.customer_id.as_deref()))
            .collect();
        assert_eq!(
            customers,
            [
                ("1200", Some("c-1")),
                ("4000", None),
                ("1200", Some("c-1")),
                ("4000", None)
            ]
        );
        // The journal-batch contract: occurred_at is the window's end.
        assert_eq!(batch.metadata.occurred_at, batch.window_end);
    }

    #[test]
    fn the_same_postings_in_any_order_give_the_same_batch() {
        let build = |ids: &[(&str, &str)]| {
            let mut windows = Windows::new(MINUTE, 1_000);
            for (offset, (id, value)) in ids.iter().enumerate() {
                let p = posting(id, value);
                let key = windows.key_for(&p, ErpTarget::Cloud, 0);
                windows.hold(
                    key,
                    HeldAt {
                        partition: 0,
                        offset: offset as i64,
                    },
                    p,
                    0,
                    0,
                );
            }
            let (key, window) = windows.close(i64::MAX / 2, 0).pop().expect("closed");
            build_batch(&key, &window, 0, MINUTE, "erp-sink", 0).expect("batch")
        };
        let a = build(&[("r-1", "1"), ("r-2", "2"), ("r-3", "3")]);
        let b = build(&[("r-3", "3"), ("r-1", "1"), ("r-2", "2"), ("r-1", "1")]);
        assert_eq!(a.batch_id, b.batch_id);
        assert_eq!(a.lines, b.lines, "a duplicate copy adds no lines");
    }

    #[test]
    fn later_sequences_are_adjustments_of_the_regular_batch() {
        let mut windows = Windows::new(MINUTE, 1_000);
        let p = posting("r-9", "-3");
        let key = windows.key_for(&p, ErpTarget::Cloud, 0);
        windows.hold(
            key,
            HeldAt {
                partition: 1,
                offset: 1,
            },
            p,
            0,
            0,
        );
        let (key, window) = windows.close(i64::MAX / 2, 0).pop().expect("closed");
        let adjustment = build_batch(&key, &window, 2, MINUTE, "erp-sink", 0).expect("batch");
        assert_eq!(adjustment.batch_type, BatchType::Adjustment);
        assert_eq!(adjustment.adjusts_batch_id, Some(key.batch_id(0)));
        assert_ne!(adjustment.batch_id, key.batch_id(0));
        assert_ne!(key.batch_id(1), key.batch_id(2));
    }

    #[test]
    fn a_backlog_closes_its_windows_by_stream_time() {
        let mut windows = Windows::new(MINUTE, 1_000);
        let reading = 100 * MINUTE;
        let at = |offset| HeldAt {
            partition: 0,
            offset,
        };
        // Read long after they arrived: one window at minute 0, one at minute 2.
        for (offset, (id, arrived)) in [("a", 5), ("b", 10), ("c", 2 * MINUTE)]
            .into_iter()
            .enumerate()
        {
            let p = posting(id, "1");
            let key = windows.key_for(&p, ErpTarget::Cloud, arrived);
            windows.hold(key, at(offset as i64), p, arrived, reading);
        }
        let closed = windows.close(reading, 10_000_000);
        assert_eq!(closed.len(), 1, "the first window closed by stream time");
        assert_eq!(closed[0].1.postings.len(), 2, "with both of its postings");
        assert!(
            windows.close(reading + 1, 10_000_000).is_empty(),
            "the newest window waits while the partition is busy"
        );
        let quiet = windows.close(reading + 10_000_000, 10_000_000);
        assert_eq!(
            quiet.len(),
            1,
            "and closes once it has been quiet for the grace"
        );
    }

    #[test]
    fn a_later_copy_of_a_held_posting_joins_the_window_that_holds_it() {
        let mut windows = Windows::new(MINUTE, 1_000);
        let at = |offset| HeldAt {
            partition: 0,
            offset,
        };
        let p = posting("r-1", "5");
        let first = windows.key_for(&p, ErpTarget::Cloud, 10);
        windows.hold(first.clone(), at(0), p.clone(), 10, 10);
        // The same posting produced again three minutes later, and another one with it.
        let later = windows.key_for(&p, ErpTarget::Cloud, 3 * MINUTE);
        assert_ne!(first, later);
        windows.hold(later.clone(), at(1), p, 3 * MINUTE, 3 * MINUTE);
        let q = posting("r-2", "7");
        windows.hold(later.clone(), at(2), q, 3 * MINUTE, 3 * MINUTE);
        let closed = windows.close(i64::MAX / 2, 0);
        let by_key: BTreeMap<_, _> = closed.into_iter().collect();
        let held = |key: &WindowKey| by_key[key].postings.keys().cloned().collect::<Vec<_>>();
        assert_eq!(held(&first), ["r-1"]);
        assert_eq!(by_key[&first].sources.len(), 2, "the copy settles with it");
        assert_eq!(held(&later), ["r-2"], "each posting in one window only");
    }

    #[test]
    fn forgetting_a_partition_drops_its_postings() {
        let mut windows = Windows::new(MINUTE, 1_000);
        for (partition, id) in [(0, "a"), (1, "b")] {
            let p = posting(id, "1");
            let key = windows.key_for(&p, ErpTarget::Cloud, 0);
            windows.hold(
                key,
                HeldAt {
                    partition,
                    offset: 0,
                },
                p,
                0,
                0,
            );
        }
        windows.forget(&[1]);
        assert_eq!(windows.held(), 1);
        windows.forget(&[0]);
        assert_eq!(windows.held(), 0);
        assert!(windows.close(i64::MAX / 2, 0).is_empty());
    }

    fn hold_all(windows: &mut Windows, postings: &[LedgerPosting]) {
        for (offset, p) in (0..).zip(postings) {
            let key = windows.key_for(p, ErpTarget::Cloud, MINUTE);
            let at = HeldAt {
                partition: 0,
                offset,
            };
            windows.hold(key, at, p.clone(), MINUTE, MINUTE);
        }
    }

    #[test]
    fn a_window_over_the_limit_closes_in_parts_each_a_batch_of_its_own() {
        let mut windows = Windows::new(MINUTE, 2);
        let postings: Vec<LedgerPosting> = ["r-1", "r-2", "r-3", "r-4", "r-5"]
            .iter()
            .map(|id| posting(id, "1"))
            .collect();
        hold_all(&mut windows, &postings);
        // A copy of a held posting joins its part, whatever part is filling.
        hold_all(&mut windows, &postings[..1]);
        let closed = windows.close(i64::MAX / 2, 0);
        let parts: Vec<(u32, Vec<&str>)> = closed
            .iter()
            .map(|(key, window)| {
                let ids = window.postings.keys().map(String::as_str).collect();
                (key.part, ids)
            })
            .collect();
        assert_eq!(
            parts,
            [
                (0, vec!["r-1", "r-2"]),
                (1, vec!["r-3", "r-4"]),
                (2, vec!["r-5"])
            ]
        );
        assert_eq!(
            closed[0].1.sources.len(),
            3,
            "the copy is a source of part 0"
        );
        let ids: BTreeSet<String> = closed.iter().map(|(key, _)| key.batch_id(0)).collect();
        assert_eq!(ids.len(), 3, "a batch id per part");
    }

    #[test]
    fn a_first_part_keeps_the_ids_batches_had_before_parts_and_two_erps() {
        // Ids written down before either existed: the ERP already holds batches under them.
        let key = WindowKey {
            tenant_id: "acme".into(),
            legal_entity_id: "le-eu".into(),
            currency: "EUR".into(),
            period_start: 20_484,
            window_start: 300_000_000,
            erp: ErpTarget::Cloud,
            part: 0,
        };
        assert_eq!(key.batch_id(0), "jb-20e43099ce8d8cbfa93c3a70a8a5b9ff");
        assert_eq!(key.batch_id(1), "jb-ab4892ac9f0d45e8176ab2d03ea778c1");
        let second = WindowKey {
            part: 1,
            ..key.clone()
        };
        let legacy = WindowKey {
            erp: ErpTarget::Legacy,
            ..key.clone()
        };
        let ids = BTreeSet::from([key.batch_id(0), second.batch_id(0), legacy.batch_id(0)]);
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn a_full_part_is_announced_in_a_record_the_broker_takes() {
        // A default part of long-winded postings, encoded as the announcement is.
        let max = crate::ErpSettings::default().max_batch_postings;
        let mut windows = Windows::new(MINUTE, max);
        let postings: Vec<LedgerPosting> = (0..max)
            .map(|i| {
                let mut p = posting(&format!("rtg-{i:032x}"), "123456.789012");
                for line in &mut p.lines {
                    line.gl_account = format!("{}-accounts-receivable-trade", line.gl_account);
                    line.description = format!("Usage api-calls-per-region 2026-11 sub-{i:040}");
                    line.customer_id = Some(format!("customer-{i:040}"));
                }
                p
            })
            .collect();
        hold_all(&mut windows, &postings);
        let closed = windows.close(i64::MAX / 2, 0);
        assert_eq!(closed.len(), 1, "one part");
        let batch =
            build_batch(&closed[0].0, &closed[0].1, 0, MINUTE, "erp-sink", 0).expect("batch");
        let bytes = backbone_schemas::wire::encode_framed(1, &batch).expect("encoded");
        // The broker's default `message.max.bytes` is 1,048,588.
        assert!(bytes.len() < 1_000_000, "{} bytes", bytes.len());
    }
}
