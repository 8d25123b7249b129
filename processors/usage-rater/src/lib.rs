//! Rates enriched usage into billable, cumulative-delta lines.
//!
//! Input: `EnrichedUsage` (keyed by subscription, so a subscription's usage meets its
//! accumulators on one partition). Reference data: the rate cards, a global table built from
//! `master.rate-cards` (keyed `<tenant>:<plan>`). For each charge of the plan that prices the
//! event's meter, the rater adds the event to the period-to-date accumulator of (subscription,
//! charge, group, period) held in partition state, prices the aggregate before and after with
//! `backbone-rating`, and emits a `RatedUsage` line with `delta = price(after) - price(before)`,
//! a content-derived `rating_id` and the accumulator's next revision. It also keeps hourly
//! `UsageWindowAggregate`s per (subscription, meter).
//!
//! - Duplicates (same idempotency key) are dropped and counted by the runtime's dedup, unless
//!   `dedup` is off (exactly-once delivery behind the validator's dedup).
//! - Lateness is judged against the input record's timestamp (stable across redeliveries):
//!   events older than `late_window` go to the DLQ as `too_late`, events further ahead than
//!   `future_window` as `in_future`.
//! - A period is closed for a subscription once usage of a later period has been rated. Late
//!   usage of a closed period still moves that period's accumulator (so the price stays exact)
//!   but its line is booked into the latest open period as an `ADJUSTMENT` naming the corrected
//!   period. Late usage inside the open period is a `RESTATEMENT`.
//! - A plan whose rate card is not known yet is retried (it may be on its way), then
//!   dead-lettered as `retries_exhausted`; a card that cannot price the event
//!   (`rating_error`), a currency mismatch or a meter no charge prices are permanent.

use std::sync::Arc;
use std::time::Duration;

use backbone_calendar::now_micros;
use backbone_core::app::{App, RegistryAccess};
use backbone_core::config::{ConfigError, Validate};
use backbone_core::{
    IdempotencyKey, InputRecord, OutputRecord, Prefetch, ProcessError, Processor, State, StateSpec,
};
use backbone_rating::{
    card_for_period, rate, rate_card_key, rate_card_prefix, window_aggregate_id, window_start,
    Accumulator, MeterEvent, RatingKey, WINDOW_MICROS,
};
use backbone_schemas::types::{
    Contract, EnrichedUsage, EventMetadata, Quantity, RateCard, RateCharge, RatedUsage, RatingKind,
    UsageWindowAggregate,
};
use backbone_schemas::wire::encode_framed;
use backbone_schemas::{OutputContracts, WireCodec};
use serde::{Deserialize, Serialize};

/// The global table of rate cards.
const RATE_CARDS: &str = "rate_cards";
/// Period-to-date accumulators.
const ACCUMULATORS: &str = "accumulators";
/// Unique values seen per accumulator, for UNIQUE_COUNT.
const UNIQUE: &str = "unique";
/// Hourly window figures.
const WINDOWS: &str = "windows";
/// The latest period rated per subscription: what counts as open.
const PERIODS: &str = "periods";
use backbone_calendar::DAY_MICROS;

/// The `[processor]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaterSettings {
    /// Enriched usage to rate.
    pub input_topic: String,
    /// Compacted topic of rate cards, keyed `<tenant>:<plan>`.
    pub rate_cards_topic: String,
    /// Where rated lines go.
    pub output_topic: String,
    /// Where hourly window aggregates go.
    pub aggregates_topic: String,
    /// How old an event may be and still be rated.
    #[serde(with = "humantime_serde")]
    pub late_window: Duration,
    /// How far ahead of the record's time an event may be.
    #[serde(with = "humantime_serde")]
    pub future_window: Duration,
    /// Drop usage whose idempotency key was seen before (within `runtime.state.dedup_ttl`).
    /// Off only under exactly-once delivery behind a stage that drops producers' duplicates
    /// (the validator): then transactions alone keep a redelivered input from counting twice.
    pub dedup: bool,
}

