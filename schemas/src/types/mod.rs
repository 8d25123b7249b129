//! Rust types for the Avro contracts: one struct per record, one enum per Avro enum, with the
//! contract's field names, order and symbols.
//!
//! The `.avsc` files stay the source of truth. Each record type implements [`Contract`], whose
//! [`schema`](Contract::schema) is the bundled schema of its file, and values are always
//! encoded with that schema. Each type also derives [`apache_avro::AvroSchema`]; the tests
//! compare that derived schema with the file's (Parsing Canonical Form, plus defaults and
//! logical types) and round-trip a sample, so a type that drifts from its file fails the tests.
//!
//! Representations:
//!
//! - Decimals (`bytes` with logicalType `decimal`) are [`Decimal<PRECISION, SCALE>`](Decimal),
//!   an exact unscaled `i128`, named by role: [`Amount`] (18, 6), [`Quantity`] (24, 9),
//!   [`UnitPrice`] (24, 12) and [`Percent`] (9, 6). apache-avro's own `Decimal` is a bare
//!   byte string without scale or arithmetic, and its `BigDecimal` maps to the different
//!   `big-decimal` logical type, so neither fits.
//! - Points in time (`timestamp-micros`) are `i64` microseconds since the Unix epoch, UTC, and
//!   calendar dates (`date`) are `i32` days since 1970-01-01. apache-avro's serde support has
//!   no date-time type that round-trips; `#[avro(with = ...)]` gives these fields their logical
//!   type in the derived schema, so the schema comparison needs no normalisation.
//! - Optional fields are `Option<T>`, arrays `Vec<T>`, maps `HashMap<String, T>` (the derive
//!   supports no other map).
//! - Enums map variants to symbols with `rename_all = "SCREAMING_SNAKE_CASE"` and mark the
//!   Avro default symbol `#[default]`. Their variant docs are written `#[doc = concat!(..)]`:
//!   apache-avro-derive 0.22 rejects `///` on unit variants but does not see the macro form.
//!
//! ```
//! use backbone_schemas::types::{Contract, ControlTotal};
//! use backbone_schemas::wire;
//!
//! let totals = ControlTotal {
//!     currency: "EUR".into(),
//!     line_count: 2,
//!     total_debits: "12.345678".parse()?,
//!     total_credits: "12.345678".parse()?,
//! };
//! let body = wire::encode_body(ControlTotal::schema(), totals.to_avro()?)?;
//! let decoded = wire::decode_body(1, ControlTotal::schema(), &body)?;
//! assert_eq!(ControlTotal::from_avro(&decoded)?, totals);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::sync::OnceLock;

use apache_avro::types::Value;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::contracts::ContractSet;
use crate::wire::WireError;

mod analytics;
mod billing;
mod common;
mod crm;
mod decimal;
mod delivery;
mod erp;
mod master;
mod orders;
mod sales;
mod usage;

pub use analytics::{AnalyticsFact, FactType};
pub use billing::{BillingCharge, BillingChargeType};
pub use common::{EventMetadata, PostalAddress, TraceContext};
pub use crm::{AccountHealthSnapshot, HealthStatus};
pub use decimal::{Amount, Decimal, DecimalError, Percent, Quantity, UnitPrice};
pub use delivery::{DeliveryOutcome, DeliveryResult, Destination};
pub use erp::{BatchType, ControlTotal, JournalBatch, LedgerPosting, PostingLine};
pub use master::{
    AccountStatus, BillingInterval, ChargeModel, CustomerAccount, Employee, EmploymentStatus,
    GlMapping, LegalEntity, MeterAggregation, PriceTier, Product, ProductType, RateCard,
    RateCharge, RecurringFee, Subscription, SubscriptionStatus, Supplier, SupplierStatus,
};
pub use orders::{
    ApprovalDecision, OrderApproval, OrderConclusion, OrderStateChange, OrderStep, OrderStepKind,
    OrderWorkflowState, SubscriptionChange,
};
pub use sales::{Invoice, InvoiceLine, InvoiceStatus, OrderStatus, SalesOrder, SalesOrderLine};
pub use usage::{EnrichedUsage, RatedUsage, RatingKind, UsageEvent, UsageWindowAggregate};

/// A Rust type bound to one contract file.
pub trait Contract: Serialize + DeserializeOwned {
    /// Full Avro name of the record, e.g. `backbone.usage.UsageEvent`.
    const FULL_NAME: &'static str;

