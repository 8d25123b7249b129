//! `backbone.master`: master data on compacted topics (customers, subscriptions, rate cards,
//! products, suppliers, employees, legal entities, GL mappings). The latest record per key is
//! the current state.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::common::{EventMetadata, PostalAddress};
use super::{logical, Amount, Contract, Percent, Quantity, UnitPrice};

/// A customer account as the CRM publishes it: who is billed, in which currency, by which
/// legal entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
pub struct CustomerAccount {
    /// Envelope; `occurred_at` is when this version took effect.
    pub metadata: EventMetadata,
    /// Stable id of the account within the tenant.
    pub customer_id: String,
    /// Display name of the customer organisation.
    pub name: String,
    /// Lifecycle state; usage of a closed account is rejected.
    pub status: AccountStatus,
    /// Default billing currency, ISO 4217 code.
    pub currency: String,
    /// Legal entity that contracts with and invoices the customer.
    pub legal_entity_id: String,
    /// ISO 3166-1 alpha-2 country of the customer; drives tax treatment.
    pub country_code: String,
    /// Person who receives invoices. Personal data.
    pub billing_contact_name: Option<String>,
    /// Address invoices are e-mailed to. Personal data.
    pub billing_email: Option<String>,
    /// Postal billing address.
    pub billing_address: Option<PostalAddress>,
    /// VAT or tax registration number, when the customer has one.
    pub tax_id: Option<String>,
    /// Id of the account in the CRM.
    pub crm_account_id: Option<String>,
    /// Id of the customer (debtor) in the ERP, for receivable postings.
    pub erp_customer_id: Option<String>,
}

impl Contract for CustomerAccount {
    const FULL_NAME: &'static str = "backbone.master.CustomerAccount";
}

/// Lifecycle state of a customer account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccountStatus {
    #[doc = concat!("Open for business.")]
    Active,
    #[doc = concat!("Temporarily blocked.")]
    Suspended,
    #[doc = concat!("Closed; its usage is rejected.")]
    Closed,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

/// An employee as the HR system publishes it; almost every field is personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
pub struct Employee {
    /// Envelope; `occurred_at` is when this version took effect.
    pub metadata: EventMetadata,
    /// Stable id of the employee within the tenant (not a national id).
    pub employee_id: String,
    /// Given name. Personal data.
    pub given_name: String,
    /// Family name. Personal data.
    pub family_name: String,
    /// Work e-mail address. Personal data.
    pub email: String,
    /// Employment state.
    pub status: EmploymentStatus,
    /// Legal entity that employs the person.
    pub legal_entity_id: String,
    /// Department name, e.g. Finance.
    pub department: String,
    /// Cost centre the employee's costs are booked to.
    pub cost_center: String,
    /// Employee id of the line manager; none at the top of the hierarchy.
    pub manager_employee_id: Option<String>,
    /// First day of employment, in days since the epoch, when disclosed.
    #[avro(with = logical::optional_date, default = "null")]
    pub hired_on: Option<i32>,
    /// Last day of employment, in days since the epoch; none while employed.
    #[avro(with = logical::optional_date, default = "null")]
    pub terminated_on: Option<i32>,
}

impl Contract for Employee {
    const FULL_NAME: &'static str = "backbone.master.Employee";
}

/// Employment state of an employee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EmploymentStatus {
    #[doc = concat!("Employed and working.")]
    Active,
    #[doc = concat!("Employed but on leave.")]
    OnLeave,
    #[doc = concat!("No longer employed; still referable by past records.")]
    Terminated,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

