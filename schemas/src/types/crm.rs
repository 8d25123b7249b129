//! `backbone.crm`: account health for the CRM.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::common::EventMetadata;
use super::{logical, Amount, Contract, Percent};

/// A point-in-time summary of a customer's usage and spend for account managers; later
/// snapshots supersede earlier ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.crm")]
pub struct AccountHealthSnapshot {
    /// Envelope; `event_id` equals `snapshot_id`, `occurred_at` equals `as_of`.
    pub metadata: EventMetadata,
    /// Content-derived id; the delivery key at the CRM.
    pub snapshot_id: String,
    /// Customer account summarised.
    pub customer_id: String,
    /// Event time up to which usage is included, in microseconds since the epoch.
    #[avro(with = logical::timestamp_micros)]
    pub as_of: i64,
    /// Account id in the CRM, when master data knows it.
    pub crm_account_id: Option<String>,
    /// Health rating from the usage trend (last 7 days against the 7 before).
    pub health: HealthStatus,
    /// Subscriptions with rated usage whose latest billing period has not ended.
    pub active_subscriptions: i32,
    /// First day (inclusive) of the current billing period, in days since the epoch.
    #[avro(with = logical::date)]
    pub period_start: i32,
    /// Day after that period (exclusive), in days since the epoch.
    #[avro(with = logical::date)]
    pub period_end: i32,
    /// Rated usage of the current period so far.
    pub period_to_date_amount: Amount,
    /// Rated usage of the whole previous period; none in a customer's first period.
    pub previous_period_amount: Option<Amount>,
    /// Currency of the amounts, ISO 4217 code.
    pub currency: String,
    /// Change of the rated amount of the last 7 days against the 7 before, in percent,
    /// clamped to ±999.999999.
    pub usage_change_percent: Option<Percent>,
    /// Event time of the latest usage, in microseconds since the epoch.
    #[avro(with = logical::optional_timestamp_micros, default = "null")]
    pub last_usage_at: Option<i64>,
}

impl Contract for AccountHealthSnapshot {
    const FULL_NAME: &'static str = "backbone.crm.AccountHealthSnapshot";
}

/// Coarse health rating of a customer account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.crm")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    #[doc = concat!("Usage steady or growing.")]
    Healthy,
    #[doc = concat!("Worth a look.")]
    Watch,
    #[doc = concat!("Likely to churn or not pay.")]
    AtRisk,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::common::tests::{metadata, DEC_1, NOV_1, OCCURRED_AT};
    use crate::types::tests::{check, dec};

    #[test]
    pub(crate) fn account_health_snapshot_matches_its_contract() {
        let snapshot = AccountHealthSnapshot {
            metadata: metadata("crm-fanout", "backbone.crm.account-health", "snap-a87ff679"),
            snapshot_id: "snap-a87ff679".into(),
            customer_id: "cust-42".into(),
            as_of: OCCURRED_AT,
            crm_account_id: Some("0015g00000AbCdE".into()),
            health: HealthStatus::AtRisk,
            active_subscriptions: 2,
            period_start: NOV_1,
            period_end: DEC_1,
            period_to_date_amount: dec("812.345678"),
            previous_period_amount: Some(dec("2031.5")),
            currency: "EUR".into(),
            usage_change_percent: Some(dec("-999.999999")),
            last_usage_at: Some(OCCURRED_AT - 5_000_000),
        };
        check(&snapshot);
        check(&AccountHealthSnapshot {
            crm_account_id: None,
            health: HealthStatus::Healthy,
            previous_period_amount: None,
            usage_change_percent: None,
            last_usage_at: None,
            ..snapshot
        });
    }
}