impl Default for RaterSettings {
    fn default() -> Self {
        Self {
            input_topic: "usage.enriched".to_owned(),
            rate_cards_topic: "master.rate-cards".to_owned(),
            output_topic: "usage.rated".to_owned(),
            aggregates_topic: "usage.window-aggregates".to_owned(),
            late_window: Duration::from_secs(35 * 24 * 3600),
            future_window: Duration::from_secs(300),
            dedup: true,
        }
    }
}

impl Validate for RaterSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("input_topic", &self.input_topic),
            ("rate_cards_topic", &self.rate_cards_topic),
            ("output_topic", &self.output_topic),
            ("aggregates_topic", &self.aggregates_topic),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key: format!("processor.{key}"),
                    message: "must not be empty".to_owned(),
                });
            }
        }
        if self.late_window.is_zero() {
            return Err(ConfigError::Invalid {
                key: "processor.late_window".to_owned(),
                message: "must be more than 0s".to_owned(),
            });
        }
        Ok(())
    }
}

/// The processor.
#[derive(Debug, Clone)]
pub struct UsageRater {
    settings: RaterSettings,
    outputs: Arc<OutputContracts>,
}

impl UsageRater {
    /// A rater decoding and encoding through `codec`.
    pub fn new(settings: RaterSettings, codec: WireCodec) -> Self {
        let outputs = Arc::new(OutputContracts::new(
            codec,
            vec![
                (settings.output_topic.clone(), RatedUsage::FULL_NAME),
                (
                    settings.aggregates_topic.clone(),
                    UsageWindowAggregate::FULL_NAME,
                ),
            ],
        ));
        Self { settings, outputs }
    }

    fn codec(&self) -> &WireCodec {
        self.outputs.codec()
    }
}

impl App for UsageRater {
    const NAME: &'static str = "usage-rater";
    const ABOUT: &'static str =
        "Rates enriched usage against rate cards into cumulative-delta RatedUsage lines";
    type Settings = RaterSettings;

    fn build(settings: RaterSettings, registry: &RegistryAccess) -> Self {
        Self::new(settings, WireCodec::new(registry.clone()))
    }
}

impl Processor for UsageRater {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.settings.input_topic.clone()]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![
            self.settings.output_topic.clone(),
            self.settings.aggregates_topic.clone(),
        ]
    }

    /// A window's revision is superseded by the next of its key: only the newest of a batch
    /// goes out. Each rated line has an id of its own, so every one goes out.
    fn table_topics(&self) -> Vec<String> {
        vec![self.settings.aggregates_topic.clone()]
    }

    fn state(&self) -> StateSpec {
        let spec = StateSpec::stateless()
            .store(ACCUMULATORS)
            .store(UNIQUE)
            .store(WINDOWS)
            .store(PERIODS);
        let spec = if self.settings.dedup {
            spec.with_dedup()
        } else {
            spec
        };
        spec.global(RATE_CARDS, &self.settings.rate_cards_topic)
    }

    fn prefetch(&self) -> Option<Arc<dyn Prefetch>> {
        Some(self.outputs.clone())
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let value = record
            .value
            .ok_or_else(|| ProcessError::permanent("missing_value", "record has no value"))?;
        let enriched: EnrichedUsage = self
            .codec()
            .decode_cached_as(value, EnrichedUsage::schema())
            .map_err(ProcessError::from)?;
        let rated_id = self.outputs.id(&self.settings.output_topic)?;
        let aggregate_id = self.outputs.id(&self.settings.aggregates_topic)?;
        let usage = &enriched.usage;
        let m = &usage.metadata;
        let input_key = format!("{}/{}/{}", m.tenant_id, m.source, m.event_id);
        self.check_time(record, m.occurred_at)?;
        if self.settings.dedup
            && !state.first_seen(&IdempotencyKey {
                tenant_id: &m.tenant_id,
                source: &m.source,
                event_id: &m.event_id,
            })?
        {
            return Ok(Vec::new());
        }
        let card = self.rate_card(state, &enriched)?;
        let charges: Vec<&RateCharge> = card
            .charges
            .iter()
            .filter(|c| c.meter_id == usage.meter_id)
            .collect();
        if charges.is_empty() {
            return Err(ProcessError::permanent(
                "unknown_meter",
                format!(
                    "plan `{}` has no charge for meter `{}`",
                    card.plan_id, usage.meter_id
                ),
            ));
        }

        let period = (enriched.billing_period_start, enriched.billing_period_end);
        let subscription_key = join(&[&m.tenant_id, &enriched.subscription_id]);
        let open = self.open_period(state, &subscription_key, period)?;
        let closed = open.0 > period.0;
        let key = Some(format!("{}:{}", m.tenant_id, enriched.subscription_id).into_bytes());
        let mut outputs = Vec::with_capacity(charges.len() + 1);
        for charge in charges {
            let line =
                self.rate_charge(state, &enriched, &card, charge, open, closed, &input_key)?;
            outputs.push(OutputRecord {
                topic: self.settings.output_topic.clone(),
                key: key.clone(),
                value: Some(encode(rated_id, &line)?),
                headers: Vec::new(),
            });
        }
        let window = self.window(state, &enriched)?;
        // Keyed by the window: its revisions are a table's changes (`table_topics`).
        let window_key = format!("{}:{}", m.tenant_id, window.aggregate_id);
        outputs.push(OutputRecord {
            topic: self.settings.aggregates_topic.clone(),
            key: Some(window_key.into_bytes()),
            value: Some(encode(aggregate_id, &window)?),
            headers: Vec::new(),
        });
        Ok(outputs)
    }
}

