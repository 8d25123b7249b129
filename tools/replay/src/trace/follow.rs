//! The first hops of a trace, each reading the topics of one step of the pipeline from the time
//! of the records the hop before found: the event's copies and the validator's letters; the
//! validator's output and the enricher's letters (by the idempotency-key header the validator
//! adds), the enricher's parking (its changelog), its output and the rater's letters (decoded);
//! the rated lines and the window. What came of the lines is [`super::downstream`]'s.

use std::collections::BTreeSet;

use backbone_calendar::{format_date, format_rfc3339_ms};
use backbone_core::dead_letter::headers as dlq;
use backbone_rating::{window_aggregate_id, window_start};
use backbone_schemas::types::{
    Contract, EnrichedUsage, RatedUsage, UsageEvent, UsageWindowAggregate,
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
pub(super) type Origin = (String, i32, i64);

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

pub(super) struct Tracer<'a> {
    pub(super) ctx: &'a Context,
    pub(super) codec: WireCodec,
    pub(super) schemas: Schemas,
    pub(super) topics: &'a TopicNames,
    pub(super) tenant: &'a str,
    pub(super) within_ms: i64,
    pub(super) read: u64,
    pub(super) missing: BTreeSet<String>,
    pub(super) steps: Vec<Step>,
}

pub(super) fn has_key_prefix(record: &SourceRecord, prefix: &str) -> bool {
    record
        .key
        .as_deref()
        .is_some_and(|k| k.starts_with(prefix.as_bytes()))
}

fn has_key(record: &SourceRecord, key: &str) -> bool {
    record.key.as_deref() == Some(key.as_bytes())
}

pub(super) fn time_of(record: &SourceRecord) -> i64 {
    record.timestamp_ms.unwrap_or(i64::MAX)
}

/// Micros since the epoch as RFC 3339.
pub(super) fn micros(at: i64) -> String {
    format_rfc3339_ms(at.div_euclid(1000))
}

/// An Avro enum's symbol, as the contract spells it.
pub(super) fn symbol<T: serde::Serialize>(value: &T) -> String {
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
pub(super) fn origin_of(letter: &SourceRecord) -> Option<Origin> {
    Some((
        letter.header(dlq::ORIGIN_TOPIC)?.to_owned(),
        letter.header(dlq::ORIGIN_PARTITION)?.parse().ok()?,
        letter.header(dlq::ORIGIN_OFFSET)?.parse().ok()?,
    ))
}

impl Tracer<'_> {
    /// Records read from `topic` within `window` that `keep` accepts, counting what was read.
    pub(super) fn absorb(&mut self, topic: &str, reading: Reading) -> Vec<SourceRecord> {
        self.read += reading.read;
        if reading.missing {
            self.missing.insert(topic.to_owned());
        }
        reading.records
    }

    /// The window of what a record stamped at `from_ms` may have caused.
    pub(super) fn after(&self, from_ms: i64) -> Window {
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
    pub(super) async fn decoded<T: Contract>(
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

    pub(super) async fn step(
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

    pub(super) async fn letter(&mut self, topic: &str, letter: &SourceRecord, stage: &str) {
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
        let usage = &enrichment.usage;
        let window = window_aggregate_id(
            self.tenant,
            &enrichment.subscription_id,
            &usage.meter_id,
            window_start(usage.metadata.occurred_at),
        );
        let window_key = format!("{}:{window}", self.tenant);
        let down = self.after(enriched_at);
        let (rated, windows) = tokio::try_join!(
            read(self.ctx, &rated_topic, down, |r| has_key(r, &key)),
            read(self.ctx, &windows_topic, down, |r| has_key(r, &window_key)),
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
        let counted = self
            .decoded(windows, |w: &UsageWindowAggregate| w.aggregate_id == window)
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
}
