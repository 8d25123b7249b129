//! The hops of a trace, each reading the topics of one step of the pipeline from the time of
//! the records the hop before found: the event's copies and the validator's letters; what the
//! validator, enricher and rater made of it (found by its idempotency-key header); the rated
//! lines and window; the charge, posting, fact and snapshot of each line; and the sinks'
//! results and letters for those records.

use std::collections::BTreeSet;

use backbone_calendar::{format_date, format_rfc3339_ms};
use backbone_core::dead_letter::headers as dlq;
use backbone_schemas::types::{
    AccountHealthSnapshot, AnalyticsFact, BillingCharge, Contract, DeliveryResult, EnrichedUsage,
    LedgerPosting, RatedUsage, UsageEvent, UsageWindowAggregate,
};
use backbone_schemas::WireCodec;
use backbone_usage_validator::{idempotency_key, IDEMPOTENCY_KEY_HEADER};
use serde::Deserialize;

use super::read::{read, Reading, Window};
use super::{Schemas, Step, TopicNames, Trace, TraceRequest, Traced};
use crate::error::ReplayError;
use crate::scan::SourceRecord;
use crate::Context;

/// Records stamped up to this long before the record that caused them are read too: the
/// clock of the producer that stamped one record may run ahead of the next one's.
const SLACK_MS: i64 = 60_000;

/// Store of the enricher's parked events in its changelog (`<store>\0<customer>\0<seq>`).
const PARKED_STORE: &[u8] = b"parked\0";

/// A parked event as the enricher keeps it in its changelog (JSON; fields not read here are
/// left out).
#[derive(Deserialize)]
struct ParkedEvent {
    value: Vec<u8>,
    reason: String,
    detail: String,
}

/// A source record a later step names: topic, partition, offset.
type Origin = (String, i32, i64);

/// Follows `request` through the backbone.
pub async fn trace(ctx: &Context, request: &TraceRequest) -> Result<Trace, ReplayError> {
    let mut tracer = Tracer {
        ctx,
        codec: WireCodec::new(ctx.registry.clone()),
        schemas: Schemas::new(ctx),
        topics: &request.topics,
        tenant: &request.tenant,
        within_ms: request.within_ms,
        read: 0,
        missing: BTreeSet::new(),
        steps: Vec::new(),
    };
    match &request.subject {
        Traced::Event { event_id, source } => {
            tracer
                .event(event_id, source.as_deref(), request.window)
                .await?;
        }
        Traced::Rating { rating_id } => tracer.rating(rating_id, request.window).await?,
    }
    Ok(Trace {
        tenant: request.tenant.clone(),
        traced: request.subject.clone(),
        found: !tracer.steps.is_empty(),
        searched_since: format_rfc3339_ms(request.window.since_ms),
        searched_until: format_rfc3339_ms(request.window.until_ms),
        records_read: tracer.read,
        missing_topics: tracer.missing.into_iter().collect(),
        steps: tracer.steps,
    })
}

struct Tracer<'a> {
    ctx: &'a Context,
    codec: WireCodec,
    schemas: Schemas,
    topics: &'a TopicNames,
    tenant: &'a str,
    within_ms: i64,
    read: u64,
    missing: BTreeSet<String>,
    steps: Vec<Step>,
}

fn has_key_prefix(record: &SourceRecord, prefix: &str) -> bool {
    record
        .key
        .as_deref()
        .is_some_and(|k| k.starts_with(prefix.as_bytes()))
}

fn has_key(record: &SourceRecord, key: &str) -> bool {
    record.key.as_deref() == Some(key.as_bytes())
}

fn time_of(record: &SourceRecord) -> i64 {
    record.timestamp_ms.unwrap_or(i64::MAX)
}

/// Micros since the epoch as RFC 3339.
fn micros(at: i64) -> String {
    format_rfc3339_ms(at.div_euclid(1000))
}

/// An Avro enum's symbol, as the contract spells it.
fn symbol<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The letter's reason and message, for its step.
fn letter_detail(letter: &SourceRecord) -> String {
    let reason = letter.header(dlq::REASON).unwrap_or("no reason given");
    match letter.header(dlq::MESSAGE) {
        Some(message) if !message.is_empty() => format!("{reason}: {message}"),
        _ => reason.to_owned(),
    }
}

