//! The legacy ERP: it has no API. It imports the batch files dropped in a directory, in its
//! own semicolon layout (`H` header, `L` rows with a debit or credit each, `T` trailer with
//! row count and totals), and answers each with `<batch id>.ack` in its acknowledgement
//! directory:
//!
//! ```text
//! A;<batch id>;<ACCEPTED|DUPLICATE|REJECTED>;<document>;<code>;<message>
//! R;<reference>
//! ```
//!
//! It holds a batch id once: a file whose id it holds is answered `DUPLICATE` with the
//! document and references it holds. It refuses a file it cannot read, one whose trailer does
//! not match its rows, one whose debits and credits differ, one posting to an account outside
//! its chart, or one for a closed period; a refused file leaves nothing in its books. An
//! imported file moves to `imported/` in the drop directory, a refused one to `rejected/`.
//! After each import it can export its whole journal to a file, as legacy systems export to
//! reconciliation.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use crate::lock;
use crate::money::Amount;

/// The `[legacy_erp]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyErpSettings {
    /// Where batch files are dropped.
    pub drop_dir: PathBuf,
    /// Where the acknowledgements go.
    pub ack_dir: PathBuf,
    /// How often the drop directory is read.
    #[serde(with = "humantime_serde", default = "default_poll")]
    pub poll: Duration,
    /// The chart of accounts: codes a row may post to. Empty takes any.
    #[serde(default)]
    pub accounts: BTreeSet<String>,
    /// Periods (`YYYYMM`, as the layout writes them) refused as closed.
    #[serde(default)]
    pub closed_periods: BTreeSet<String>,
    /// Where the ERP exports its journal after each import, for reconciliation: a header,
    /// then `document;batch_id;tenant;legal_entity;period;account;side;amount;currency;reference`
    /// per row it holds.
    #[serde(default)]
    pub export_file: Option<PathBuf>,
}

fn default_poll() -> Duration {
    Duration::from_millis(500)
}

/// One row of an imported batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedRow {
    /// The legacy account code.
    pub account: String,
    /// `D` or `C`.
    pub side: String,
    /// The amount, as written.
    pub amount: String,
    /// Currency.
    pub currency: String,
    /// The sender's reference.
    pub reference: String,
}

/// A batch the legacy ERP holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedBatch {
    /// The sender's batch id.
    pub batch_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Legal entity.
    pub legal_entity_id: String,
    /// Period, `YYYYMM`.
    pub period: String,
    /// Posting date, `YYYYMMDD`.
    pub posting_date: String,
    /// `REG` or `ADJ`.
    pub kind: String,
    /// The rows.
    pub rows: Vec<ImportedRow>,
    /// The document number it became, `LJ-000001` onwards.
    pub document: String,
}

/// Why a file is refused: the acknowledgement's code and message.
struct Refusal(&'static str, String);

/// The legacy ERP's books and its two directories.
pub struct LegacyErp {
    settings: LegacyErpSettings,
    books: Mutex<Books>,
}

#[derive(Default)]
struct Books {
    batches: Vec<ImportedBatch>,
    by_id: HashMap<String, usize>,
}

impl LegacyErp {
    /// An ERP with empty books.
    pub fn new(settings: LegacyErpSettings) -> Self {
        Self {
            settings,
            books: Mutex::default(),
        }
    }

    /// The batches it holds, in the order it imported them.
    pub fn batches(&self) -> Vec<ImportedBatch> {
        lock(&self.books).batches.clone()
    }

    /// Imports every file waiting in the drop directory, by name, and answers each; returns
    /// how many it answered.
    pub fn import_waiting(&self) -> io::Result<usize> {
        let mut names: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(&self.settings.drop_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_file() && !name.starts_with('.') && name.ends_with(".csv") {
                names.push(name);
            }
        }
        names.sort();
        for name in &names {
            self.import(&self.settings.drop_dir.join(name))?;
        }
        Ok(names.len())
    }

    /// Reads the drop directory every `poll`, for as long as the task runs.
    pub async fn run(&self) {
        loop {
            if let Err(err) = self.import_waiting() {
                tracing::warn!(error = %err, "legacy ERP: cannot import from the drop directory");
            }
            tokio::time::sleep(self.settings.poll).await;
        }
    }

    fn import(&self, path: &Path) -> io::Result<()> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let named_id = name.trim_end_matches(".csv").to_owned();
        let ack_path = self.settings.ack_dir.join(format!("{named_id}.ack"));
        // Answered before a crash kept the file from moving: it is not imported twice.
        if ack_path.exists() {
            return move_into(path, "imported");
        }
        let text = std::fs::read_to_string(path)?;
        let (ack, place) = match self.book(&named_id, &text) {
            Ok((status, batch)) => {
                // A duplicate leaves the books as they were, and the export with them.
                if status == "ACCEPTED" {
                    self.export()?;
                }
                let mut ack = format!("A;{named_id};{status};{};;\n", batch.document);
                for reference in batch
                    .rows
                    .iter()
                    .map(|r| &r.reference)
                    .collect::<BTreeSet<_>>()
                {
                    ack.push_str(&format!("R;{reference}\n"));
                }
                (ack, "imported")
            }
            Err(Refusal(code, message)) => (
                format!(
                    "A;{named_id};REJECTED;;{code};{}\n",
                    message.replace('\n', " ")
                ),
                "rejected",
            ),
        };
        std::fs::create_dir_all(&self.settings.ack_dir)?;
        let partial = self
            .settings
            .ack_dir
            .join(format!(".{named_id}.ack.partial"));
        std::fs::write(&partial, ack)?;
        std::fs::rename(partial, ack_path)?;
        move_into(path, place)
    }

    /// Books the file's batch, or says why not; a batch id held already is a duplicate.
    fn book(&self, named_id: &str, text: &str) -> Result<(&'static str, ImportedBatch), Refusal> {
        let (mut batch, debits, credits) =
            parse(text).map_err(|reason| Refusal("malformed_file", reason))?;
        if batch.batch_id != named_id {
            return Err(Refusal(
                "malformed_file",
                format!(
                    "the file is named {named_id} and holds batch {}",
                    batch.batch_id
                ),
            ));
        }
        if debits != credits {
            return Err(Refusal(
                "unbalanced",
                format!("debits {debits} and credits {credits} differ"),
            ));
        }
        let mut books = lock(&self.books);
        if let Some(&at) = books.by_id.get(&batch.batch_id) {
            return Ok(("DUPLICATE", books.batches[at].clone()));
        }
        if let Some(row) = batch.rows.iter().find(|row| {
            !self.settings.accounts.is_empty() && !self.settings.accounts.contains(&row.account)
        }) {
            return Err(Refusal(
                "unknown_account",
                format!("account {} is not in the chart of accounts", row.account),
            ));
        }
        if self.settings.closed_periods.contains(&batch.period) {
            return Err(Refusal(
                "closed_period",
                format!("period {} is closed", batch.period),
            ));
        }
        let at = books.batches.len();
        batch.document = format!("LJ-{:06}", at + 1);
        books.by_id.insert(batch.batch_id.clone(), at);
        books.batches.push(batch.clone());
        Ok(("ACCEPTED", batch))
    }
}