    /// The bundled, self-contained schema of the contract file: what values are encoded with
    /// and registered under.
    ///
    /// # Panics
    ///
    /// Only if the contracts compiled into this crate do not bundle into valid Avro, which the
    /// crate's tests rule out.
    fn schema() -> &'static Schema {
        embedded_schema(Self::FULL_NAME)
            .unwrap_or_else(|| panic!("`{}` is not among the embedded contracts", Self::FULL_NAME))
    }

    /// This value as an Avro value of [`schema`](Contract::schema), ready for
    /// [`crate::wire::encode_body`].
    fn to_avro(&self) -> Result<Value, WireError> {
        let contract_error = |e: apache_avro::Error| WireError::Contract {
            message: format!("{}: {e}", Self::FULL_NAME),
        };
        apache_avro::to_value(self)
            .map_err(contract_error)?
            .resolve(Self::schema())
            .map_err(contract_error)
    }

    /// The value of `avro`, which must already have this contract's shape (decoded with
    /// [`schema`](Contract::schema) or resolved against it).
    fn from_avro(avro: &Value) -> Result<Self, WireError> {
        apache_avro::from_value(avro).map_err(|e| WireError::Contract {
            message: format!("{}: {e}", Self::FULL_NAME),
        })
    }
}

/// The bundled schema of the embedded contract `full_name`, parsed once per process.
///
/// # Panics
///
/// If the embedded contracts do not bundle into valid Avro (a build defect the crate's tests
/// catch).
pub fn embedded_schema(full_name: &str) -> Option<&'static Schema> {
    static SCHEMAS: OnceLock<BTreeMap<String, Schema>> = OnceLock::new();
    SCHEMAS
        .get_or_init(|| {
            let set = ContractSet::embedded()
                .unwrap_or_else(|e| panic!("embedded contracts are invalid: {e}"));
            set.files()
                .map(|file| {
                    let schema = set
                        .schema(&file.name)
                        .unwrap_or_else(|e| panic!("embedded contracts are invalid: {e}"));
                    (file.name.clone(), schema)
                })
                .collect()
        })
        .get(full_name)
}

/// Derived-schema functions for fields whose Rust type is a plain integer standing for an
/// Avro logical type, used as `#[avro(with = logical::date)]`.
mod logical {
    use std::collections::HashSet;

    use apache_avro::schema::{Name, NamespaceRef, UnionSchema};
    use apache_avro::Schema;

    /// `timestamp-micros` over `long`.
    pub(crate) fn timestamp_micros(_: &mut HashSet<Name>, _: NamespaceRef) -> Schema {
        Schema::TimestampMicros
    }

    /// `["null", timestamp-micros]`.
    pub(crate) fn optional_timestamp_micros(_: &mut HashSet<Name>, _: NamespaceRef) -> Schema {
        optional(Schema::TimestampMicros)
    }

    /// `date` over `int`.
    pub(crate) fn date(_: &mut HashSet<Name>, _: NamespaceRef) -> Schema {
        Schema::Date
    }

    /// `["null", date]`.
    pub(crate) fn optional_date(_: &mut HashSet<Name>, _: NamespaceRef) -> Schema {
        optional(Schema::Date)
    }

