//! `backbone.erp`: balanced journal batches in the shape the ERP imports.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::common::EventMetadata;
use super::{logical, Amount, Contract};

/// A balanced batch of postings for one legal entity, accounting period and posting window;
/// debits equal credits per currency, and corrections come as adjustment batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.erp")]
pub struct JournalBatch {
    /// Envelope; `event_id` equals `batch_id`, `occurred_at` equals `window_end`.
    pub metadata: EventMetadata,
    /// Content-derived id; the ERP's external id, so a replayed batch is not posted twice.
    pub batch_id: String,
    /// Legal entity (ERP company code) posted to.
    pub legal_entity_id: String,
    /// First day (inclusive) of the accounting period, in days since the epoch.
    #[avro(with = logical::date)]
    pub period_start: i32,
    /// Day after the accounting period (exclusive), in days since the epoch.
    #[avro(with = logical::date)]
    pub period_end: i32,
    /// Start (inclusive) of the collection window, in microseconds since the epoch.
    #[avro(with = logical::timestamp_micros)]
    pub window_start: i64,
    /// End (exclusive) of the collection window, in microseconds since the epoch.
    #[avro(with = logical::timestamp_micros)]
    pub window_end: i64,
    /// First posting or correction.
    pub batch_type: BatchType,
    /// Posting date of every line, inside the period, in days since the epoch.
    #[avro(with = logical::date)]
    pub posting_date: i32,
    /// Control total: number of lines.
    pub line_count: i32,
    /// Control totals, one per currency.
    pub control_totals: Vec<ControlTotal>,
    /// Distinct rated-usage lines posted by the batch.
    pub source_rating_count: i64,
    /// Posting lines, numbered from 1.
    pub lines: Vec<PostingLine>,
    /// For adjustments, the batch corrected.
    pub adjusts_batch_id: Option<String>,
}

impl Contract for JournalBatch {
    const FULL_NAME: &'static str = "backbone.erp.JournalBatch";
}

/// Whether a journal batch is a first posting or a correction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.erp")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BatchType {
    #[doc = concat!("The window's postings.")]
    Regular,
    #[doc = concat!("Corrections of batches already posted.")]
    Adjustment,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

/// One line of a journal batch: an amount on the debit or credit side of one GL account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.erp")]
pub struct PostingLine {
    /// Position in the batch, from 1.
    pub line_number: i32,
    /// GL account posted to.
    pub gl_account: String,
    /// Debit amount, zero or positive; zero on a credit line.
    pub debit: Amount,
    /// Credit amount, zero or positive; zero on a debit line.
    pub credit: Amount,
    /// Currency of debit and credit, ISO 4217 code.
    pub currency: String,
    /// Line text shown in the ERP.
    pub description: String,
    /// Rated-usage line the posting comes from, for drill-down.
    pub source_rating_id: Option<String>,
    /// Customer account, on receivable lines.
    pub customer_id: Option<String>,
}

impl Contract for PostingLine {
    const FULL_NAME: &'static str = "backbone.erp.PostingLine";
}

/// The journal entry of one rated-usage line: receivable against revenue, balanced in one
/// currency, with accounts from the GL mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.erp")]
pub struct LedgerPosting {
    /// Envelope; `event_id` equals `rating_id`.
    pub metadata: EventMetadata,
    /// The rated line posted, and the posting's idempotency key.
    pub rating_id: String,
    /// Legal entity (ERP company code) posted to.
    pub legal_entity_id: String,
    /// Customer whose receivable moves.
    pub customer_id: String,
    /// Subscription of the rated line.
    pub subscription_id: String,
    /// Charge that priced the line.
    pub charge_id: String,
    /// GL mapping that supplied the accounts.
    pub mapping_id: String,
    /// Day of the rated line's event time, in days since the epoch.
    #[avro(with = logical::date)]
    pub posting_date: i32,
    /// First day (inclusive) of the accounting month, in days since the epoch.
    #[avro(with = logical::date)]
    pub period_start: i32,
    /// Day after the accounting month (exclusive), in days since the epoch.
    #[avro(with = logical::date)]
    pub period_end: i32,
    /// Currency of every line, ISO 4217 code.
    pub currency: String,
    /// Signed amount of the rated line.
    pub amount: Amount,
    /// Posting lines, numbered from 1; debits equal credits.
    pub lines: Vec<PostingLine>,
}