/// Maps what was sold in a legal entity to the GL accounts the ERP sink posts to; the most
/// specific mapping wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
pub struct GlMapping {
    /// Envelope; `occurred_at` is when this version took effect.
    pub metadata: EventMetadata,
    /// Stable id of the mapping within the tenant.
    pub mapping_id: String,
    /// Legal entity whose chart of accounts is meant.
    pub legal_entity_id: String,
    /// Product the mapping applies to; none matches any product.
    pub product_id: Option<String>,
    /// Rate-card charge the mapping applies to; none matches any charge.
    pub charge_id: Option<String>,
    /// Account credited with recognised revenue.
    pub revenue_account: String,
    /// Account debited with the receivable.
    pub receivable_account: String,
    /// Account holding billed but unrecognised revenue.
    pub deferred_revenue_account: String,
    /// Account credited with output tax owed.
    pub tax_account: String,
    /// First posting date covered (inclusive), in days since the epoch.
    #[avro(with = logical::date)]
    pub effective_from: i32,
    /// First posting date no longer covered (exclusive); none while current.
    #[avro(with = logical::optional_date, default = "null")]
    pub effective_to: Option<i32>,
}

impl Contract for GlMapping {
    const FULL_NAME: &'static str = "backbone.master.GlMapping";
}

impl GlMapping {
    /// The mapping that applies to a usage line of `charge_id` in `legal_entity_id` on `day`
    /// ([`GlMapping::select_line`] with no product: usage lines name none, so a mapping
    /// restricted to a product never applies to them).
    pub fn select<'m, M: AsRef<GlMapping>>(
        mappings: &'m [M],
        legal_entity_id: &str,
        charge_id: &str,
        day: i32,
    ) -> Option<&'m GlMapping> {
        Self::select_line(mappings, legal_entity_id, None, Some(charge_id), day)
    }

    /// The mapping that applies to a line selling `product_id` under `charge_id` (either may
    /// be none: a recurring fee names a product and no charge) in `legal_entity_id` on `day`.
    /// The most specific wins: product and charge, then charge, then product, then the
    /// entity's default; among equals the lowest `mapping_id`, so every reader picks the same.
    pub fn select_line<'m, M: AsRef<GlMapping>>(
        mappings: &'m [M],
        legal_entity_id: &str,
        product_id: Option<&str>,
        charge_id: Option<&str>,
        day: i32,
    ) -> Option<&'m GlMapping> {
        let rank = |m: &GlMapping| match (m.product_id.is_some(), m.charge_id.is_some()) {
            (true, true) => 0,
            (false, true) => 1,
            (true, false) => 2,
            (false, false) => 3,
        };
        mappings
            .iter()
            .map(AsRef::as_ref)
            .filter(|m| {
                m.legal_entity_id == legal_entity_id
                    && m.product_id
                        .as_deref()
                        .is_none_or(|p| Some(p) == product_id)
                    && m.charge_id.as_deref().is_none_or(|c| Some(c) == charge_id)
                    && m.effective_from <= day
                    && m.effective_to.is_none_or(|to| day < to)
            })
            .min_by(|a, b| (rank(a), &a.mapping_id).cmp(&(rank(b), &b.mapping_id)))
    }
}

impl AsRef<GlMapping> for GlMapping {
    fn as_ref(&self) -> &GlMapping {
        self
    }
}

/// A group company that contracts with customers and keeps its own books; its time zone and
/// fiscal calendar set period boundaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
pub struct LegalEntity {
    /// Envelope; `occurred_at` is when this version took effect.
    pub metadata: EventMetadata,
    /// Stable id within the tenant; also the ERP company code.
    pub legal_entity_id: String,
    /// Registered company name.
    pub name: String,
    /// ISO 3166-1 alpha-2 country of incorporation.
    pub country_code: String,
    /// Currency the books are kept in, ISO 4217 code.
    pub functional_currency: String,
    /// IANA time zone in which calendar dates are computed, e.g. `Europe/Berlin`.
    pub time_zone: String,
    /// Month (1 to 12) in which the fiscal year starts.
    pub fiscal_year_start_month: i32,
    /// VAT or tax registration number, when registered.
    pub tax_id: Option<String>,
    /// Registered office address, printed on invoices.
    pub registered_address: Option<PostalAddress>,
}

impl Contract for LegalEntity {
    const FULL_NAME: &'static str = "backbone.master.LegalEntity";
}