impl LegacyErp {
    /// Writes the journal export, whole, when one is configured.
    fn export(&self) -> io::Result<()> {
        let Some(file) = &self.settings.export_file else {
            return Ok(());
        };
        let mut text = String::from(
            "document;batch_id;tenant;legal_entity;period;account;side;amount;currency;reference\n",
        );
        for batch in &lock(&self.books).batches {
            for row in &batch.rows {
                text.push_str(&format!(
                    "{};{};{};{};{};{};{};{};{};{}\n",
                    batch.document,
                    batch.batch_id,
                    batch.tenant_id,
                    batch.legal_entity_id,
                    batch.period,
                    row.account,
                    row.side,
                    row.amount,
                    row.currency,
                    row.reference
                ));
            }
        }
        let partial = file.with_extension("partial");
        std::fs::write(&partial, text)?;
        std::fs::rename(partial, file)
    }
}

/// Moves the file at `path` into the subdirectory `place` of its directory.
fn move_into(path: &Path, place: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new(".")).join(place);
    std::fs::create_dir_all(&dir)?;
    std::fs::rename(path, dir.join(path.file_name().unwrap_or_default()))
}

/// Reads a batch file: its header, rows and trailer, the trailer checked against the rows;
/// with the rows' debits and credits.
fn parse(text: &str) -> Result<(ImportedBatch, Amount, Amount), String> {
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap_or_default().split(';').collect();
    if head.len() != 8 || head[0] != "H" {
        return Err("the first row is not a header `H;...` of 8 fields".to_owned());
    }
    let mut batch = ImportedBatch {
        batch_id: head[1].to_owned(),
        tenant_id: head[2].to_owned(),
        legal_entity_id: head[3].to_owned(),
        period: head[4].to_owned(),
        posting_date: head[5].to_owned(),
        kind: head[6].to_owned(),
        rows: Vec::new(),
        document: String::new(),
    };
    let (mut debits, mut credits) = (Amount::default(), Amount::default());
    let amount = |text: &str| {
        text.parse::<Amount>()
            .map_err(|_| format!("amount `{text}`"))
    };
    for (n, line) in lines.enumerate() {
        let fields: Vec<&str> = line.splitn(8, ';').collect();
        match fields.first() {
            Some(&"L") if fields.len() == 8 => {
                let value = amount(fields[4])?;
                let total = match fields[3] {
                    "D" => &mut debits,
                    "C" => &mut credits,
                    side => return Err(format!("row {}: side `{side}`", n + 2)),
                };
                *total = total.checked_add(value).ok_or("totals overflow")?;
                batch.rows.push(ImportedRow {
                    account: fields[2].to_owned(),
                    side: fields[3].to_owned(),
                    amount: fields[4].to_owned(),
                    currency: fields[5].to_owned(),
                    reference: fields[6].to_owned(),
                });
            }
            Some(&"T") if fields.len() == 4 => {
                let rows: usize = fields[1].parse().map_err(|_| "trailer row count")?;
                if rows != batch.rows.len()
                    || amount(fields[2])? != debits
                    || amount(fields[3])? != credits
                {
                    return Err(format!(
                        "the trailer says {rows} rows, {} and {}; the rows are {}, {debits} and {credits}",
                        fields[2],
                        fields[3],
                        batch.rows.len()
                    ));
                }
                return Ok((batch, debits, credits));
            }
            _ => return Err(format!("row {} is neither `L` nor `T`: {line}", n + 2)),
        }
    }
    Err("the file has no trailer `T;...`".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erp(name: &str) -> (LegacyErp, PathBuf) {
        let root = std::env::temp_dir()
            .join("backbone-sandbox-legacy-erp")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let settings = LegacyErpSettings {
            drop_dir: root.join("drop"),
            ack_dir: root.join("acks"),
            poll: default_poll(),
            accounts: ["140000", "800000"].map(String::from).into(),
            closed_periods: ["202610".to_owned()].into(),
            export_file: Some(root.join("journal.csv")),
        };
        std::fs::create_dir_all(&settings.drop_dir).expect("drop directory");
        (LegacyErp::new(settings), root)
    }

    fn drop(root: &Path, id: &str, period: &str, rows: &[&str], trailer: &str) {
        let mut text = format!("H;{id};acme;le-berlin;{period};{period}15;REG;\n");
        for row in rows {
            text.push_str(row);
            text.push('\n');
        }
        text.push_str(trailer);
        text.push('\n');
        std::fs::write(root.join("drop").join(format!("{id}.csv")), text).expect("drop");
    }

    fn ack(root: &Path, id: &str) -> String {
        std::fs::read_to_string(root.join("acks").join(format!("{id}.ack"))).expect("ack")
    }

    const DEBIT: &str = "L;1;140000;D;5.00;EUR;rt-1;usage";
    const CREDIT: &str = "L;2;800000;C;5.00;EUR;rt-1;usage";

    #[test]
    fn each_file_is_answered_and_a_batch_id_is_held_once() {
        let (erp, root) = erp("answers");
        drop(&root, "jb-ok", "202611", &[DEBIT, CREDIT], "T;2;5.00;5.00");
        drop(
            &root,
            "jb-trailer",
            "202611",
            &[DEBIT, CREDIT],
            "T;2;5.00;4.00",
        );
        drop(
            &root,
            "jb-unbalanced",
            "202611",
            &[DEBIT, "L;2;800000;C;4.00;EUR;rt-1;x"],
            "T;2;5.00;4.00",
        );
        drop(
            &root,
            "jb-account",
            "202611",
            &[DEBIT, "L;2;800001;C;5.00;EUR;rt-1;x"],
            "T;2;5.00;5.00",
        );
        drop(
            &root,
            "jb-closed",
            "202610",
            &[DEBIT, CREDIT],
            "T;2;5.00;5.00",
        );
        assert_eq!(erp.import_waiting().expect("import"), 5);
        assert_eq!(
            ack(&root, "jb-ok"),
            "A;jb-ok;ACCEPTED;LJ-000001;;\nR;rt-1\n"
        );
        for (id, code) in [
            ("jb-trailer", "malformed_file"),
            ("jb-unbalanced", "unbalanced"),
            ("jb-account", "unknown_account"),
            ("jb-closed", "closed_period"),
        ] {
            let answer = ack(&root, id);
            assert!(
                answer.starts_with(&format!("A;{id};REJECTED;;{code};")),
                "{answer}"
            );
            assert!(root
                .join("drop/rejected")
                .join(format!("{id}.csv"))
                .exists());
        }
        assert_eq!(erp.batches().len(), 1, "refused files leave nothing");
        assert_eq!(
            std::fs::read_to_string(root.join("journal.csv")).expect("export"),
            "document;batch_id;tenant;legal_entity;period;account;side;amount;currency;reference\n\
             LJ-000001;jb-ok;acme;le-berlin;202611;140000;D;5.00;EUR;rt-1\n\
             LJ-000001;jb-ok;acme;le-berlin;202611;800000;C;5.00;EUR;rt-1\n"
        );

        // The same batch id again, as a sender that lost the answer sends it.
        std::fs::remove_file(root.join("acks/jb-ok.ack")).expect("lose the answer");
        drop(&root, "jb-ok", "202611", &[DEBIT, CREDIT], "T;2;5.00;5.00");
        assert_eq!(erp.import_waiting().expect("import"), 1);
        assert_eq!(
            ack(&root, "jb-ok"),
            "A;jb-ok;DUPLICATE;LJ-000001;;\nR;rt-1\n"
        );
        assert_eq!(erp.batches().len(), 1, "held once");
        assert_eq!(erp.import_waiting().expect("nothing waits"), 0);
    }
}