impl Contract for LedgerPosting {
    const FULL_NAME: &'static str = "backbone.erp.LedgerPosting";
}

/// Control totals of a journal batch for one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.erp")]
pub struct ControlTotal {
    /// Currency of the totals, ISO 4217 code.
    pub currency: String,
    /// Posting lines in this currency.
    pub line_count: i32,
    /// Sum of their debits.
    pub total_debits: Amount,
    /// Sum of their credits; equals `total_debits` in a balanced batch.
    pub total_credits: Amount,
}

impl Contract for ControlTotal {
    const FULL_NAME: &'static str = "backbone.erp.ControlTotal";
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::common::tests::{metadata, DEC_1, NOV_1, OCCURRED_AT};
    use crate::types::tests::{check, dec};

    fn lines() -> Vec<PostingLine> {
        vec![
            PostingLine {
                line_number: 1,
                gl_account: "1400".into(),
                debit: dec("12.345678"),
                credit: Amount::ZERO,
                currency: "EUR".into(),
                description: "Usage storage_gb 2026-11 sub-42".into(),
                source_rating_id: Some("rat-3c59dc04".into()),
                customer_id: Some("cust-42".into()),
            },
            PostingLine {
                line_number: 2,
                gl_account: "4400".into(),
                debit: Amount::ZERO,
                credit: dec("12.345678"),
                currency: "EUR".into(),
                description: "Usage storage_gb 2026-11 sub-42".into(),
                source_rating_id: None,
                customer_id: None,
            },
        ]
    }

    fn totals() -> ControlTotal {
        ControlTotal {
            currency: "EUR".into(),
            line_count: 2,
            total_debits: dec("12.345678"),
            total_credits: dec("12.345678"),
        }
    }

    #[test]
    pub(crate) fn journal_batch_matches_its_contract() {
        let window_end = OCCURRED_AT;
        check(&JournalBatch {
            metadata: metadata(
                "erp-batcher",
                "backbone.erp.journal-batch",
                "batch-c81e728d",
            ),
            batch_id: "batch-c81e728d".into(),
            legal_entity_id: "le-de".into(),
            period_start: NOV_1,
            period_end: DEC_1,
            window_start: window_end - 900_000_000,
            window_end,
            batch_type: BatchType::Adjustment,
            posting_date: 20_771,
            line_count: 2,
            control_totals: vec![totals()],
            source_rating_count: 1,
            lines: lines(),
            adjusts_batch_id: Some("batch-eccbc87e".into()),
        });
    }

    #[test]
    pub(crate) fn ledger_posting_matches_its_contract() {
        check(&LedgerPosting {
            metadata: metadata("fanout", "backbone.erp.posting", "rat-3c59dc04"),
            rating_id: "rat-3c59dc04".into(),
            legal_entity_id: "le-de".into(),
            customer_id: "cust-42".into(),
            subscription_id: "sub-42".into(),
            charge_id: "storage".into(),
            mapping_id: "gl-de-default".into(),
            posting_date: 20_771,
            period_start: NOV_1,
            period_end: DEC_1,
            currency: "EUR".into(),
            amount: dec("12.345678"),
            lines: lines(),
        });
    }

    #[test]
    pub(crate) fn posting_line_matches_its_contract() {
        for line in lines() {
            check(&line);
        }
    }

    #[test]
    pub(crate) fn control_total_matches_its_contract() {
        check(&totals());
    }
}