impl UsageRater {
    fn check_time(&self, record: &InputRecord<'_>, occurred_at: i64) -> Result<(), ProcessError> {
        let now = record
            .timestamp_ms
            .map(|ms| ms.saturating_mul(1000))
            .unwrap_or_else(now_micros);
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        if occurred_at < now.saturating_sub(micros(self.settings.late_window)) {
            return Err(ProcessError::permanent(
                "too_late",
                format!(
                    "event time is {} days before the record's, beyond the {:?} window",
                    // Saturating: an event time near i64::MIN is bad input, not a crash.
                    now.saturating_sub(occurred_at) / DAY_MICROS,
                    self.settings.late_window
                ),
            ));
        }
        if occurred_at > now.saturating_add(micros(self.settings.future_window)) {
            return Err(ProcessError::permanent(
                "in_future",
                format!(
                    "event time is {} s after the record's, beyond the {:?} allowed",
                    occurred_at.saturating_sub(now) / 1_000_000,
                    self.settings.future_window
                ),
            ));
        }
        Ok(())
    }

    fn rate_card(
        &self,
        state: &State<'_>,
        enriched: &EnrichedUsage,
    ) -> Result<Arc<RateCard>, ProcessError> {
        let tenant = &enriched.usage.metadata.tenant_id;
        let plan = &enriched.plan_id;
        let prefix = rate_card_prefix(tenant, plan);
        let mut cards = Vec::new();
        for (key, bytes) in state.global_prefix(RATE_CARDS, prefix.as_bytes())? {
            // A card that does not decode is no fault of the usage: dead-lettered under the
            // card's reason, naming it, to be replayed once the card is fixed.
            let card: Arc<RateCard> = self
                .codec()
                .decode_shared(&bytes, RateCard::schema())
                .map_err(|e| match ProcessError::from(e) {
                    ProcessError::Permanent { detail, .. } => ProcessError::permanent(
                        "invalid_rate_card",
                        format!(
                            "`{}` does not decode: {detail}",
                            String::from_utf8_lossy(&key)
                        ),
                    ),
                    outage => outage,
                })?;
            cards.push(card);
        }
        let period_start = enriched.billing_period_start;
        let Some(card) = card_for_period(&cards, plan, period_start) else {
            // It may be on its way: retried, then dead-lettered as retries_exhausted.
            return Err(ProcessError::Transient(format!(
                "no rate card of plan `{tenant}:{plan}` in effect for the period from day                  {period_start} yet"
            )));
        };
        let key = rate_card_key(tenant, plan, card.version);
        let card = Arc::clone(card);
        if card.currency != enriched.currency {
            return Err(ProcessError::permanent(
                "currency_mismatch",
                format!(
                    "rate card `{key}` is in {}, the subscription bills in {}",
                    card.currency, enriched.currency
                ),
            ));
        }
        Ok(card)
    }

