//! The legacy ERP's batch file, `<batch_id>.csv`: semicolon-separated, one record per row,
//! in the ERP's own account codes.
//!
//! ```text
//! H;<batch id>;<tenant>;<legal entity>;<YYYYMM>;<posting date YYYYMMDD>;<REG|ADJ>;<adjusted batch id>
//! L;<row>;<account>;<D|C>;<amount>;<currency>;<reference>;<text>
//! T;<rows>;<total debits>;<total credits>
//! ```
//!
//! One `L` row per side of a journal line: a line with a debit and a credit gives two. Text
//! loses any `;` and line break, which the layout cannot carry.

use std::collections::BTreeMap;

use backbone_calendar::civil_from_days;
use backbone_schemas::types::{Amount, BatchType, JournalBatch};

/// Why a batch cannot be written in the legacy layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The mapping table has no code for an account the batch posts to.
    #[error("batch {batch_id}: GL account `{account}` has no legacy code in sink.legacy.accounts")]
    UnmappedAccount {
        /// The batch.
        batch_id: String,
        /// The account.
        account: String,
    },
    /// A field the layout cannot carry.
    #[error("batch {batch_id}: {field} `{value}` cannot be written in the legacy layout")]
    Unwritable {
        /// The batch.
        batch_id: String,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: String,
    },
}

/// `batch` in the legacy layout, its accounts mapped through `accounts`.
pub fn legacy_file(
    batch: &JournalBatch,
    accounts: &BTreeMap<String, String>,
) -> Result<String, LayoutError> {
    let id = &batch.batch_id;
    let plain = |field: &'static str, value: &str| {
        if value.contains([';', '\n', '\r']) {
            Err(LayoutError::Unwritable {
                batch_id: id.clone(),
                field,
                value: value.to_owned(),
            })
        } else {
            Ok(value.to_owned())
        }
    };
    let (year, month, _) = civil_from_days(batch.period_start);
    let (py, pm, pd) = civil_from_days(batch.posting_date);
    let kind = match batch.batch_type {
        BatchType::Regular => "REG",
        BatchType::Adjustment => "ADJ",
        other => {
            return Err(LayoutError::Unwritable {
                batch_id: id.clone(),
                field: "batch type",
                value: format!("{other:?}"),
            })
        }
    };
    let mut text = format!(
        "H;{};{};{};{year:04}{month:02};{py:04}{pm:02}{pd:02};{kind};{}\n",
        plain("batch id", id)?,
        plain("tenant", &batch.metadata.tenant_id)?,
        plain("legal entity", &batch.legal_entity_id)?,
        plain(
            "adjusted batch id",
            batch.adjusts_batch_id.as_deref().unwrap_or("")
        )?,
    );
    let mut rows = 0u64;
    for line in &batch.lines {
        let code = accounts
            .get(&line.gl_account)
            .ok_or_else(|| LayoutError::UnmappedAccount {
                batch_id: id.clone(),
                account: line.gl_account.clone(),
            })?;
        let reference = plain("reference", line.source_rating_id.as_deref().unwrap_or(""))?;
        let currency = plain("currency", &line.currency)?;
        let description: String = line
            .description
            .chars()
            .map(|c| {
                if matches!(c, ';' | '\n' | '\r') {
                    ' '
                } else {
                    c
                }
            })
            .collect();
        let mut sides = Vec::new();
        if line.debit != Amount::ZERO || line.credit == Amount::ZERO {
            sides.push(("D", line.debit));
        }
        if line.credit != Amount::ZERO {
            sides.push(("C", line.credit));
        }
        for (side, amount) in sides {
            rows += 1;
            text.push_str(&format!(
                "L;{rows};{code};{side};{amount};{currency};{reference};{description}\n"
            ));
        }
    }
    // A batch of the sink is in one currency: its one control total is the file's.
    let (debits, credits) = batch
        .control_totals
        .first()
        .map_or((Amount::ZERO, Amount::ZERO), |t| {
            (t.total_debits, t.total_credits)
        });
    text.push_str(&format!("T;{rows};{debits};{credits}\n"));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_calendar::days_from_civil;
    use backbone_schemas::types::{ControlTotal, EventMetadata, PostingLine, TraceContext};

    fn amount(text: &str) -> Amount {
        text.parse().expect("amount")
    }

    fn line(n: i32, account: &str, debit: &str, credit: &str, text: &str) -> PostingLine {
        PostingLine {
            line_number: n,
            gl_account: account.into(),
            debit: amount(debit),
            credit: amount(credit),
            currency: "EUR".into(),
            description: text.into(),
            source_rating_id: Some("rt-1".into()),
            customer_id: None,
        }
    }

    fn batch(lines: Vec<PostingLine>) -> JournalBatch {
        JournalBatch {
            metadata: EventMetadata {
                tenant_id: "acme".into(),
                event_id: "jb-1".into(),
                source: "erp-sink".into(),
                r#type: "backbone.erp.journal_batch".into(),
                occurred_at: 0,
                produced_at: 0,
                trace: TraceContext {
                    traceparent: String::new(),
                    tracestate: None,
                },
                schema_version: None,
            },
            batch_id: "jb-1".into(),
            legal_entity_id: "le-berlin".into(),
            period_start: days_from_civil(2026, 11, 1),
            period_end: days_from_civil(2026, 11, 30),
            window_start: 0,
            window_end: 0,
            batch_type: BatchType::Adjustment,
            posting_date: days_from_civil(2026, 11, 9),
            line_count: 2,
            control_totals: vec![ControlTotal {
                currency: "EUR".into(),
                line_count: 2,
                total_debits: amount("12.5"),
                total_credits: amount("12.5"),
            }],
            source_rating_count: 1,
            lines,
            adjusts_batch_id: Some("jb-0".into()),
        }
    }

    #[test]
    fn a_batch_is_written_in_the_legacy_layout_with_its_codes() {
        let accounts = BTreeMap::from([
            ("1200".to_owned(), "140000".to_owned()),
            ("4000".to_owned(), "800000".to_owned()),
        ]);
        let file = legacy_file(
            &batch(vec![
                line(1, "1200", "12.5", "0", "usage; day 9"),
                line(2, "4000", "0", "12.5", "usage\nday 9"),
            ]),
            &accounts,
        )
        .expect("written");
        assert_eq!(
            file,
            "H;jb-1;acme;le-berlin;202611;20261109;ADJ;jb-0\n\
             L;1;140000;D;12.500000;EUR;rt-1;usage  day 9\n\
             L;2;800000;C;12.500000;EUR;rt-1;usage day 9\n\
             T;2;12.500000;12.500000\n"
        );
        let unmapped = legacy_file(&batch(vec![line(1, "4711", "1", "0", "x")]), &accounts);
        assert_eq!(
            unmapped,
            Err(LayoutError::UnmappedAccount {
                batch_id: "jb-1".into(),
                account: "4711".into()
            })
        );
    }
}
