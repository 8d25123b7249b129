//! `backbone.sales`: orders from the CRM/CPQ and invoices from the billing system, each event
//! carrying the full document in its current status.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::common::{EventMetadata, PostalAddress};
use super::{logical, Amount, Contract, Quantity, UnitPrice};

/// A customer order (new subscription, upgrade, services or goods).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
pub struct SalesOrder {
    /// Envelope; `occurred_at` is when the order reached its current status.
    pub metadata: EventMetadata,
    /// Stable id of the order within the tenant.
    pub order_id: String,
    /// Version of the order: 1 when first confirmed, raised by each amendment.
    #[avro(default = "1")]
    pub revision: i32,
    /// Order number shown to the customer.
    pub order_number: String,
    /// Customer account that placed the order.
    pub customer_id: String,
    /// Legal entity that sells and fulfils it.
    pub legal_entity_id: String,
    /// Lifecycle state.
    pub status: OrderStatus,
    /// When the customer placed the order, in microseconds since the epoch.
    #[avro(with = logical::timestamp_micros)]
    pub ordered_at: i64,
    /// Currency of every amount in the order, ISO 4217 code.
    pub currency: String,
    /// Order lines, numbered from 1.
    pub lines: Vec<SalesOrderLine>,
    /// Sum of the line amounts before tax.
    pub net_amount: Amount,
    /// Tax on the order.
    pub tax_amount: Amount,
    /// `net_amount + tax_amount`: what the customer owes.
    pub total_amount: Amount,
    /// Subscription created or changed by the order; none for one-off orders.
    pub subscription_id: Option<String>,
    /// Delivery address for goods; none for services only.
    pub ship_to: Option<PostalAddress>,
    /// Customer's purchase order number, when given.
    pub external_reference: Option<String>,
}

impl Contract for SalesOrder {
    const FULL_NAME: &'static str = "backbone.sales.SalesOrder";
}

impl SalesOrder {
    /// The subscription the order creates or changes: the one it names, else one named after
    /// the order, `sub-<order_id>`.
    pub fn subscription_or_own(&self) -> String {
        self.subscription_id
            .clone()
            .unwrap_or_else(|| format!("sub-{}", self.order_id))
    }
}

/// Lifecycle state of a sales order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    #[doc = concat!("Being prepared.")]
    Draft,
    #[doc = concat!("Placed by the customer.")]
    Placed,
    #[doc = concat!("Accepted by the seller.")]
    Confirmed,
    #[doc = concat!("Delivered or provisioned.")]
    Fulfilled,
    #[doc = concat!("Cancelled.")]
    Cancelled,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

/// One line of a sales order: a product, how many, at what price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
pub struct SalesOrderLine {
    /// Position in the order, from 1.
    pub line_number: i32,
    /// Product ordered.
    pub product_id: String,
    /// Line text when it differs from the product name.
    pub description: Option<String>,
    /// Quantity ordered, in the product's unit.
    pub quantity: Quantity,
    /// Agreed price per unit before discount.
    pub unit_price: UnitPrice,
    /// Discount on the line as a positive amount; none means no discount.
    pub discount_amount: Option<Amount>,
    /// `quantity * unit_price - discount_amount` before tax, rounded to the amount scale.
    pub line_amount: Amount,
    /// Tax classification; none means the product's.
    pub tax_code: Option<String>,
    /// First day of service (inclusive), in days since the epoch; none for goods.
    #[avro(with = logical::optional_date, default = "null")]
    pub service_start: Option<i32>,
    /// Day after the last day of service (exclusive); none for goods or open-ended service.
    #[avro(with = logical::optional_date, default = "null")]
    pub service_end: Option<i32>,
}

impl Contract for SalesOrderLine {
    const FULL_NAME: &'static str = "backbone.sales.SalesOrderLine";
}