/// One tier of a graduated or volume charge, covering quantities above the previous tier's
/// bound up to its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
pub struct PriceTier {
    /// Inclusive upper bound in aggregated units; none (unbounded) only on the last tier.
    pub up_to: Option<Quantity>,
    /// Price per unit inside the tier; zero for a free tier.
    pub unit_price: UnitPrice,
    /// Fixed amount charged once the quantity enters the tier, if any.
    pub flat_fee: Option<Amount>,
}

impl Contract for PriceTier {
    const FULL_NAME: &'static str = "backbone.master.PriceTier";
}

/// A sellable product or service from the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
pub struct Product {
    /// Envelope; `occurred_at` is when this version took effect.
    pub metadata: EventMetadata,
    /// Stable id of the product within the tenant.
    pub product_id: String,
    /// Stock-keeping unit code.
    pub sku: String,
    /// Name shown to customers.
    pub name: String,
    /// Longer description, if any.
    pub description: Option<String>,
    /// Kind of product, which decides revenue recognition.
    pub product_type: ProductType,
    /// Unit the product is sold in, e.g. seat.
    pub unit_of_measure: String,
    /// Tax classification; none means the legal entity's default.
    pub tax_code: Option<String>,
    /// Whether the product may still be sold.
    pub active: bool,
}

impl Contract for Product {
    const FULL_NAME: &'static str = "backbone.master.Product";
}

/// Kind of product, which decides how its revenue is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProductType {
    #[doc = concat!("A recurring subscription.")]
    Subscription,
    #[doc = concat!("Metered usage.")]
    Usage,
    #[doc = concat!("A one-off service.")]
    Service,
    #[doc = concat!("A physical good.")]
    Good,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

/// The price list of a plan: the charges that turn metered usage into amounts. A price change
/// is a new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
pub struct RateCard {
    /// Envelope; `occurred_at` is when this version was published.
    pub metadata: EventMetadata,
    /// Plan this card prices.
    pub plan_id: String,
    /// Version of the card, from 1, increasing with every change.
    pub version: i32,
    /// Plan name shown on invoices.
    pub name: String,
    /// Currency of every price in the card, ISO 4217 code.
    pub currency: String,
    /// First billing-period start this version applies to (inclusive), in days since the epoch.
    #[avro(with = logical::date)]
    pub effective_from: i32,
    /// Billing-period start from which it no longer applies (exclusive); none while current.
    #[avro(with = logical::optional_date, default = "null")]
    pub effective_to: Option<i32>,
    /// The plan's charges, each pricing one meter.
    pub charges: Vec<RateCharge>,
    /// Fixed fees billed every period whatever the usage.
    #[avro(default = "[]")]
    pub recurring_fees: Vec<RecurringFee>,
}

impl Contract for RateCard {
    const FULL_NAME: &'static str = "backbone.master.RateCard";
}

/// A fixed fee a plan bills every billing period, pro rata by days for a period the
/// subscription was billable for part of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
pub struct RecurringFee {
    /// Id of the fee, stable across card versions and unique within the plan.
    pub fee_id: String,
    /// Fee name shown on invoices.
    pub name: String,
    /// Product the fee sells, which selects its GL mapping; none for the entity's default.
    #[avro(default = "null")]
    pub product_id: Option<String>,
    /// Amount per full billing period, in the card's currency.
    pub amount: Amount,
}

impl Contract for RecurringFee {
    const FULL_NAME: &'static str = "backbone.master.RecurringFee";
}