    fn optional(schema: Schema) -> Schema {
        let union = UnionSchema::new(vec![Schema::Null, schema])
            .unwrap_or_else(|e| unreachable!("null and one logical type form a union: {e}"));
        Schema::Union(union)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;
    use std::fmt::Debug;

    use apache_avro::AvroSchema;
    use serde_json::Value as Json;

    use super::*;
    use crate::wire;

    /// Proves that `T` matches its contract file: the derived schema equals the file's, and
    /// `sample` survives an encode/decode round trip with the file's schema.
    pub(crate) fn check<T>(sample: &T)
    where
        T: Contract + AvroSchema + PartialEq + Debug,
    {
        let name = T::FULL_NAME;
        let file = T::schema();
        let derived = T::get_schema();
        assert_eq!(
            derived.name().map(|n| n.fullname(None)).as_deref(),
            Some(name),
            "FULL_NAME of the Rust type"
        );
        assert_eq!(
            derived.canonical_form(),
            file.canonical_form(),
            "{name}: derived schema differs from the file in Parsing Canonical Form"
        );
        // Canonical form drops defaults and logical-type names; compare those too.
        assert_eq!(
            without_docs(serde_json::to_value(&derived).unwrap()),
            without_docs(serde_json::to_value(file).unwrap()),
            "{name}: derived schema differs from the file in defaults or logical types"
        );

        let body = wire::encode_body(file, sample.to_avro().unwrap()).unwrap();
        let decoded = wire::decode_body(1, file, &body).unwrap();
        assert_eq!(
            &T::from_avro(&decoded).unwrap(),
            sample,
            "{name}: round trip"
        );
    }

    /// Parses a decimal literal of any contract precision and scale.
    pub(crate) fn dec<const PRECISION: usize, const SCALE: usize>(
        text: &str,
    ) -> Decimal<PRECISION, SCALE> {
        text.parse().unwrap()
    }

    fn without_docs(json: Json) -> Json {
        match json {
            Json::Object(map) => Json::Object(
                map.into_iter()
                    .filter(|(k, _)| k != "doc")
                    .map(|(k, v)| (k, without_docs(v)))
                    .collect(),
            ),
            Json::Array(items) => Json::Array(items.into_iter().map(without_docs).collect()),
            other => other,
        }
    }

    /// Every contract type with its per-type test; the test below proves the list is complete.
    const COVERED: &[(&str, fn())] = &[
        (
            EventMetadata::FULL_NAME,
            common::tests::event_metadata_matches_its_contract,
        ),
        (
            TraceContext::FULL_NAME,
            common::tests::trace_context_matches_its_contract,
        ),
        (
            PostalAddress::FULL_NAME,
            common::tests::postal_address_matches_its_contract,
        ),
        (
            CustomerAccount::FULL_NAME,
            master::tests::customer_account_matches_its_contract,
        ),
        (
            Employee::FULL_NAME,
            master::tests::employee_matches_its_contract,
        ),
        (
            GlMapping::FULL_NAME,
            master::tests::gl_mapping_matches_its_contract,
        ),
        (
            LegalEntity::FULL_NAME,
            master::tests::legal_entity_matches_its_contract,
        ),
        (
            PriceTier::FULL_NAME,
            master::tests::price_tier_matches_its_contract,
        ),
        (
            Product::FULL_NAME,
            master::tests::product_matches_its_contract,
        ),
        (
            RateCard::FULL_NAME,
            master::tests::rate_card_matches_its_contract,
        ),
        (
            RateCharge::FULL_NAME,
            master::tests::rate_charge_matches_its_contract,
        ),
        (
            RecurringFee::FULL_NAME,
            master::tests::recurring_fee_matches_its_contract,
        ),
        (
            Subscription::FULL_NAME,
            master::tests::subscription_matches_its_contract,
        ),
        (
            Supplier::FULL_NAME,
            master::tests::supplier_matches_its_contract,
        ),
        (
            UsageEvent::FULL_NAME,
            usage::tests::usage_event_matches_its_contract,
        ),
        (
            EnrichedUsage::FULL_NAME,
            usage::tests::enriched_usage_matches_its_contract,
        ),
        (
            RatedUsage::FULL_NAME,
            usage::tests::rated_usage_matches_its_contract,
        ),
        (
            UsageWindowAggregate::FULL_NAME,
            usage::tests::usage_window_aggregate_matches_its_contract,
        ),
        (
            SalesOrder::FULL_NAME,
            sales::tests::sales_order_matches_its_contract,
        ),
        (
            SalesOrderLine::FULL_NAME,
            sales::tests::sales_order_line_matches_its_contract,
        ),
        (
            OrderStep::FULL_NAME,
            orders::tests::order_step_matches_its_contract,
        ),
        (
            OrderStateChange::FULL_NAME,
            orders::tests::order_state_change_matches_its_contract,
        ),
        (
            OrderApproval::FULL_NAME,
            orders::tests::order_approval_matches_its_contract,
        ),
        (
            Invoice::FULL_NAME,
            sales::tests::invoice_matches_its_contract,
        ),
        (
            InvoiceLine::FULL_NAME,
            sales::tests::invoice_line_matches_its_contract,
        ),
        (
            BillingCharge::FULL_NAME,
            billing::tests::billing_charge_matches_its_contract,
        ),
        (
            AccountHealthSnapshot::FULL_NAME,
            crm::tests::account_health_snapshot_matches_its_contract,
        ),
        (
            AnalyticsFact::FULL_NAME,
            analytics::tests::analytics_fact_matches_its_contract,
        ),
        (
            JournalBatch::FULL_NAME,
            erp::tests::journal_batch_matches_its_contract,
        ),
        (
            LedgerPosting::FULL_NAME,
            erp::tests::ledger_posting_matches_its_contract,
        ),
        (
            PostingLine::FULL_NAME,
            erp::tests::posting_line_matches_its_contract,
        ),
        (
            ControlTotal::FULL_NAME,
            erp::tests::control_total_matches_its_contract,
        ),
        (
            DeliveryResult::FULL_NAME,
            delivery::tests::delivery_result_matches_its_contract,
        ),
    ];

    #[test]
    fn every_contract_file_has_a_rust_type() {
        let set = ContractSet::embedded().unwrap();
        let files: BTreeSet<&str> = set.files().map(|f| f.name.as_str()).collect();
        let covered: BTreeSet<&str> = COVERED.iter().map(|(name, _)| *name).collect();
        assert_eq!(covered.len(), COVERED.len(), "a type is listed twice");
        assert_eq!(
            files, covered,
            "contract files without a Rust type, or the reverse"
        );
        // The per-type tests also run on their own; running them here ties each name to a test.
        for (_, test) in COVERED {
            test();
        }
    }
}