/// The record a dead letter came from, from its origin headers.
fn origin_of(letter: &SourceRecord) -> Option<Origin> {
    Some((
        letter.header(dlq::ORIGIN_TOPIC)?.to_owned(),
        letter.header(dlq::ORIGIN_PARTITION)?.parse().ok()?,
        letter.header(dlq::ORIGIN_OFFSET)?.parse().ok()?,
    ))
}

impl Tracer<'_> {
    /// Records read from `topic` within `window` that `keep` accepts, counting what was read.
    fn absorb(&mut self, topic: &str, reading: Reading) -> Vec<SourceRecord> {
        self.read += reading.read;
        if reading.missing {
            self.missing.insert(topic.to_owned());
        }
        reading.records
    }

    /// The window of what a record stamped at `from_ms` may have caused.
    fn after(&self, from_ms: i64) -> Window {
        Window {
            since_ms: from_ms.saturating_sub(SLACK_MS),
            until_ms: from_ms.saturating_add(self.within_ms),
        }
    }

    async fn decode<T: Contract>(&self, record: &SourceRecord) -> Option<T> {
        let bytes = record.value.as_deref()?;
        self.codec.decode_as::<T>(bytes, T::schema()).await.ok()
    }

    /// Records of `records` that decode as `T` and that `wanted` accepts.
    async fn decoded<T: Contract>(
        &self,
        records: Vec<SourceRecord>,
        wanted: impl Fn(&T) -> bool,
    ) -> Vec<(SourceRecord, T)> {
        let mut found = Vec::new();
        for record in records {
            if let Some(value) = self.decode::<T>(&record).await {
                if wanted(&value) {
                    found.push((record, value));
                }
            }
        }
        found
    }

    async fn step(
        &mut self,
        by: &str,
        what: &str,
        topic: &str,
        record: &SourceRecord,
        id: Option<String>,
        detail: String,
    ) {
        // A dead letter holds its origin's bytes; the validator forwards usage byte for byte.
        let usage = self.topics.of("usage.events");
        let origin = record.header(dlq::ORIGIN_TOPIC).unwrap_or(topic);
        let schema = self
            .schemas
            .of(&[topic, origin, &usage], record.value.as_deref())
            .await;
        self.steps.push(Step {
            by: by.to_owned(),
            what: what.to_owned(),
            at: record.timestamp_ms.map(format_rfc3339_ms),
            topic: topic.to_owned(),
            partition: record.partition,
            offset: record.offset,
            schema,
            id,
            detail,
        });
    }

    async fn letter(&mut self, topic: &str, letter: &SourceRecord, stage: &str) {
        let by = letter.header(dlq::PROCESSOR).unwrap_or(stage).to_owned();
        let detail = letter_detail(letter);
        self.step(&by, "dead-lettered", topic, letter, None, detail)
            .await;
    }

    /// From a usage event's copies on the usage topic to its rated lines and beyond.
    async fn event(
        &mut self,
        event_id: &str,
        source: Option<&str>,
        window: Window,
    ) -> Result<(), ReplayError> {
        let t = self.topics;
        let prefix = format!("{}:", self.tenant);
        let (usage, usage_dlq) = (t.of("usage.events"), t.dlq("usage.events"));
        // Letters are written when the validator fails the event, after it was published.
        let letters_window = Window {
            until_ms: window.until_ms.saturating_add(self.within_ms),
            ..window
        };
        let (copies, letters) = tokio::try_join!(
            read(self.ctx, &usage, window, |r| has_key_prefix(r, &prefix)),
            read(self.ctx, &usage_dlq, letters_window, |r| has_key_prefix(
                r, &prefix
            )),
        )?;
        let copies = self.absorb(&usage, copies);
        let letters = self.absorb(&usage_dlq, letters);
        let tenant = self.tenant;
        let is_it = |e: &UsageEvent| {
            e.metadata.tenant_id == tenant
                && e.metadata.event_id == event_id
                && source.is_none_or(|s| e.metadata.source == s)
        };
        let mut copies = self.decoded(copies, is_it).await;
        let letters = self.decoded(letters, is_it).await;
        let sources: BTreeSet<&str> = copies
            .iter()
            .chain(&letters)
            .map(|(_, e)| e.metadata.source.as_str())
            .collect();
        if sources.len() > 1 {
            return Err(ReplayError::Other {
                what: format!("tracing event `{event_id}` of tenant `{tenant}`"),
                message: format!(
                    "several producers used the id ({}); name one with --source",
                    sources.into_iter().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        let Some(event) = copies.iter().chain(&letters).map(|(_, e)| e.clone()).next() else {
            return Ok(());
        };
        copies.sort_by_key(|(r, _)| (time_of(r), r.partition, r.offset));
        let ikey = idempotency_key(&event);
        for (record, e) in &copies {
            let detail = format!(
                "customer {}, meter {}, quantity {} {}, occurred {}",
                e.customer_id,
                e.meter_id,
                e.quantity,
                e.unit,
                micros(e.metadata.occurred_at)
            );
            self.step(
                &e.metadata.source,
                "published",
                &usage,
                record,
                None,
                detail,
            )
            .await;
        }
        let start = copies
            .iter()
            .chain(&letters)
            .map(|(r, _)| time_of(r))
            .min()
            .unwrap_or(window.since_ms);
        let down = self.after(start);
        let validated_topic = t.of("usage.validated");
        let (enricher_dlq, enriched_topic) = (t.dlq("usage.validated"), t.of("usage.enriched"));
        let (rater_dlq, changelog) = (t.dlq("usage.enriched"), t.enricher_changelog.clone());
        let with_key =
            |r: &SourceRecord| r.headers.get(IDEMPOTENCY_KEY_HEADER) == Some(Some(ikey.as_bytes()));
        let parked_prefix = [PARKED_STORE, prefix.as_bytes()].concat();
        let is_parked = |r: &SourceRecord| {
            r.key
                .as_deref()
                .is_some_and(|k| k.starts_with(&parked_prefix))
        };
        // The enricher writes no headers of its own: its records are found by decoding.
        let (validated, enricher_letters, enriched, rater_letters, parked) = tokio::try_join!(
            read(self.ctx, &validated_topic, down, with_key),
            read(self.ctx, &enricher_dlq, down, with_key),
            read(self.ctx, &enriched_topic, down, |r| has_key_prefix(
                r, &prefix
            )),
            read(self.ctx, &rater_dlq, down, |r| has_key_prefix(r, &prefix)),
            read(self.ctx, &changelog, down, is_parked),
        )?;
        let validated = self.absorb(&validated_topic, validated);
        let enricher_letters = self.absorb(&enricher_dlq, enricher_letters);
        let enriched = self.absorb(&enriched_topic, enriched);
        let rater_letters = self.absorb(&rater_dlq, rater_letters);
        let parked = self.absorb(&changelog, parked);

        // The validator: each copy accepted, dead-lettered, or dropped as a duplicate.
        let lettered: BTreeSet<Origin> = letters.iter().filter_map(|(r, _)| origin_of(r)).collect();
        for (letter, _) in &letters {
            self.letter(&usage_dlq, letter, "usage-validator").await;
        }
        for record in &validated {
            self.step(
                "usage-validator",
                "accepted",
                &validated_topic,
                record,
                Some(ikey.clone()),
                "forwarded under its idempotency key".to_owned(),
            )
            .await;
        }
        let unlettered = copies
            .iter()
            .filter(|(r, _)| !lettered.contains(&(usage.clone(), r.partition, r.offset)));
        for (record, _) in unlettered.skip(validated.len()) {
            let (what, detail) = if validated.is_empty() {
                (
                    "pending",
                    "no output or dead letter yet: not read yet, or still in flight",
                )
            } else {
                (
                    "duplicate",
                    "dropped: a copy with its idempotency key was accepted before",
                )
            };
            self.step(
                "usage-validator",
                what,
                &usage,
                record,
                None,
                detail.to_owned(),
            )
            .await;
        }

        self.parking(&changelog, parked, &event).await;
        for letter in &enricher_letters {
            self.letter(&enricher_dlq, letter, "enricher").await;
        }
        let mut enrichments = Vec::new();
        let of_event = |e: &EnrichedUsage| e.usage.metadata == event.metadata;
        for (record, enrichment) in self.decoded(enriched, of_event).await {
            let detail = format!(
                "subscription {}, plan {} (rate card version {}), billing period {} to {}, legal entity {}",
                enrichment.subscription_id,
                enrichment.plan_id,
                enrichment.rate_card_version,
                format_date(enrichment.billing_period_start),
                format_date(enrichment.billing_period_end),
                enrichment.legal_entity_id
            );
            self.step(
                "enricher",
                "enriched",
                &enriched_topic,
                &record,
                None,
                detail,
            )
            .await;
            enrichments.push((time_of(&record), enrichment));
        }
        for (letter, _) in self.decoded(rater_letters, of_event).await {
            self.letter(&rater_dlq, &letter, "usage-rater").await;
        }
        let mut lines = Vec::new();
        for (at, enrichment) in enrichments {
            lines.extend(self.rated(at, &enrichment, &ikey).await?);
        }
        self.fanned_out(&lines).await
    }

    /// The enricher's parking of the event: put in its changelog when parked, deleted when
    /// released (or expired).
    async fn parking(&mut self, changelog: &str, entries: Vec<SourceRecord>, event: &UsageEvent) {
        let mut open: Vec<Vec<u8>> = Vec::new();
        for entry in entries {
            let Some(key) = entry.key.clone() else {
                continue;
            };
            match entry.value.as_deref() {
                Some(value) => {
                    let Ok(parked) = serde_json::from_slice::<ParkedEvent>(value) else {
                        continue;
                    };
                    let Ok(held) = self
                        .codec
                        .decode_as::<UsageEvent>(&parked.value, UsageEvent::schema())
                        .await
                    else {
                        continue;
                    };
                    // Trying a parked event again rewrites its entry; only the first counts.
                    if held.metadata != event.metadata || open.contains(&key) {
                        continue;
                    }
                    open.push(key);
                    let detail = if parked.reason.is_empty() {
                        "queued behind the customer's earlier parked events".to_owned()
                    } else {
                        format!("{}: {}", parked.reason, parked.detail)
                    };
                    self.step("enricher", "parked", changelog, &entry, None, detail)
                        .await;
                }
                None => {
                    if let Some(at) = open.iter().position(|k| *k == key) {
                        open.remove(at);
                        let detail = "left the park: enriched, or dead-lettered on expiry";
                        self.step(
                            "enricher",
                            "released",
                            changelog,
                            &entry,
                            None,
                            detail.into(),
                        )
                        .await;
                    }
                }
            }
        }
    }

    /// The rated lines of `ikey`'s event and the window it was counted in.
    async fn rated(
        &mut self,
        enriched_at: i64,
        enrichment: &EnrichedUsage,
        ikey: &str,
    ) -> Result<Vec<(i64, RatedUsage)>, ReplayError> {
        let t = self.topics;
        let (rated_topic, windows_topic) = (t.of("usage.rated"), t.of("usage.window-aggregates"));
        let key = format!("{}:{}", self.tenant, enrichment.subscription_id);
        let down = self.after(enriched_at);
        let (rated, windows) = tokio::try_join!(
            read(self.ctx, &rated_topic, down, |r| has_key(r, &key)),
            read(self.ctx, &windows_topic, down, |r| has_key(r, &key)),
        )?;
        let rated = self.absorb(&rated_topic, rated);
        let windows = self.absorb(&windows_topic, windows);
        let lines = self
            .decoded(rated, |l: &RatedUsage| {
                l.source_event_ids.iter().any(|id| id == ikey)
            })
            .await;
        let mut found = Vec::new();
        for (record, line) in lines {
            self.rated_step(&rated_topic, &record, &line).await;
            found.push((time_of(&record), line));
        }
        let usage = &enrichment.usage;
        let counted = self
            .decoded(windows, |w: &UsageWindowAggregate| {
                w.meter_id == usage.meter_id
                    && w.window_start <= usage.metadata.occurred_at
                    && usage.metadata.occurred_at < w.window_end
            })
            .await;
        if let (Some((record, first)), Some((_, last))) = (counted.first(), counted.last()) {
            let detail = format!(
                "hour from {}: revision {} ({} events, {} {}); latest revision {} ({} events, {} {})",
                micros(first.window_start),
                first.revision,
                first.event_count,
                first.quantity_sum,
                first.unit,
                last.revision,
                last.event_count,
                last.quantity_sum,
                last.unit
            );
            let id = Some(first.aggregate_id.clone());
            self.step(
                "usage-rater",
                "windowed",
                &windows_topic,
                record,
                id,
                detail,
            )
            .await;
        }
        Ok(found)
    }

    async fn rated_step(&mut self, topic: &str, record: &SourceRecord, line: &RatedUsage) {
        let detail = format!(
            "{} line of charge {} (revision {}): {} {}, quantity {} to {}, {} events",
            symbol(&line.kind),
            line.charge_id,
            line.revision,
            line.delta_amount,
            line.currency,
            line.quantity_before,
            line.quantity_after,
            line.source_event_count
        );
        let id = Some(line.rating_id.clone());
        self.step("usage-rater", "rated", topic, record, id, detail)
            .await;
    }

    /// From a rated line, given by its id, back to its events and on to the sinks.
    async fn rating(&mut self, rating_id: &str, window: Window) -> Result<(), ReplayError> {
        let rated_topic = self.topics.of("usage.rated");
        let prefix = format!("{}:", self.tenant);
        let rated = read(self.ctx, &rated_topic, window, |r| {
            has_key_prefix(r, &prefix)
        })
        .await?;
        let rated = self.absorb(&rated_topic, rated);
        let mut lines = Vec::new();
        for (record, line) in self
            .decoded(rated, |l: &RatedUsage| l.rating_id == rating_id)
            .await
        {
            self.rated_step(&rated_topic, &record, &line).await;
            let events = line.source_event_ids.join(", ");
            self.step(
                "usage-rater",
                "from",
                &rated_topic,
                &record,
                None,
                format!("usage events (tenant/source/event id): {events}"),
            )
            .await;
            lines.push((time_of(&record), line));
        }
        self.fanned_out(&lines).await
    }

    /// What the fanout made of `lines` and what the sinks did with it.
    async fn fanned_out(&mut self, lines: &[(i64, RatedUsage)]) -> Result<(), ReplayError> {
        let Some(start) = lines.iter().map(|(at, _)| *at).min() else {
            return Ok(());
        };
        let t = self.topics;
        let tenant = self.tenant;
        let ids: BTreeSet<&str> = lines.iter().map(|(_, l)| l.rating_id.as_str()).collect();
        let subscriptions: BTreeSet<String> = lines
            .iter()
            .map(|(_, l)| format!("{tenant}:{}", l.subscription_id))
            .collect();
        let entities: BTreeSet<String> = lines
            .iter()
            .map(|(_, l)| format!("{tenant}:{}", l.legal_entity_id))
            .collect();
        let facts: BTreeSet<String> = ids.iter().map(|id| format!("{tenant}:fact-{id}")).collect();
        let customers: BTreeSet<String> = lines
            .iter()
            .map(|(_, l)| format!("{tenant}:{}", l.customer_id))
            .collect();
        let key_in = |set: &BTreeSet<String>, r: &SourceRecord| {
            r.key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
                .is_some_and(|k| set.contains(k))
        };
        let down = self.after(start);
        let billing = t.of("billing.charges");
        let erp = t.of("erp.postings");
        let analytics = t.of("analytics.facts");
        let crm = t.of("crm.account-health");
        let fanout_dlq = t.dlq("usage.rated");
        let (charges, postings, facts_read, snapshots, fanout_letters) = tokio::try_join!(
            read(self.ctx, &billing, down, |r| key_in(&subscriptions, r)),
            read(self.ctx, &erp, down, |r| key_in(&entities, r)),
            read(self.ctx, &analytics, down, |r| key_in(&facts, r)),
            read(self.ctx, &crm, down, |r| key_in(&customers, r)),
            read(self.ctx, &fanout_dlq, down, |r| key_in(&subscriptions, r)),
        )?;
        let charges = self.absorb(&billing, charges);
        let postings = self.absorb(&erp, postings);
        let facts_read = self.absorb(&analytics, facts_read);
        let snapshots = self.absorb(&crm, snapshots);
        let fanout_letters = self.absorb(&fanout_dlq, fanout_letters);

        let mut made: BTreeSet<Origin> = BTreeSet::new();
        for (letter, _) in self
            .decoded(fanout_letters, |l: &RatedUsage| {
                ids.contains(l.rating_id.as_str())
            })
            .await
        {
            self.letter(&fanout_dlq, &letter, "fanout").await;
        }
        for (record, charge) in self
            .decoded(charges, |c: &BillingCharge| {
                ids.contains(c.rating_id.as_str())
            })
            .await
        {
            let detail = format!(
                "{} {} {} to subscription {}, period {} to {}",
                symbol(&charge.charge_type),
                charge.amount,
                charge.currency,
                charge.subscription_id,
                format_date(charge.period_start),
                format_date(charge.period_end)
            );
            let id = Some(charge.rating_id.clone());
            self.step("fanout", "charge", &billing, &record, id, detail)
                .await;
            made.insert((billing.clone(), record.partition, record.offset));
        }
        for (record, posting) in self
            .decoded(postings, |p: &LedgerPosting| {
                ids.contains(p.rating_id.as_str())
            })
            .await
        {
            let detail = format!(
                "{} {} to legal entity {}, posting date {}, {} lines (mapping {})",
                posting.amount,
                posting.currency,
                posting.legal_entity_id,
                format_date(posting.posting_date),
                posting.lines.len(),
                posting.mapping_id
            );
            let id = Some(posting.rating_id.clone());
            self.step("fanout", "posting", &erp, &record, id, detail)
                .await;
            made.insert((erp.clone(), record.partition, record.offset));
        }
        for (record, fact) in self.decoded(facts_read, |_: &AnalyticsFact| true).await {
            let amount = fact.amount.map(|a| a.to_string()).unwrap_or_default();
            let detail = format!(
                "{} fact, revision {}, {amount} {}",
                symbol(&fact.fact_type),
                fact.source_revision,
                fact.currency.unwrap_or_default()
            );
            let id = Some(fact.fact_id.clone());
            self.step("fanout", "fact", &analytics, &record, id, detail)
                .await;
            made.insert((analytics.clone(), record.partition, record.offset));
        }
        // The customer's first snapshot stamped after the line that includes its usage.
        let occurred: i64 = lines
            .iter()
            .map(|(_, l)| l.metadata.occurred_at)
            .max()
            .unwrap_or(i64::MAX);
        let snapshot = self
            .decoded(snapshots, |s: &AccountHealthSnapshot| s.as_of >= occurred)
            .await
            .into_iter()
            .filter(|(r, _)| time_of(r) >= start)
            .min_by_key(|(r, _)| time_of(r));
        if let Some((record, snapshot)) = snapshot {
            let detail = format!(
                "{} as of {}: {} {} this period",
                symbol(&snapshot.health),
                micros(snapshot.as_of),
                snapshot.period_to_date_amount,
                snapshot.currency
            );
            let id = Some(snapshot.snapshot_id.clone());
            self.step("fanout", "snapshot", &crm, &record, id, detail)
                .await;
            made.insert((crm.clone(), record.partition, record.offset));
        }
        self.delivered(&made, start).await
    }

    /// The sinks' results and dead letters for the records in `made`.
    async fn delivered(&mut self, made: &BTreeSet<Origin>, start: i64) -> Result<(), ReplayError> {
        if made.is_empty() {
            return Ok(());
        }
        let t = self.topics;
        let prefix = format!("{}:", self.tenant);
        let results_topic = t.of("delivery.results");
        let names = [
            "billing.charges",
            "erp.postings",
            "analytics.facts",
            "crm.account-health",
        ];
        let [billing, erp, analytics, crm] = names.map(|n| t.dlq(n));
        let down = self.after(start);
        let from_made = |r: &SourceRecord| origin_of(r).is_some_and(|o| made.contains(&o));
        let (results, a, b, c, d) = tokio::try_join!(
            read(self.ctx, &results_topic, down, |r| has_key_prefix(
                r, &prefix
            )),
            read(self.ctx, &billing, down, from_made),
            read(self.ctx, &erp, down, from_made),
            read(self.ctx, &analytics, down, from_made),
            read(self.ctx, &crm, down, from_made),
        )?;
        let results = self.absorb(&results_topic, results);
        for (topic, letters) in [(billing, a), (erp, b), (analytics, c), (crm, d)] {
            for letter in self.absorb(&topic, letters) {
                self.letter(&topic, &letter, "sink").await;
            }
        }
        let mut results = self
            .decoded(results, |r: &DeliveryResult| {
                made.contains(&(r.source_topic.clone(), r.source_partition, r.source_offset))
            })
            .await;
        results.sort_by_key(|(record, _)| time_of(record));
        for (record, result) in results {
            let mut detail = format!(
                "{} {}@{} to {}, attempts {}",
                result.source_topic,
                result.source_partition,
                result.source_offset,
                symbol(&result.destination),
                result.attempts
            );
            if let Some(reference) = &result.destination_reference {
                detail.push_str(&format!(", reference {reference}"));
            }
            if let Some(code) = &result.error_code {
                let message = result.error_message.as_deref().unwrap_or_default();
                detail.push_str(&format!(", {code}: {message}"));
            }
            let what = symbol(&result.outcome).to_lowercase().replace('_', "-");
            let id = Some(result.delivery_key.clone());
            self.step(
                &result.metadata.source,
                &what,
                &results_topic,
                &record,
                id,
                detail,
            )
            .await;
        }
        Ok(())
    }
}
