//! `backbone.analytics`: facts flattened for the analytics store.

use std::collections::HashMap;

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::common::EventMetadata;
use super::{logical, Amount, Contract, Quantity};

/// One analytics row: a business fact flattened to shared dimensions and measures, upserted
/// by `fact_id` so replays overwrite rather than duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.analytics")]
pub struct AnalyticsFact {
    /// Envelope; `event_id` equals `fact_id`, `occurred_at` equals `event_time`.
    pub metadata: EventMetadata,
    /// Content-derived id of the fact; the upsert key.
    pub fact_id: String,
    /// Kind of fact, which says which optional dimensions are set.
    pub fact_type: FactType,
    /// Revision of the source record (1 when it has none); the highest one wins.
    pub source_revision: i64,
    /// Business time of the fact, in microseconds since the epoch.
    #[avro(with = logical::timestamp_micros)]
    pub event_time: i64,
    /// Reporting date in the legal entity's time zone, in days since the epoch.
    #[avro(with = logical::date)]
    pub fact_date: i32,
    /// Customer account the fact is about.
    pub customer_id: String,
    /// Legal entity, when the fact has one.
    pub legal_entity_id: Option<String>,
    /// Subscription, for usage and subscription invoices.
    pub subscription_id: Option<String>,
    /// Product, for order and invoice facts.
    pub product_id: Option<String>,
    /// Rate-card charge, for rated usage.
    pub charge_id: Option<String>,
    /// Meter, for usage facts.
    pub meter_id: Option<String>,
    /// Quantity measure, when the fact has one.
    pub quantity: Option<Quantity>,
    /// Money measure in `currency`, when the fact has one.
    pub amount: Option<Amount>,
    /// Currency of `amount`, ISO 4217 code; none when `amount` is none.
    pub currency: Option<String>,
    /// Further low-cardinality dimensions as text; never personal data.
    #[avro(default = "{}")]
    pub attributes: HashMap<String, String>,
}

impl Contract for AnalyticsFact {
    const FULL_NAME: &'static str = "backbone.analytics.AnalyticsFact";
}

/// Business fact an analytics row describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.analytics")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FactType {
    #[doc = concat!("A rated-usage line.")]
    RatedUsage,
    #[doc = concat!("An hourly usage window.")]
    UsageWindow,
    #[doc = concat!("A sales order.")]
    SalesOrder,
    #[doc = concat!("An invoice.")]
    Invoice,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::common::tests::{metadata, OCCURRED_AT};
    use crate::types::tests::{check, dec};

    #[test]
    pub(crate) fn analytics_fact_matches_its_contract() {
        let fact = AnalyticsFact {
            metadata: metadata(
                "analytics-fanout",
                "backbone.analytics.fact",
                "rat-3c59dc04",
            ),
            fact_id: "rat-3c59dc04".into(),
            fact_type: FactType::RatedUsage,
            source_revision: 17,
            event_time: OCCURRED_AT,
            fact_date: 20_771,
            customer_id: "cust-42".into(),
            legal_entity_id: Some("le-de".into()),
            subscription_id: Some("sub-42".into()),
            product_id: None,
            charge_id: Some("storage".into()),
            meter_id: Some("storage_gb".into()),
            quantity: Some(dec("12.345678")),
            amount: Some(dec("0.246913")),
            currency: Some("EUR".into()),
            attributes: HashMap::from([
                ("plan_id".into(), "pro".into()),
                ("region".into(), "eu-central-1".into()),
            ]),
        };
        check(&fact);
        check(&AnalyticsFact {
            fact_type: FactType::UsageWindow,
            charge_id: None,
            amount: None,
            currency: None,
            attributes: HashMap::new(),
            ..fact
        });
    }
}
