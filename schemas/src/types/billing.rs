//! `backbone.billing`: usage charges in the shape the billing system takes.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::common::EventMetadata;
use super::{logical, Amount, Contract, Quantity};

/// An amount to add to a subscription's open billing period, one per rated-usage line;
/// `rating_id` is the billing system's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.billing")]
pub struct BillingCharge {
    /// Envelope; `event_id` equals `rating_id`.
    pub metadata: EventMetadata,
    /// `rating_id` of the rated-usage line carried; the delivery and idempotency key.
    pub rating_id: String,
    /// Revision of that line within its accumulator.
    pub revision: i64,
    /// Whether the charge is open-period usage or a correction of a closed period.
    pub charge_type: BillingChargeType,
    /// Customer account billed.
    pub customer_id: String,
    /// Subscription the charge is added to.
    pub subscription_id: String,
    /// Rate-card charge, mapped by the billing system to its own price item.
    pub charge_id: String,
    /// Group of the charge (see [`RatedUsage::group_key`](super::RatedUsage)); empty when
    /// ungrouped.
    pub group_key: String,
    /// Invoice line text.
    pub description: String,
    /// First day (inclusive) of the billing period, in days since the epoch.
    #[avro(with = logical::date)]
    pub period_start: i32,
    /// Day after the billing period (exclusive), in days since the epoch.
    #[avro(with = logical::date)]
    pub period_end: i32,
    /// Period-to-date quantity after this charge, for display.
    pub quantity: Quantity,
    /// Amount to add to the period; negative amounts reduce it.
    pub amount: Amount,
    /// Currency of `amount`, ISO 4217 code.
    pub currency: String,
    /// Customer id in the billing system, when master data knows it.
    pub billing_account_ref: Option<String>,
}

impl Contract for BillingCharge {
    const FULL_NAME: &'static str = "backbone.billing.BillingCharge";
}

/// What a billing charge represents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.billing")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BillingChargeType {
    #[doc = concat!("Open-period usage, restatements included.")]
    Usage,
    #[doc = concat!("A closed period's correction booked in the open one.")]
    Adjustment,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::common::tests::{metadata, DEC_1, NOV_1};
    use crate::types::tests::{check, dec};

    #[test]
    pub(crate) fn billing_charge_matches_its_contract() {
        let charge = BillingCharge {
            metadata: metadata("billing-fanout", "backbone.billing.charge", "rat-3c59dc04"),
            rating_id: "rat-3c59dc04".into(),
            revision: 17,
            charge_type: BillingChargeType::Usage,
            customer_id: "cust-42".into(),
            subscription_id: "sub-42".into(),
            charge_id: "storage".into(),
            group_key: "region=eu-central-1".into(),
            description: "Storage (region=eu-central-1)".into(),
            period_start: NOV_1,
            period_end: DEC_1,
            quantity: dec("1036.845678"),
            amount: dec("12.345678"),
            currency: "EUR".into(),
            billing_account_ref: Some("cus_Q8x2LmN4".into()),
        };
        check(&charge);
        check(&BillingCharge {
            charge_type: BillingChargeType::Adjustment,
            amount: dec("-0.000001"),
            billing_account_ref: None,
            ..charge
        });
    }
}
