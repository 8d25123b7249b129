//! The ERP's journal API: what `POST /erp/v1/journal-batches` carries for a batch.

use backbone_calendar::format_date;
use backbone_schemas::types::JournalBatch;
use serde::Serialize;

/// The body of `POST /erp/v1/journal-batches`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalRequest {
    /// The batch id: the ERP's external id.
    pub external_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Legal entity whose books are posted to.
    pub legal_entity_id: String,
    /// Accounting period, `YYYY-MM`.
    pub period: String,
    /// `YYYY-MM-DD`.
    pub posting_date: String,
    /// `REGULAR` or `ADJUSTMENT`.
    pub batch_type: String,
    /// The regular batch an adjustment corrects.
    pub adjusts: Option<String>,
    /// The journal lines.
    pub lines: Vec<JournalLine>,
    /// Per currency: lines, debits and credits, checked by the ERP against the lines.
    pub control_totals: Vec<JournalControlTotal>,
}

/// One line of a [`JournalRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalLine {
    /// 1-based position.
    pub line_number: i32,
    /// GL account.
    pub gl_account: String,
    /// Debit, exact decimal string.
    pub debit: String,
    /// Credit, exact decimal string.
    pub credit: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Line text.
    pub description: String,
    /// The posting the line comes from (its `rating_id`), by which the ERP finds it.
    pub reference: Option<String>,
}

/// A control total of a [`JournalRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalControlTotal {
    /// ISO 4217 code.
    pub currency: String,
    /// Lines in that currency.
    pub line_count: i32,
    /// Sum of their debits.
    pub total_debits: String,
    /// Sum of their credits.
    pub total_credits: String,
}

impl JournalRequest {
    /// The request for `batch`.
    pub fn from_batch(batch: &JournalBatch) -> Self {
        let period = format_date(batch.period_start);
        Self {
            external_id: batch.batch_id.clone(),
            tenant_id: batch.metadata.tenant_id.clone(),
            legal_entity_id: batch.legal_entity_id.clone(),
            period: period[..7].to_owned(),
            posting_date: format_date(batch.posting_date),
            batch_type: serde_json::to_value(batch.batch_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            adjusts: batch.adjusts_batch_id.clone(),
            lines: batch
                .lines
                .iter()
                .map(|line| JournalLine {
                    line_number: line.line_number,
                    gl_account: line.gl_account.clone(),
                    debit: line.debit.to_string(),
                    credit: line.credit.to_string(),
                    currency: line.currency.clone(),
                    description: line.description.clone(),
                    reference: line.source_rating_id.clone(),
                })
                .collect(),
            control_totals: batch
                .control_totals
                .iter()
                .map(|total| JournalControlTotal {
                    currency: total.currency.clone(),
                    line_count: total.line_count,
                    total_debits: total.total_debits.to_string(),
                    total_credits: total.total_credits.to_string(),
                })
                .collect(),
        }
    }
}
