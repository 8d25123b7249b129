//! `backbone.delivery`: what happened when a sink delivered a record.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::common::EventMetadata;
use super::{Amount, Contract};

/// The outcome of delivering one record to an external system; every sink writes one per
/// resolved input record, for the drift reconciler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.delivery")]
pub struct DeliveryResult {
    /// Envelope; `source` is the sink, `occurred_at` is when the outcome was known.
    pub metadata: EventMetadata,
    /// Idempotency key the record was delivered under.
    pub delivery_key: String,
    /// System delivered to.
    pub destination: Destination,
    /// Final outcome.
    pub outcome: DeliveryOutcome,
    /// Delivery attempts made, at least 1.
    pub attempts: i32,
    /// Id the destination gave the record, if any.
    pub destination_reference: Option<String>,
    /// Machine-readable rejection reason, e.g. `http_422`; none unless rejected.
    pub error_code: Option<String>,
    /// Rejection detail without personal data; none unless rejected.
    pub error_message: Option<String>,
    /// Topic the record was consumed from.
    pub source_topic: String,
    /// Partition of the record.
    pub source_partition: i32,
    /// Offset of the record.
    pub source_offset: i64,
    /// Money the input record carried (a charge's or a posting's amount), for amount drift
    /// checks.
    pub amount: Option<Amount>,
    /// Currency of `amount`, ISO 4217 code; none when `amount` is none.
    pub currency: Option<String>,
}

impl Contract for DeliveryResult {
    const FULL_NAME: &'static str = "backbone.delivery.DeliveryResult";
}

/// External system a sink delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.delivery")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Destination {
    #[doc = concat!("The billing system.")]
    Billing,
    #[doc = concat!("The CRM.")]
    Crm,
    #[doc = concat!("The analytics store.")]
    Analytics,
    #[doc = concat!("The ERP.")]
    Erp,
    #[doc = concat!("The systems an order's workflow steps call (CRM, product platform, billing, ERP, sales platform).")]
    OrderSystems,
    #[doc = concat!("The systems an issued invoice goes to (billing and the ERP).")]
    InvoiceSystems,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

/// Final outcome of delivering one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.delivery")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryOutcome {
    #[doc = concat!("Accepted now.")]
    Delivered,
    #[doc = concat!("The destination or the ledger already knew the key (a replay).")]
    AlreadyDelivered,
    #[doc = concat!("Refused permanently; the record went to the DLQ.")]
    Rejected,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::common::tests::metadata;
    use crate::types::tests::{check, dec};

    #[test]
    pub(crate) fn delivery_result_matches_its_contract() {
        let delivered = DeliveryResult {
            metadata: metadata("erp-sink", "backbone.delivery.result", "dlv-e4da3b7f"),
            delivery_key: "batch-c81e728d".into(),
            destination: Destination::Erp,
            outcome: DeliveryOutcome::AlreadyDelivered,
            attempts: 3,
            destination_reference: Some("JE-2026-004711".into()),
            error_code: None,
            error_message: None,
            source_topic: "erp.journal-batches".into(),
            source_partition: 5,
            source_offset: 918_273,
            amount: Some(dec("12.345678")),
            currency: Some("EUR".into()),
        };
        check(&delivered);
        check(&DeliveryResult {
            destination: Destination::Billing,
            outcome: DeliveryOutcome::Rejected,
            attempts: 1,
            destination_reference: None,
            error_code: Some("http_422".into()),
            error_message: Some("subscription sub-42 is closed".into()),
            amount: None,
            currency: None,
            ..delivered
        });
    }
}
