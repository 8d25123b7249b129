//! `backbone.usage`: usage as measured, enriched with master data, rated, and summed per hour.

use std::collections::HashMap;

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::common::EventMetadata;
use super::{logical, Amount, Contract, Quantity};

/// One measurement of something a customer used, as a product platform publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.usage")]
pub struct UsageEvent {
    /// Envelope; `occurred_at` is when the usage happened and decides its billing period.
    pub metadata: EventMetadata,
    /// Customer account that used the product.
    pub customer_id: String,
    /// Subscription the usage belongs to, when the producer knows it; otherwise the enricher
    /// picks one.
    pub subscription_id: Option<String>,
    /// What was measured, e.g. `api_calls`; matches [`RateCharge::meter_id`](super::RateCharge).
    pub meter_id: String,
    /// How much was used, in `unit`; never negative.
    pub quantity: Quantity,
    /// Unit of `quantity`, e.g. `GB`; not checked (meters declare none).
    pub unit: String,
    /// Extra attributes used by charges that group by them; never personal data.
    pub dimensions: Option<HashMap<String, String>>,
    /// Value counted once per period by unique-count meters; should be a pseudonym.
    pub unique_value: Option<String>,
}

impl Contract for UsageEvent {
    const FULL_NAME: &'static str = "backbone.usage.UsageEvent";
}

/// A usage event joined with its customer, subscription and rate card, ready for rating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.usage")]
pub struct EnrichedUsage {
    /// Envelope written by the enricher; `event_id` derives from the usage event's key.
    pub metadata: EventMetadata,
    /// The usage event exactly as received.
    pub usage: UsageEvent,
    /// Subscription the usage is rated under.
    pub subscription_id: String,
    /// Plan of the subscription when the event was enriched; selects the rate card.
    pub plan_id: String,
    /// Version of the plan's rate card in effect on `billing_period_start`; 0 when none was
    /// known yet.
    pub rate_card_version: i32,
    /// Legal entity that bills the subscription.
    pub legal_entity_id: String,
    /// Billing currency of the subscription, ISO 4217 code.
    pub currency: String,
    /// First day (inclusive) of the billing period holding the event, in days since the epoch.
    #[avro(with = logical::date)]
    pub billing_period_start: i32,
    /// Day after that period (exclusive), in days since the epoch.
    #[avro(with = logical::date)]
    pub billing_period_end: i32,
}

impl Contract for EnrichedUsage {
    const FULL_NAME: &'static str = "backbone.usage.EnrichedUsage";
}

/// A cumulative-delta line from the rater: an accumulator's quantity and price before and
/// after a change; destinations add `delta_amount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.usage")]
pub struct RatedUsage {
    /// Envelope; `event_id` equals `rating_id`.
    pub metadata: EventMetadata,
    /// Content-derived id of the line; the idempotency key at destinations.
    pub rating_id: String,
    /// Sequence number of the line within its accumulator, from 1.
    pub revision: i64,
    /// Why the line was emitted.
    pub kind: RatingKind,
    /// Customer account billed.
    pub customer_id: String,
    /// Subscription the usage was rated under.
    pub subscription_id: String,
    /// Plan whose rate card priced the line.
    pub plan_id: String,
    /// Version of that rate card.
    pub rate_card_version: i32,
    /// Charge that priced the line.
    pub charge_id: String,
    /// Meter the charge aggregates.
    pub meter_id: String,
    /// The charge's group values as `key=value` pairs joined by `&`; empty when ungrouped.
    pub group_key: String,
    /// Legal entity that bills the line.
    pub legal_entity_id: String,
    /// First day (inclusive) of the period the amount is booked in, in days since the epoch.
    #[avro(with = logical::date)]
    pub period_start: i32,
    /// Day after that period (exclusive), in days since the epoch.
    #[avro(with = logical::date)]
    pub period_end: i32,
    /// Period-to-date quantity before this line, before free units.
    pub quantity_before: Quantity,
    /// Period-to-date quantity after this line, before free units.
    pub quantity_after: Quantity,
    /// Price of `quantity_before` under the charge.
    pub amount_before: Amount,
    /// Price of `quantity_after` under the charge.
    pub amount_after: Amount,
    /// `amount_after - amount_before`: what this line adds; may be negative or zero.
    pub delta_amount: Amount,
    /// Currency of all amounts, ISO 4217 code.
    pub currency: String,
    /// Number of usage events folded into the line.
    pub source_event_count: i64,
    /// Idempotency keys of those events; may be truncated, the count is authoritative.
    #[avro(default = "[]")]
    pub source_event_ids: Vec<String>,
    /// For adjustments, first day of the closed period corrected.
    #[avro(with = logical::optional_date, default = "null")]
    pub adjusted_period_start: Option<i32>,
    /// For adjustments, day after the closed period corrected.
    #[avro(with = logical::optional_date, default = "null")]
    pub adjusted_period_end: Option<i32>,
}

impl Contract for RatedUsage {
    const FULL_NAME: &'static str = "backbone.usage.RatedUsage";
}