/// An invoice as the billing system issues it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
pub struct Invoice {
    /// Envelope; `occurred_at` is when the invoice reached its current status.
    pub metadata: EventMetadata,
    /// Stable id of the invoice within the tenant.
    pub invoice_id: String,
    /// Legal invoice number; empty while a draft.
    pub invoice_number: String,
    /// Customer account invoiced.
    pub customer_id: String,
    /// Legal entity that issues the invoice.
    pub legal_entity_id: String,
    /// Lifecycle state.
    pub status: InvoiceStatus,
    /// Currency of every amount, ISO 4217 code.
    pub currency: String,
    /// Invoice date (planned, for drafts), in days since the epoch.
    #[avro(with = logical::date)]
    pub issue_date: i32,
    /// Payment due date, in days since the epoch.
    #[avro(with = logical::date)]
    pub due_date: i32,
    /// Invoice lines, numbered from 1.
    pub lines: Vec<InvoiceLine>,
    /// Sum of line amounts before tax.
    pub subtotal_amount: Amount,
    /// Tax on the invoice.
    pub tax_amount: Amount,
    /// `subtotal_amount + tax_amount`: the amount owed.
    pub total_amount: Amount,
    /// Subscription billed, for subscription invoices.
    pub subscription_id: Option<String>,
    /// Sales order billed, for order invoices.
    pub order_id: Option<String>,
    /// First day (inclusive) of the period invoiced; none for one-off invoices.
    #[avro(with = logical::optional_date, default = "null")]
    pub period_start: Option<i32>,
    /// Day after the period invoiced (exclusive); none for one-off invoices.
    #[avro(with = logical::optional_date, default = "null")]
    pub period_end: Option<i32>,
    /// Address the invoice was e-mailed to. Personal data.
    pub billing_email: Option<String>,
    /// Billing address printed on the invoice.
    pub billing_address: Option<PostalAddress>,
}

impl Contract for Invoice {
    const FULL_NAME: &'static str = "backbone.sales.Invoice";
}

/// Lifecycle state of an invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InvoiceStatus {
    #[doc = concat!("Not issued yet.")]
    Draft,
    #[doc = concat!("Issued and open.")]
    Issued,
    #[doc = concat!("Paid in full.")]
    Paid,
    #[doc = concat!("Cancelled after issue.")]
    Void,
    #[doc = concat!("Written off.")]
    Uncollectible,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

/// One invoice line: a recurring fee, a usage charge, a one-off item or an adjustment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
pub struct InvoiceLine {
    /// Position on the invoice, from 1.
    pub line_number: i32,
    /// Line text printed on the invoice.
    pub description: String,
    /// Catalogue product billed, if any.
    pub product_id: Option<String>,
    /// Rate-card charge billed, for usage lines.
    pub charge_id: Option<String>,
    /// Quantity billed (1 for fixed fees).
    pub quantity: Quantity,
    /// Price per unit when a single price applies; none for tiered or flat lines.
    pub unit_price: Option<UnitPrice>,
    /// Line amount before tax; negative for credits.
    pub amount: Amount,
    /// Tax on the line.
    pub tax_amount: Amount,
    /// First day (inclusive) of the service period billed; none for one-off items.
    #[avro(with = logical::optional_date, default = "null")]
    pub period_start: Option<i32>,
    /// Day after the service period billed (exclusive); none for one-off items.
    #[avro(with = logical::optional_date, default = "null")]
    pub period_end: Option<i32>,
    /// `rating_id`s summed into the line, for reconciliation; empty for non-usage lines.
    #[avro(default = "[]")]
    pub rating_ids: Vec<String>,
}

impl Contract for InvoiceLine {
    const FULL_NAME: &'static str = "backbone.sales.InvoiceLine";
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::common::tests::{address, metadata, DEC_1, NOV_1, OCCURRED_AT};
    use crate::types::tests::{check, dec};