/// One charge of a rate card: how a meter's usage is aggregated over the period and priced.
/// Which price fields apply depends on `charge_model`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
pub struct RateCharge {
    /// Id of the charge, stable across card versions and unique within the plan.
    pub charge_id: String,
    /// Charge name shown on invoices.
    pub name: String,
    /// Meter whose usage the charge prices.
    pub meter_id: String,
    /// How the meter's usage is combined over the period.
    pub aggregation: MeterAggregation,
    /// How the aggregate becomes an amount.
    pub charge_model: ChargeModel,
    /// Fixed amount per period for flat charges.
    pub flat_amount: Option<Amount>,
    /// Price per unit (unit charges) or per package (package charges).
    pub unit_price: Option<UnitPrice>,
    /// Units per package for package charges; a started package is billed in full.
    pub package_size: Option<Quantity>,
    /// Rate in percent of the aggregate for percentage charges.
    pub percentage: Option<Percent>,
    /// Units per period deducted before pricing.
    pub free_units: Option<Quantity>,
    /// Lowest amount billed per period.
    pub minimum_spend: Option<Amount>,
    /// Highest amount billed per period.
    pub maximum_spend: Option<Amount>,
    /// Tiers of graduated and volume charges, by ascending bound.
    #[avro(default = "[]")]
    pub tiers: Vec<PriceTier>,
    /// Usage dimensions that split the charge into separately priced groups.
    #[avro(default = "[]")]
    pub group_by: Vec<String>,
}

impl Contract for RateCharge {
    const FULL_NAME: &'static str = "backbone.master.RateCharge";
}

/// How usage quantities are combined over a billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MeterAggregation {
    #[doc = concat!("Sum of quantities.")]
    Sum,
    #[doc = concat!("Number of events.")]
    Count,
    #[doc = concat!("Smallest quantity.")]
    Min,
    #[doc = concat!("Largest quantity.")]
    Max,
    #[doc = concat!("Mean quantity.")]
    Avg,
    #[doc = concat!("Number of distinct `unique_value`s.")]
    UniqueCount,
    #[doc = concat!("Quantity of the latest event by event time.")]
    Latest,
    #[doc = concat!("Average level held over time.")]
    TimeWeighted,
    #[doc = concat!("A symbol this reader does not know; the rater rejects it.")]
    #[default]
    Unknown,
}

/// How an aggregated quantity is turned into an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChargeModel {
    #[doc = concat!("A fixed fee per period.")]
    Flat,
    #[doc = concat!("Unit price times quantity.")]
    Unit,
    #[doc = concat!("A price per started package.")]
    Package,
    #[doc = concat!("Tiers each priced at their own rate.")]
    Graduated,
    #[doc = concat!("The tier reached prices all units.")]
    Volume,
    #[doc = concat!("A percentage of the aggregate taken as an amount.")]
    Percentage,
    #[doc = concat!("A symbol this reader does not know; the rater rejects it.")]
    #[default]
    Unknown,
}

/// A customer's subscription to a plan: which rate card applies, in which currency, and where
/// its billing periods start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
pub struct Subscription {
    /// Envelope; `occurred_at` is when this version took effect.
    pub metadata: EventMetadata,
    /// Stable id of the subscription within the tenant.
    pub subscription_id: String,
    /// Customer account that owns it.
    pub customer_id: String,
    /// Plan subscribed to.
    pub plan_id: String,
    /// Lifecycle state; usage is rated while trialing, active or past due.
    pub status: SubscriptionStatus,
    /// Billing currency, ISO 4217 code; matches the rate card's.
    pub currency: String,
    /// Legal entity that bills the subscription.
    pub legal_entity_id: String,
    /// Length of each billing period.
    pub billing_interval: BillingInterval,
    /// Day of the month (1 to 31) periods start on, or the month's last day if shorter.
    pub billing_anchor_day: i32,
    /// First day of the current period (inclusive), in days since the epoch.
    #[avro(with = logical::date)]
    pub current_period_start: i32,
    /// Day after the current period (exclusive), in days since the epoch.
    #[avro(with = logical::date)]
    pub current_period_end: i32,
    /// When the subscription began, in microseconds since the epoch.
    #[avro(with = logical::timestamp_micros)]
    pub started_at: i64,
    /// When it ends or ended; none while open-ended.
    #[avro(with = logical::optional_timestamp_micros, default = "null")]
    pub ends_at: Option<i64>,
    /// End of the trial, for subscriptions with one.
    #[avro(with = logical::optional_timestamp_micros, default = "null")]
    pub trial_ends_at: Option<i64>,
}