/// Why a rated line was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.usage")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RatingKind {
    #[doc = concat!("In-order usage in the open period.")]
    Normal,
    #[doc = concat!("Late usage that changes the open period's earlier result.")]
    Restatement,
    #[doc = concat!("Usage of a closed period booked into the open one.")]
    Adjustment,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

/// Usage of one meter of one subscription summed over an hourly event-time window; late
/// usage re-emits the window with a higher revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.usage")]
pub struct UsageWindowAggregate {
    /// Envelope; `occurred_at` is `window_end`.
    pub metadata: EventMetadata,
    /// Content-derived id of the window; the upsert key.
    pub aggregate_id: String,
    /// Version of the window's figures, from 1.
    pub revision: i64,
    /// Customer account of the subscription.
    pub customer_id: String,
    /// Subscription aggregated.
    pub subscription_id: String,
    /// Meter aggregated.
    pub meter_id: String,
    /// Unit of the quantities.
    pub unit: String,
    /// Start of the window (inclusive), on the hour, in microseconds since the epoch.
    #[avro(with = logical::timestamp_micros)]
    pub window_start: i64,
    /// End of the window (exclusive), one hour later.
    #[avro(with = logical::timestamp_micros)]
    pub window_end: i64,
    /// Number of distinct usage events in the window.
    pub event_count: i64,
    /// Sum of the quantities.
    pub quantity_sum: Quantity,
    /// Smallest quantity.
    pub quantity_min: Quantity,
    /// Largest quantity.
    pub quantity_max: Quantity,
}

impl Contract for UsageWindowAggregate {
    const FULL_NAME: &'static str = "backbone.usage.UsageWindowAggregate";
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::common::tests::{metadata, DEC_1, NOV_1, OCCURRED_AT, OCT_1};
    use crate::types::tests::{check, dec};

    pub(crate) fn usage_event() -> UsageEvent {
        UsageEvent {
            metadata: metadata("api-gateway", "backbone.usage.recorded", "req-8f14e45f"),
            customer_id: "cust-42".into(),
            subscription_id: None,
            meter_id: "storage_gb".into(),
            quantity: dec("12.345678"),
            unit: "GB".into(),
            dimensions: Some(HashMap::from([
                ("region".into(), "eu-central-1".into()),
                ("tier".into(), "hot".into()),
            ])),
            unique_value: None,
        }
    }

    #[test]
    pub(crate) fn usage_event_matches_its_contract() {
        check(&usage_event());
        check(&UsageEvent {
            subscription_id: Some("sub-42".into()),
            meter_id: "active_users".into(),
            quantity: dec("1"),
            unit: "user".into(),
            dimensions: None,
            unique_value: Some("u-5f2b9c".into()),
            ..usage_event()
        });
    }

    #[test]
    pub(crate) fn enriched_usage_matches_its_contract() {
        check(&EnrichedUsage {
            metadata: metadata("usage-enricher", "backbone.usage.enriched", "enr-8f14e45f"),
            usage: usage_event(),
            subscription_id: "sub-42".into(),
            plan_id: "pro".into(),
            rate_card_version: 4,
            legal_entity_id: "le-de".into(),
            currency: "EUR".into(),
            billing_period_start: NOV_1,
            billing_period_end: DEC_1,
        });
    }

    #[test]
    pub(crate) fn rated_usage_matches_its_contract() {
        check(&RatedUsage {
            metadata: metadata("usage-rater", "backbone.usage.rated", "rat-3c59dc04"),
            rating_id: "rat-3c59dc04".into(),
            revision: 17,
            kind: RatingKind::Adjustment,
            customer_id: "cust-42".into(),
            subscription_id: "sub-42".into(),
            plan_id: "pro".into(),
            rate_card_version: 4,
            charge_id: "storage".into(),
            meter_id: "storage_gb".into(),
            group_key: "region=eu-central-1".into(),
            legal_entity_id: "le-de".into(),
            period_start: NOV_1,
            period_end: DEC_1,
            quantity_before: dec("1024.5"),
            quantity_after: dec("1036.845678"),
            amount_before: dec("20.49"),
            amount_after: dec("20.736913"),
            delta_amount: dec("0.246913"),
            currency: "EUR".into(),
            source_event_count: 1,
            source_event_ids: vec!["acme/api-gateway/req-8f14e45f".into()],
            adjusted_period_start: Some(OCT_1),
            adjusted_period_end: Some(NOV_1),
        });
    }

    #[test]
    pub(crate) fn usage_window_aggregate_matches_its_contract() {
        let window_start = OCCURRED_AT - 30 * 60 * 1_000_000;
        check(&UsageWindowAggregate {
            metadata: metadata(
                "usage-windower",
                "backbone.usage.windowed",
                "win-1679091c@2",
            ),
            aggregate_id: "win-1679091c".into(),
            revision: 2,
            customer_id: "cust-42".into(),
            subscription_id: "sub-42".into(),
            meter_id: "storage_gb".into(),
            unit: "GB".into(),
            window_start,
            window_end: window_start + 3_600_000_000,
            event_count: 3,
            quantity_sum: dec("37.037034"),
            quantity_min: dec("0.000000001"),
            quantity_max: dec("24691356000000.5"),
        });
    }
}