    fn order_lines() -> Vec<SalesOrderLine> {
        vec![
            SalesOrderLine {
                line_number: 1,
                product_id: "prod-pro-seat".into(),
                description: None,
                quantity: dec("25"),
                unit_price: dec("39.900000000000"),
                discount_amount: Some(dec("99.75")),
                line_amount: dec("897.75"),
                tax_code: None,
                service_start: Some(NOV_1),
                service_end: None,
            },
            SalesOrderLine {
                line_number: 2,
                product_id: "prod-onboarding".into(),
                description: Some("Onboarding workshop, 2 days".into()),
                quantity: dec("1.5"),
                unit_price: dec("1200.123456789012"),
                discount_amount: None,
                line_amount: dec("1800.185185"),
                tax_code: Some("SERVICE".into()),
                service_start: Some(NOV_1),
                service_end: Some(DEC_1),
            },
        ]
    }

    pub(crate) fn sales_order() -> SalesOrder {
        SalesOrder {
            metadata: metadata(
                "cpq",
                "backbone.sales.order.confirmed",
                "ord-1001@confirmed",
            ),
            order_id: "ord-1001".into(),
            revision: 2,
            order_number: "SO-2026-001001".into(),
            customer_id: "cust-42".into(),
            legal_entity_id: "le-de".into(),
            status: OrderStatus::Confirmed,
            ordered_at: OCCURRED_AT,
            currency: "EUR".into(),
            lines: order_lines(),
            net_amount: dec("2697.935185"),
            tax_amount: dec("512.607685"),
            total_amount: dec("3210.54287"),
            subscription_id: Some("sub-42".into()),
            ship_to: Some(address()),
            external_reference: None,
        }
    }

    #[test]
    pub(crate) fn sales_order_matches_its_contract() {
        check(&sales_order());
    }

    #[test]
    pub(crate) fn sales_order_line_matches_its_contract() {
        for line in order_lines() {
            check(&line);
        }
    }

    fn invoice_lines() -> Vec<InvoiceLine> {
        vec![
            InvoiceLine {
                line_number: 1,
                description: "Storage (region=eu-central-1)".into(),
                product_id: None,
                charge_id: Some("storage".into()),
                quantity: dec("1036.845678"),
                unit_price: None,
                amount: dec("20.736913"),
                tax_amount: dec("3.940013"),
                period_start: Some(NOV_1),
                period_end: Some(DEC_1),
                rating_ids: vec!["rat-3c59dc04".into(), "rat-b6d767d2".into()],
            },
            InvoiceLine {
                line_number: 2,
                description: "Goodwill credit".into(),
                product_id: Some("prod-credit".into()),
                charge_id: None,
                quantity: dec("1"),
                unit_price: Some(dec("-12.345678")),
                amount: dec("-12.345678"),
                tax_amount: dec("-2.345679"),
                period_start: None,
                period_end: None,
                rating_ids: vec![],
            },
        ]
    }

    #[test]
    pub(crate) fn invoice_matches_its_contract() {
        check(&Invoice {
            metadata: metadata("billing", "backbone.sales.invoice.issued", "inv-77@issued"),
            invoice_id: "inv-77".into(),
            invoice_number: "RE-2026-0077".into(),
            customer_id: "cust-42".into(),
            legal_entity_id: "le-de".into(),
            status: InvoiceStatus::Issued,
            currency: "EUR".into(),
            issue_date: DEC_1,
            due_date: DEC_1 + 14,
            lines: invoice_lines(),
            subtotal_amount: dec("8.391235"),
            tax_amount: dec("1.594334"),
            total_amount: dec("9.985569"),
            subscription_id: Some("sub-42".into()),
            order_id: None,
            period_start: Some(NOV_1),
            period_end: Some(DEC_1),
            billing_email: Some("billing@nordwind.example".into()),
            billing_address: None,
        });
    }

    #[test]
    pub(crate) fn invoice_line_matches_its_contract() {
        for line in invoice_lines() {
            check(&line);
        }
    }
}