impl Contract for Subscription {
    const FULL_NAME: &'static str = "backbone.master.Subscription";
}

/// Lifecycle state of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubscriptionStatus {
    #[doc = concat!("In its trial.")]
    Trialing,
    #[doc = concat!("Running and paid up.")]
    Active,
    #[doc = concat!("Running with an overdue payment.")]
    PastDue,
    #[doc = concat!("Paused by the customer.")]
    Paused,
    #[doc = concat!("Cancelled.")]
    Cancelled,
    #[doc = concat!("Ran out.")]
    Expired,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

/// Length of a billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BillingInterval {
    #[doc = concat!("One month.")]
    Monthly,
    #[doc = concat!("Three months.")]
    Quarterly,
    #[doc = concat!("One year.")]
    Annual,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

/// A supplier the company buys from, as the ERP publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
pub struct Supplier {
    /// Envelope; `occurred_at` is when this version took effect.
    pub metadata: EventMetadata,
    /// Stable id of the supplier within the tenant.
    pub supplier_id: String,
    /// Registered name of the supplier.
    pub name: String,
    /// Whether purchases and payments are allowed.
    pub status: SupplierStatus,
    /// Legal entity holding the relationship.
    pub legal_entity_id: String,
    /// Currency the supplier invoices in, ISO 4217 code.
    pub currency: String,
    /// ISO 3166-1 alpha-2 country of the supplier.
    pub country_code: String,
    /// Days after the invoice date within which the supplier is paid.
    pub payment_terms_days: i32,
    /// VAT or tax registration number, when known.
    pub tax_id: Option<String>,
    /// Contact person. Personal data.
    pub contact_name: Option<String>,
    /// Contact person's e-mail address. Personal data.
    pub contact_email: Option<String>,
    /// Postal address of the supplier.
    pub address: Option<PostalAddress>,
}

impl Contract for Supplier {
    const FULL_NAME: &'static str = "backbone.master.Supplier";
}

