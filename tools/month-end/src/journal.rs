//! A written batch as the ERP side's journal: one balanced `JournalBatch` per currency, the
//! record that `erp.journal-batches` carries so that reconciliation and analytics can read what
//! month-end handed to finance from the backbone itself.

use backbone_rating::content_id;
use backbone_schemas::types::{
    Amount, BatchType, ControlTotal, EventMetadata, JournalBatch, PostingLine, TraceContext,
};

use crate::batch::{Batch, BatchKind, Manifest};
use crate::MonthEndError;

/// The instants and day the batch's month spans in its legal entity's time zone.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// First day of the month.
    pub period_start: i32,
    /// First day of the next month.
    pub period_end: i32,
    /// The month's first instant, microseconds.
    pub start: i64,
    /// The next month's first instant, microseconds.
    pub end: i64,
}

/// The id of `tenant`'s month-end batch `sequence` of `legal_entity` for the month starting
/// `period_start`, in `currency`: derived from them alone, so a batch published again has the
/// same id.
pub fn batch_id(
    tenant: &str,
    legal_entity: &str,
    currency: &str,
    period_start: i32,
    sequence: u32,
) -> String {
    content_id(
        "me-",
        &[
            tenant,
            legal_entity,
            currency,
            &period_start.to_string(),
            &sequence.to_string(),
        ],
    )
}

/// `batch`'s journal, one `JournalBatch` per currency; none for a batch without invoices. An
/// adjusting batch's journal names the first of the `earlier` batches with postings in its
/// currency as the one it adjusts.
pub fn journal_batches(
    batch: &Batch,
    earlier: &[&Manifest],
    window: Window,
) -> Result<Vec<JournalBatch>, MonthEndError> {
    let manifest = &batch.manifest;
    let (tenant, entity) = (&manifest.entity.tenant, &manifest.entity.legal_entity_id);
    let amount = |unscaled: i128| {
        Amount::from_unscaled(unscaled).map_err(|e| MonthEndError::Input {
            what: format!("the journal of {tenant}/{entity} {}", manifest.period),
            message: e.to_string(),
        })
    };
    let mut batches = Vec::new();
    for (currency, rated) in &batch.rating_ids {
        let id = batch_id(
            tenant,
            entity,
            currency,
            window.period_start,
            manifest.sequence,
        );
        let sides: Vec<_> = batch
            .journal
            .iter()
            .filter(|l| &l.currency == currency)
            .collect();
        let mut lines = Vec::with_capacity(sides.len());
        for (number, side) in (1..).zip(&sides) {
            lines.push(PostingLine {
                line_number: number,
                gl_account: side.gl_account.clone(),
                debit: amount(side.debit)?,
                credit: amount(side.credit)?,
                currency: currency.clone(),
                description: format!("Month-end {} {entity}", manifest.period),
                source_rating_id: None,
                customer_id: None,
            });
        }
        let (debits, credits): (i128, i128) = (
            sides.iter().map(|l| l.debit).sum(),
            sides.iter().map(|l| l.credit).sum(),
        );
        // The contract's rule, and the ERP's: a batch whose sides differ is not sent.
        if debits != credits {
            return Err(MonthEndError::Unbalanced {
                what: format!(
                    "the {currency} journal of {tenant}/{entity} {}",
                    manifest.period
                ),
                message: format!(
                    "debits {} against credits {}",
                    amount(debits)?,
                    amount(credits)?
                ),
            });
        }
        let line_count = i32::try_from(lines.len()).unwrap_or(i32::MAX);
        batches.push(JournalBatch {
            metadata: EventMetadata {
                tenant_id: tenant.clone(),
                event_id: id.clone(),
                source: "month-end".to_owned(),
                r#type: "backbone.erp.journal_batch".to_owned(),
                occurred_at: window.end,
                // From the batch alone, so that the record is the same whenever it is sent.
                produced_at: window.end,
                trace: TraceContext {
                    traceparent: String::new(),
                    tracestate: None,
                },
                schema_version: None,
            },
            batch_id: id,
            legal_entity_id: entity.clone(),
            period_start: window.period_start,
            period_end: window.period_end,
            window_start: window.start,
            window_end: window.end,
            batch_type: match manifest.kind {
                BatchKind::Period => BatchType::Regular,
                BatchKind::Adjusting => BatchType::Adjustment,
            },
            posting_date: window.period_end - 1,
            line_count,
            control_totals: vec![ControlTotal {
                currency: currency.clone(),
                line_count,
                total_debits: amount(debits)?,
                total_credits: amount(credits)?,
            }],
            source_rating_count: i64::try_from(*rated).unwrap_or(i64::MAX),
            lines,
            adjusts_batch_id: earlier
                .iter()
                .find(|m| m.control_totals.iter().any(|t| &t.currency == currency))
                .map(|m| batch_id(tenant, entity, currency, window.period_start, m.sequence)),
        });
    }
    Ok(batches)
}
