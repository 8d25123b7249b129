//! The legacy ERP's side of the books: it has no API, so drift reads the journal it exports
//! (`drift.legacy_erp.journal_file`), one row per debit or credit in its own account codes,
//! and maps the codes back to GL accounts through the table `erp-sink` posts through
//! (`drift.legacy_erp.accounts`, GL account to code). A row under a code the table does not
//! map was not posted by the backbone and is not read.
//!
//! The export's rows, after a header:
//! `document;batch_id;tenant;legal_entity;period;account;side;amount;currency;reference`,
//! `period` as `YYYYMM`, `side` `D` or `C`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use backbone_core::config::ConfigError;
use backbone_schemas::types::Amount;
use serde::Deserialize;

use crate::books::HeldJournalLine;
use crate::DriftError;

/// The `[drift.legacy_erp]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyErpSettings {
    /// The legacy ERP's journal export.
    pub journal_file: PathBuf,
    /// GL account to the legacy ERP's code: the table `erp-sink` posts through.
    pub accounts: BTreeMap<String, String>,
}

/// The legacy ERP's journal export, read with its codes mapped back.
#[derive(Debug, Clone)]
pub struct LegacyJournal {
    file: PathBuf,
    gl_account_of: BTreeMap<String, String>,
}

impl LegacyJournal {
    /// The export `settings` name; a code mapped from two GL accounts is refused, since its
    /// rows could not be told apart.
    pub fn new(settings: &LegacyErpSettings) -> Result<Self, ConfigError> {
        let mut gl_account_of = BTreeMap::new();
        for (account, code) in &settings.accounts {
            if let Some(other) = gl_account_of.insert(code.clone(), account.clone()) {
                return Err(ConfigError::Invalid {
                    key: "drift.legacy_erp.accounts".to_owned(),
                    message: format!("code `{code}` is mapped from both `{other}` and `{account}`"),
                });
            }
        }
        Ok(Self {
            file: settings.journal_file.clone(),
            gl_account_of,
        })
    }

    /// The lines the export holds under mapped codes; none while the ERP has exported
    /// nothing yet. A row that cannot be read is an error naming the file and the row.
    pub fn lines(&self) -> Result<Vec<HeldJournalLine>, DriftError> {
        let failed = |message: String| DriftError::System {
            system: "the legacy ERP's journal export",
            url: self.file.display().to_string(),
            message,
        };
        let text = match std::fs::read_to_string(&self.file) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(failed(err.to_string())),
        };
        let mut lines = Vec::new();
        for (n, row) in text.lines().enumerate().skip(1) {
            let unreadable = |what: &str| failed(format!("row {}: {what}: {row}", n + 1));
            let fields: Vec<&str> = row.split(';').collect();
            let [_, _, tenant, entity, period, code, side, amount, currency, _] = fields[..] else {
                return Err(unreadable("not 10 fields"));
            };
            let Some(gl_account) = self.gl_account_of.get(code) else {
                continue;
            };
            let amount: Amount = amount.parse().map_err(|_| unreadable("amount"))?;
            let net = match side {
                "D" => amount.unscaled(),
                "C" => -amount.unscaled(),
                _ => return Err(unreadable("side")),
            };
            let (Some(year), Some(month)) = (period.get(..4), period.get(4..)) else {
                return Err(unreadable("period"));
            };
            lines.push(HeldJournalLine {
                tenant: tenant.to_owned(),
                legal_entity: entity.to_owned(),
                period: format!("{year}-{month}"),
                gl_account: gl_account.clone(),
                currency: currency.to_owned(),
                net,
            });
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(name: &str, text: Option<&str>) -> LegacyJournal {
        let file = std::env::temp_dir()
            .join("backbone-drift-legacy")
            .join(format!("{}-{name}.csv", std::process::id()));
        let _ = std::fs::remove_file(&file);
        if let Some(text) = text {
            std::fs::create_dir_all(file.parent().expect("dir")).expect("dir");
            std::fs::write(&file, text).expect("export");
        }
        LegacyJournal::new(&LegacyErpSettings {
            journal_file: file,
            accounts: BTreeMap::from([
                ("1200-receivables".to_owned(), "140000".to_owned()),
                ("4000-revenue".to_owned(), "800000".to_owned()),
            ]),
        })
        .expect("journal")
    }

    const HEADER: &str =
        "document;batch_id;tenant;legal_entity;period;account;side;amount;currency;reference\n";

    #[test]
    fn rows_are_read_back_in_gl_accounts_and_foreign_codes_are_not_read() {
        let text = format!(
            "{HEADER}LJ-1;jb-1;acme;le-berlin;202611;140000;D;5.25;EUR;rt-1\n\
             LJ-1;jb-1;acme;le-berlin;202611;800000;C;5.25;EUR;rt-1\n\
             LJ-9;x;acme;le-berlin;202611;999999;D;1;EUR;\n"
        );
        let lines = journal("good", Some(&text)).lines().expect("read");
        let read: Vec<(&str, &str, i128)> = lines
            .iter()
            .map(|l| (l.period.as_str(), l.gl_account.as_str(), l.net))
            .collect();
        assert_eq!(
            read,
            [
                ("2026-11", "1200-receivables", 5_250_000),
                ("2026-11", "4000-revenue", -5_250_000)
            ]
        );
        assert!(journal("none", None)
            .lines()
            .expect("no export yet")
            .is_empty());
        let bad = format!("{HEADER}LJ-1;jb-1;acme;le-berlin;202611;140000;X;5;EUR;rt-1\n");
        let err = journal("bad", Some(&bad)).lines().expect_err("a bad side");
        assert!(err.to_string().contains("row 2: side"), "{err}");
    }

    #[test]
    fn a_code_mapped_from_two_accounts_is_refused() {
        let err = LegacyJournal::new(&LegacyErpSettings {
            journal_file: PathBuf::from("journal.csv"),
            accounts: BTreeMap::from([
                ("1200".to_owned(), "140000".to_owned()),
                ("1210".to_owned(), "140000".to_owned()),
            ]),
        })
        .expect_err("refused");
        assert!(err.to_string().contains("140000"), "{err}");
    }
}