/// Whether purchases from a supplier are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.master")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SupplierStatus {
    #[doc = concat!("Orders and payments allowed.")]
    Active,
    #[doc = concat!("No longer used.")]
    Inactive,
    #[doc = concat!("Orders and payments blocked.")]
    Blocked,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::common::tests::{address, metadata, DEC_1, NOV_1, OCCURRED_AT, OCT_1};
    use crate::types::tests::{check, dec};

    fn crm(id: &str) -> EventMetadata {
        metadata("crm", "backbone.master.customer-account.changed", id)
    }

    #[test]
    pub(crate) fn customer_account_matches_its_contract() {
        check(&CustomerAccount {
            metadata: crm("cust-42@v7"),
            customer_id: "cust-42".into(),
            name: "Nordwind Logistik GmbH".into(),
            status: AccountStatus::Active,
            currency: "EUR".into(),
            legal_entity_id: "le-de".into(),
            country_code: "DE".into(),
            billing_contact_name: Some("Jana Weber".into()),
            billing_email: Some("billing@nordwind.example".into()),
            billing_address: Some(address()),
            tax_id: Some("DE811569869".into()),
            crm_account_id: Some("0015g00000AbCdE".into()),
            erp_customer_id: None,
        });
    }

    #[test]
    pub(crate) fn employee_matches_its_contract() {
        check(&Employee {
            metadata: metadata("hr", "backbone.master.employee.changed", "emp-7@v2"),
            employee_id: "emp-7".into(),
            given_name: "Amira".into(),
            family_name: "Haddad".into(),
            email: "amira.haddad@backbone.example".into(),
            status: EmploymentStatus::OnLeave,
            legal_entity_id: "le-de".into(),
            department: "Finance".into(),
            cost_center: "CC-4100".into(),
            manager_employee_id: Some("emp-2".into()),
            hired_on: Some(19_479),
            terminated_on: None,
        });
    }

    #[test]
    pub(crate) fn gl_mapping_matches_its_contract() {
        check(&GlMapping {
            metadata: metadata("erp", "backbone.master.gl-mapping.changed", "glm-1@v1"),
            mapping_id: "glm-1".into(),
            legal_entity_id: "le-de".into(),
            product_id: None,
            charge_id: Some("api-calls".into()),
            revenue_account: "4400".into(),
            receivable_account: "1400".into(),
            deferred_revenue_account: "0990".into(),
            tax_account: "1776".into(),
            effective_from: OCT_1,
            effective_to: Some(DEC_1),
        });
    }

    #[test]
    fn the_most_specific_mapping_of_a_line_wins_product_and_charge_then_charge_then_product() {
        let mapping = |id: &str, product: Option<&str>, charge: Option<&str>| GlMapping {
            metadata: metadata("erp", "backbone.master.gl-mapping.changed", id),
            mapping_id: id.into(),
            legal_entity_id: "le-de".into(),
            product_id: product.map(Into::into),
            charge_id: charge.map(Into::into),
            revenue_account: format!("4{id}"),
            receivable_account: "1400".into(),
            deferred_revenue_account: "0990".into(),
            tax_account: "1776".into(),
            effective_from: OCT_1,
            effective_to: None,
        };
        let all = [
            mapping("z-default", None, None),
            mapping("y-product", Some("platform"), None),
            mapping("x-charge", None, Some("api")),
            mapping("w-both", Some("platform"), Some("api")),
        ];
        let pick = |product, charge| {
            GlMapping::select_line(&all, "le-de", product, charge, NOV_1)
                .map(|m| m.mapping_id.as_str())
        };
        assert_eq!(pick(Some("platform"), Some("api")), Some("w-both"));
        assert_eq!(pick(Some("seats"), Some("api")), Some("x-charge"));
        assert_eq!(
            pick(Some("platform"), None),
            Some("y-product"),
            "a fee's product"
        );
        assert_eq!(pick(Some("seats"), None), Some("z-default"));
        assert_eq!(pick(None, None), Some("z-default"));
        assert_eq!(
            GlMapping::select(&all, "le-de", "api", NOV_1).map(|m| m.mapping_id.as_str()),
            Some("x-charge"),
            "a usage line names no product"
        );
        assert_eq!(
            GlMapping::select_line(&all, "le-de", None, None, OCT_1 - 1),
            None
        );
    }

    #[test]
    pub(crate) fn legal_entity_matches_its_contract() {
        check(&LegalEntity {
            metadata: metadata("erp", "backbone.master.legal-entity.changed", "le-de@v3"),
            legal_entity_id: "le-de".into(),
            name: "Backbone Deutschland GmbH".into(),
            country_code: "DE".into(),
            functional_currency: "EUR".into(),
            time_zone: "Europe/Berlin".into(),
            fiscal_year_start_month: 1,
            tax_id: Some("DE123456789".into()),
            registered_address: None,
        });
    }

    pub(crate) fn tiers() -> Vec<PriceTier> {
        vec![
            PriceTier {
                up_to: Some(dec("10000")),
                unit_price: dec("0"),
                flat_fee: None,
            },
            PriceTier {
                up_to: None,
                unit_price: dec("0.000125000125"),
                flat_fee: Some(dec("12.345678")),
            },
        ]
    }

    #[test]
    pub(crate) fn price_tier_matches_its_contract() {
        for tier in tiers() {
            check(&tier);
        }
    }

    #[test]
    pub(crate) fn product_matches_its_contract() {
        check(&Product {
            metadata: metadata("erp", "backbone.master.product.changed", "prod-api@v1"),
            product_id: "prod-api".into(),
            sku: "API-CALLS-STD".into(),
            name: "API calls".into(),
            description: None,
            product_type: ProductType::Usage,
            unit_of_measure: "call".into(),
            tax_code: Some("SAAS".into()),
            active: true,
        });
    }

    fn graduated_charge() -> RateCharge {
        RateCharge {
            charge_id: "api-calls".into(),
            name: "API calls".into(),
            meter_id: "api_calls".into(),
            aggregation: MeterAggregation::Sum,
            charge_model: ChargeModel::Graduated,
            flat_amount: None,
            unit_price: None,
            package_size: None,
            percentage: None,
            free_units: Some(dec("1000")),
            minimum_spend: None,
            maximum_spend: Some(dec("5000")),
            tiers: tiers(),
            group_by: vec!["region".into()],
        }
    }

    #[test]
    pub(crate) fn rate_card_matches_its_contract() {
        check(&RateCard {
            metadata: metadata("cpq", "backbone.master.rate-card.published", "pro@v4"),
            plan_id: "pro".into(),
            version: 4,
            name: "Pro".into(),
            currency: "EUR".into(),
            effective_from: NOV_1,
            effective_to: None,
            charges: vec![graduated_charge(), graduated_charge()],
            recurring_fees: vec![
                RecurringFee {
                    fee_id: "platform".into(),
                    name: "Platform fee".into(),
                    product_id: Some("platform".into()),
                    amount: dec("49.000001"),
                },
                RecurringFee {
                    fee_id: "support".into(),
                    name: "Support".into(),
                    product_id: None,
                    amount: dec("-1"),
                },
            ],
        });
    }

    #[test]
    pub(crate) fn rate_charge_matches_its_contract() {
        check(&graduated_charge());
        check(&RateCharge {
            charge_id: "payments".into(),
            name: "Payment volume fee".into(),
            meter_id: "payment_volume".into(),
            aggregation: MeterAggregation::TimeWeighted,
            charge_model: ChargeModel::Percentage,
            flat_amount: Some(dec("-0.000001")),
            unit_price: Some(dec("0.019999999999")),
            package_size: Some(dec("500")),
            percentage: Some(dec("2.5")),
            free_units: None,
            minimum_spend: Some(dec("49.99")),
            maximum_spend: None,
            tiers: vec![],
            group_by: vec![],
        });
    }

    #[test]
    pub(crate) fn recurring_fee_matches_its_contract() {
        check(&RecurringFee {
            fee_id: "seats".into(),
            name: "Seat bundle".into(),
            product_id: None,
            amount: dec("0.000001"),
        });
    }

    #[test]
    pub(crate) fn subscription_matches_its_contract() {
        check(&Subscription {
            metadata: metadata(
                "billing",
                "backbone.master.subscription.changed",
                "sub-42@v3",
            ),
            subscription_id: "sub-42".into(),
            customer_id: "cust-42".into(),
            plan_id: "pro".into(),
            status: SubscriptionStatus::PastDue,
            currency: "EUR".into(),
            legal_entity_id: "le-de".into(),
            billing_interval: BillingInterval::Monthly,
            billing_anchor_day: 1,
            current_period_start: NOV_1,
            current_period_end: DEC_1,
            started_at: OCCURRED_AT - 86_400_000_000 * 400,
            ends_at: None,
            trial_ends_at: Some(OCCURRED_AT - 86_400_000_000 * 370),
        });
    }

    #[test]
    pub(crate) fn supplier_matches_its_contract() {
        check(&Supplier {
            metadata: metadata("erp", "backbone.master.supplier.changed", "sup-9@v1"),
            supplier_id: "sup-9".into(),
            name: "Cloudhaus AG".into(),
            status: SupplierStatus::Blocked,
            legal_entity_id: "le-de".into(),
            currency: "CHF".into(),
            country_code: "CH".into(),
            payment_terms_days: 30,
            tax_id: None,
            contact_name: Some("Luca Meier".into()),
            contact_email: Some("luca.meier@cloudhaus.example".into()),
            address: Some(address()),
        });
    }
}
