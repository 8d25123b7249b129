//! The legacy ERP: it has no API, it imports files. A batch is dropped as one file in the
//! ERP's own layout, with its own account codes, and the ERP answers each file with an
//! acknowledgement file that accepts it (naming the document it became and the references it
//! holds) or rejects it (with a code and a reason).
//!
//! The batch file, `<batch_id>.csv`, semicolon-separated, one record per row:
//!
//! ```text
//! H;<batch id>;<tenant>;<legal entity>;<YYYYMM>;<posting date YYYYMMDD>;<REG|ADJ>;<adjusted batch id>
//! L;<row>;<account>;<D|C>;<amount>;<currency>;<reference>;<text>
//! T;<rows>;<total debits>;<total credits>
//! ```
//!
//! One `L` row per side of a journal line: a line with a debit and a credit gives two. Text
//! loses any `;` and line break, which the layout cannot carry.
//!
//! The acknowledgement, `<batch id>.ack`:
//!
//! ```text
//! A;<batch id>;<ACCEPTED|DUPLICATE|REJECTED>;<document>;<code>;<message>
//! R;<reference>
//! ```
//!
//! with an `R` row per reference the ERP holds under that batch id (none for a rejection).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backbone_calendar::civil_from_days;
use backbone_core::config::ConfigError;
use backbone_schemas::types::{Amount, BatchType, JournalBatch};
use serde::Deserialize;

use crate::outbox::drop_file;

/// The `[sink.legacy]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacySettings {
    /// Where batch files are dropped for the ERP to import.
    pub drop_dir: PathBuf,
    /// Where the ERP writes its acknowledgement of each file.
    pub ack_dir: PathBuf,
    /// How often a dropped file's acknowledgement is looked for.
    #[serde(with = "humantime_serde", default = "default_poll")]
    pub poll: Duration,
    /// The ERP's account code for each GL account posted to it.
    pub accounts: BTreeMap<String, String>,
}

fn default_poll() -> Duration {
    Duration::from_secs(5)
}

impl LegacySettings {
    /// Checked at start-up: both directories named, every account code fit for the layout.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: format!("sink.legacy.{key}"),
                message,
            })
        };
        for (key, dir) in [("drop_dir", &self.drop_dir), ("ack_dir", &self.ack_dir)] {
            if dir.as_os_str().is_empty() {
                return invalid(key, "must be a directory path".to_owned());
            }
        }
        if self.poll.is_zero() {
            return invalid("poll", "must be longer than zero".to_owned());
        }
        if self.accounts.is_empty() {
            return invalid(
                "accounts",
                "must map each GL account posted to the legacy ERP to its code there".to_owned(),
            );
        }
        for (account, code) in &self.accounts {
            if code.is_empty() || code.contains([';', '\n', '\r']) {
                return invalid(
                    &format!("accounts.{account}"),
                    format!("`{code}` is not a code the file layout can carry"),
                );
            }
        }
        Ok(())
    }
}

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

/// The ERP's answer to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Imported now or before (`DUPLICATE`): the document and the references it holds.
    Held {
        /// The ERP's document number.
        document: String,
        /// The references of its lines.
        references: BTreeSet<String>,
    },
    /// Refused: nothing of the file is in the ERP.
    Rejected {
        /// The ERP's code.
        code: String,
        /// Its reason.
        message: String,
    },
}

/// Reads an acknowledgement file's text, for batch `batch_id`.
pub fn parse_ack(batch_id: &str, text: &str) -> Result<Answer, String> {
    let mut rows = text.lines().filter(|row| !row.is_empty());
    let head: Vec<&str> = rows
        .next()
        .ok_or("the acknowledgement is empty")?
        .splitn(6, ';')
        .collect();
    if head.len() != 6 || head[0] != "A" {
        return Err(format!("its first row is not `A;...`: {}", head.join(";")));
    }
    if head[1] != batch_id {
        return Err(format!("it acknowledges batch `{}`", head[1]));
    }
    let mut references = BTreeSet::new();
    for row in rows {
        match row.split_once(';') {
            Some(("R", reference)) => {
                references.insert(reference.to_owned());
            }
            _ => return Err(format!("unreadable row `{row}`")),
        }
    }
    match head[2] {
        "ACCEPTED" | "DUPLICATE" => Ok(Answer::Held {
            document: head[3].to_owned(),
            references,
        }),
        "REJECTED" => Ok(Answer::Rejected {
            code: head[4].to_owned(),
            message: head[5].to_owned(),
        }),
        status => Err(format!("unknown status `{status}`")),
    }
}

/// The legacy ERP's two directories.
#[derive(Debug, Clone)]
pub struct LegacyErp {
    settings: LegacySettings,
}

impl LegacyErp {
    /// The ERP behind `settings`.
    pub fn new(settings: LegacySettings) -> Self {
        Self { settings }
    }

    /// The mapping table.
    pub fn accounts(&self) -> &BTreeMap<String, String> {
        &self.settings.accounts
    }

    /// How often an acknowledgement is looked for.
    pub fn poll(&self) -> Duration {
        self.settings.poll
    }

    /// The ERP's answer to batch `batch_id`, if it has answered; an acknowledgement it cannot
    /// read is an error naming the file.
    pub fn answer(&self, batch_id: &str) -> io::Result<Option<Answer>> {
        let path = self.settings.ack_dir.join(format!("{batch_id}.ack"));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        parse_ack(batch_id, &text).map(Some).map_err(|reason| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("acknowledgement `{}`: {reason}", path.display()),
            )
        })
    }

    /// Whether batch `batch_id`'s file waits in the drop directory, not imported yet.
    pub fn waiting(&self, batch_id: &str) -> bool {
        self.file_path(batch_id).exists()
    }

    /// Drops `text` as batch `batch_id`'s file, whole or not at all.
    pub fn drop_batch(&self, batch_id: &str, text: &str) -> io::Result<()> {
        drop_file(&self.settings.drop_dir, &format!("{batch_id}.csv"), text)
    }

    fn file_path(&self, batch_id: &str) -> PathBuf {
        Path::new(&self.settings.drop_dir).join(format!("{batch_id}.csv"))
    }
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

    #[test]
    fn an_acknowledgement_holds_references_or_a_reason() {
        let held =
            parse_ack("jb-1", "A;jb-1;ACCEPTED;LJ-000001;;\nR;rt-1\nR;rt-2\n").expect("read");
        assert_eq!(
            held,
            Answer::Held {
                document: "LJ-000001".into(),
                references: ["rt-1".to_owned(), "rt-2".to_owned()].into()
            }
        );
        let rejected = parse_ack(
            "jb-1",
            "A;jb-1;REJECTED;;unknown_account;account 800001; not in the chart\n",
        )
        .expect("read");
        assert_eq!(
            rejected,
            Answer::Rejected {
                code: "unknown_account".into(),
                message: "account 800001; not in the chart".into()
            }
        );
        assert!(
            parse_ack("jb-2", "A;jb-1;ACCEPTED;LJ-1;;\n").is_err(),
            "another batch's"
        );
        assert!(parse_ack("jb-1", "A;jb-1;MAYBE;;;\n").is_err());
        assert!(parse_ack("jb-1", "A;jb-1;ACCEPTED;LJ-1;;\nX;1\n").is_err());
        assert!(parse_ack("jb-1", "").is_err());
    }
}