    /// The latest period rated for the subscription (`subscription_key`: tenant and id), now
    /// including `period`.
    fn open_period(
        &self,
        state: &mut State<'_>,
        subscription_key: &[u8],
        period: (i32, i32),
    ) -> Result<(i32, i32), ProcessError> {
        let stored: Option<(i32, i32)> = state.get_json(PERIODS, subscription_key)?;
        match stored {
            Some(open) if open.0 >= period.0 => Ok(open),
            _ => {
                state.put_json(PERIODS, subscription_key, &period)?;
                Ok(period)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rate_charge(
        &self,
        state: &mut State<'_>,
        enriched: &EnrichedUsage,
        card: &RateCard,
        charge: &RateCharge,
        open: (i32, i32),
        closed: bool,
        input_key: &str,
    ) -> Result<RatedUsage, ProcessError> {
        let usage = &enriched.usage;
        let m = &usage.metadata;
        let group_key = group_key(charge, usage.dimensions.as_ref());
        // Ids are unique within a tenant only: every key starts with the tenant.
        let acc_key = join(&[
            &m.tenant_id,
            &enriched.subscription_id,
            &charge.charge_id,
            &group_key,
            &enriched.billing_period_start.to_string(),
        ]);
        let before: Accumulator = state.get_json(ACCUMULATORS, &acc_key)?.unwrap_or_default();
        let new_unique_value = match &usage.unique_value {
            Some(value) => {
                let key = [acc_key.as_slice(), b"\0", value.as_bytes()].concat();
                let new = state.get(UNIQUE, &key)?.is_none();
                if new {
                    state.put(UNIQUE, &key, b"")?;
                }
                new
            }
            None => false,
        };
        let mut after = before.clone();
        after.add(&MeterEvent {
            quantity: usage.quantity,
            occurred_at: m.occurred_at,
            event_id: input_key,
            new_unique_value,
        });
        after.revision += 1;
        let delta = rate(charge, &before, &after)
            .map_err(|e| ProcessError::permanent("rating_error", e.to_string()))?;
        state.put_json(ACCUMULATORS, &acc_key, &after)?;

        let late = before
            .latest
            .as_ref()
            .is_some_and(|(time, _, _)| m.occurred_at < *time);
        let (kind, booked, adjusted) = if closed {
            (
                RatingKind::Adjustment,
                open,
                Some((enriched.billing_period_start, enriched.billing_period_end)),
            )
        } else if late {
            (
                RatingKind::Restatement,
                (enriched.billing_period_start, enriched.billing_period_end),
                None,
            )
        } else {
            (
                RatingKind::Normal,
                (enriched.billing_period_start, enriched.billing_period_end),
                None,
            )
        };
        let rating_id = RatingKey {
            tenant_id: &m.tenant_id,
            subscription_id: &enriched.subscription_id,
            charge_id: &charge.charge_id,
            group_key: &group_key,
            period_start: enriched.billing_period_start,
            input: input_key,
        }
        .rating_id();
        Ok(RatedUsage {
            metadata: EventMetadata {
                tenant_id: m.tenant_id.clone(),
                event_id: rating_id.clone(),
                source: Self::NAME.to_owned(),
                r#type: "backbone.usage.rated".to_owned(),
                occurred_at: m.occurred_at,
                // Derived from the input, so a redelivery reproduces the same bytes.
                produced_at: enriched.metadata.produced_at,
                trace: enriched.metadata.trace.clone(),
                schema_version: None,
            },
            rating_id,
            revision: after.revision,
            kind,
            customer_id: usage.customer_id.clone(),
            subscription_id: enriched.subscription_id.clone(),
            plan_id: card.plan_id.clone(),
            rate_card_version: card.version,
            charge_id: charge.charge_id.clone(),
            meter_id: usage.meter_id.clone(),
            group_key,
            legal_entity_id: enriched.legal_entity_id.clone(),
            period_start: booked.0,
            period_end: booked.1,
            quantity_before: delta.quantity_before,
            quantity_after: delta.quantity_after,
            amount_before: delta.amount_before,
            amount_after: delta.amount_after,
            delta_amount: delta.delta,
            currency: card.currency.clone(),
            source_event_count: 1,
            source_event_ids: vec![input_key.to_owned()],
            adjusted_period_start: adjusted.map(|p| p.0),
            adjusted_period_end: adjusted.map(|p| p.1),
        })
    }

    /// Adds the event to its hourly window and returns the window's new figures.
    fn window(
        &self,
        state: &mut State<'_>,
        enriched: &EnrichedUsage,
    ) -> Result<UsageWindowAggregate, ProcessError> {
        let usage = &enriched.usage;
        let m = &usage.metadata;
        let start = window_start(m.occurred_at);
        let key = join(&[
            &m.tenant_id,
            &enriched.subscription_id,
            &usage.meter_id,
            &start.to_string(),
        ]);
        let mut figures: WindowFigures = state.get_json(WINDOWS, &key)?.unwrap_or_default();
        let quantity = usage.quantity.unscaled();
        figures.events += 1;
        figures.sum = figures.sum.saturating_add(quantity);
        figures.min = Some(figures.min.map_or(quantity, |v| v.min(quantity)));
        figures.max = Some(figures.max.map_or(quantity, |v| v.max(quantity)));
        figures.revision += 1;
        state.put_json(WINDOWS, &key, &figures)?;
        let quantity = |unscaled: i128| {
            Quantity::from_unscaled(unscaled)
                .map_err(|e| ProcessError::permanent("rating_error", e.to_string()))
        };
        let aggregate_id = window_aggregate_id(
            &m.tenant_id,
            &enriched.subscription_id,
            &usage.meter_id,
            start,
        );
        Ok(UsageWindowAggregate {
            metadata: EventMetadata {
                tenant_id: m.tenant_id.clone(),
                event_id: format!("{aggregate_id}-{}", figures.revision),
                source: Self::NAME.to_owned(),
                r#type: "backbone.usage.window-aggregated".to_owned(),
                occurred_at: start + WINDOW_MICROS,
                produced_at: enriched.metadata.produced_at,
                trace: enriched.metadata.trace.clone(),
                schema_version: None,
            },
            aggregate_id,
            revision: figures.revision,
            customer_id: usage.customer_id.clone(),
            subscription_id: enriched.subscription_id.clone(),
            meter_id: usage.meter_id.clone(),
            unit: usage.unit.clone(),
            window_start: start,
            window_end: start + WINDOW_MICROS,
            event_count: i64::try_from(figures.events).unwrap_or(i64::MAX),
            quantity_sum: quantity(figures.sum)?,
            quantity_min: quantity(figures.min.unwrap_or(0))?,
            quantity_max: quantity(figures.max.unwrap_or(0))?,
        })
    }
}

/// Running figures of one hourly window.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WindowFigures {
    events: u64,
    sum: i128,
    min: Option<i128>,
    max: Option<i128>,
    revision: i64,
}

/// The charge's group values from the event's dimensions, `key=value` joined by `&` in the
/// charge's order; a missing dimension groups as empty.
fn group_key(
    charge: &RateCharge,
    dimensions: Option<&std::collections::HashMap<String, String>>,
) -> String {
    charge
        .group_by
        .iter()
        .map(|name| {
            let value = dimensions
                .and_then(|d| d.get(name))
                .map_or("", String::as_str);
            format!("{name}={value}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Fields joined by NUL, which ids and dimension values do not contain.
fn join(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

fn encode<T: Contract>(id: u32, value: &T) -> Result<Vec<u8>, ProcessError> {
    encode_framed(id, value).map_err(|e| ProcessError::permanent("rating_error", e.to_string()))
}
