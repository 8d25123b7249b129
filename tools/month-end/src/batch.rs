//! One legal entity's batch for a period, built from its issued invoices and the GL mappings:
//! the files' bytes and the manifest that names them. Nothing here reads a clock or a
//! directory, so the same invoices always give the same bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use backbone_calendar::{civil_from_days, days_from_civil, format_date};
use backbone_schemas::types::{Amount, GlMapping, Invoice};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::MonthEndError;

/// A calendar month, as `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period {
    year: i64,
    month: u32,
}

impl Period {
    /// Parses `YYYY-MM`.
    pub fn parse(text: &str) -> Result<Self, MonthEndError> {
        let invalid = || MonthEndError::Input {
            what: format!("--period {text:?}"),
            message: "expected a month as YYYY-MM, e.g. 2026-10".to_owned(),
        };
        let (year, month) = text.split_once('-').ok_or_else(invalid)?;
        let (year, month): (i64, u32) = (
            year.parse().map_err(|_| invalid())?,
            month.parse().map_err(|_| invalid())?,
        );
        if year.to_string().len() != 4 || month == 0 || month > 12 {
            return Err(invalid());
        }
        Ok(Self { year, month })
    }

    /// The month holding `day` (days since 1970-01-01).
    pub fn of_day(day: i32) -> Self {
        let (year, month, _) = civil_from_days(day);
        Self { year, month }
    }

    /// Its first day.
    pub fn start(self) -> i32 {
        days_from_civil(self.year, self.month, 1)
    }

    /// The first day of the next month.
    pub fn end(self) -> i32 {
        self.next().start()
    }

    /// The month after.
    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The month before.
    pub fn previous(self) -> Self {
        if self.month == 1 {
            Self {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Self {
                year: self.year,
                month: self.month - 1,
            }
        }
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Whose batch: a legal entity of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Entity {
    /// Tenant.
    pub tenant: String,
    /// Legal entity.
    pub legal_entity_id: String,
}

/// The first batch of a period, or one that adds invoices issued after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchKind {
    /// The period's batch.
    Period,
    /// Invoices of the period issued after its earlier batches were written.
    Adjusting,
}

impl std::fmt::Display for BatchKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Period => "period",
            Self::Adjusting => "adjusting",
        })
    }
}

/// A file of a batch and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFile {
    /// File name within the batch's directory.
    pub name: &'static str,
    /// Content.
    pub bytes: Vec<u8>,
}

/// A batch as it is written: its files, the manifest last, and its postings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// What the manifest says.
    pub manifest: Manifest,
    /// The data files and then `manifest.json`.
    pub files: Vec<BatchFile>,
    /// The batch as journal lines, receivables first: one per receivable account and currency
    /// (the customers are in `receivables.csv`), then the rows of `revenue.csv`.
    pub journal: Vec<JournalLine>,
    /// Distinct rating ids on the batch's invoice lines, per currency.
    pub rating_ids: BTreeMap<String, usize>,
}

/// One side of the batch's journal, in unscaled amounts (scale 6): a receivable is debited
/// and revenue or tax credited, the other way round for a negative amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalLine {
    /// GL account.
    pub gl_account: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Debit, unscaled.
    pub debit: i128,
    /// Credit, unscaled.
    pub credit: i128,
}

/// `manifest.json`: what the batch is, what it covers, its files and control totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Whose books.
    pub entity: Entity,
    /// `YYYY-MM`.
    pub period: String,
    /// 1 for the period's batch, then one more per adjusting batch.
    pub sequence: u32,
    /// Period or adjusting.
    pub kind: BatchKind,
    /// The invoice ids on this batch, sorted.
    pub invoices: Vec<String>,
    /// Each data file with its rows and SHA-256.
    pub files: Vec<FileEntry>,
    /// Totals per currency, which finance ties out against the ERP.
    pub control_totals: Vec<ControlTotal>,
}

/// A data file named by the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name.
    pub name: String,
    /// Data rows, the header aside.
    pub rows: usize,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
}

/// Control totals of one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlTotal {
    /// ISO 4217 code.
    pub currency: String,
    /// Invoices in this currency.
    pub invoices: usize,
    /// Sum of the invoices' totals.
    pub invoiced: String,
    /// Sum of revenue credited (the invoices' subtotals).
    pub revenue: String,
    /// Sum of tax credited.
    pub tax: String,
    /// Sum of receivables debited; equals `invoiced`.
    pub receivables: String,
}

const INVOICES: &str = "invoices.csv";
const REVENUE: &str = "revenue.csv";
const RECEIVABLES: &str = "receivables.csv";
/// The manifest's file name; written last, so a batch without one is unfinished.
pub const MANIFEST: &str = "manifest.json";

#[derive(Default)]
struct Sums {
    invoices: usize,
    invoiced: i128,
    revenue: i128,
    tax: i128,
    receivables: i128,
}

/// Builds `entity`'s batch number `sequence` of `period` from `invoices` (the ones it covers),
/// posting each line to the revenue and receivable accounts `mappings` give on the invoice's
/// issue date. An invoice whose lines do not add up to it, or a line no mapping covers, stops
/// the build: a batch is never written with a hole.
pub fn build(
    entity: &Entity,
    period: Period,
    sequence: u32,
    invoices: &[&Invoice],
    mappings: &[GlMapping],
) -> Result<Batch, MonthEndError> {
    let mut invoices = invoices.to_vec();
    invoices.sort_by(|a, b| {
        (&a.invoice_number, &a.invoice_id).cmp(&(&b.invoice_number, &b.invoice_id))
    });
    let mut invoice_rows = String::from(
        "invoice_number,invoice_id,customer_id,subscription_id,issue_date,due_date,period_start,period_end,currency,subtotal,tax,total\n",
    );
    // (account, kind, currency) → amount; (customer, account, currency) → amount.
    let mut revenue: BTreeMap<(String, &'static str, String), i128> = BTreeMap::new();
    let mut receivables: BTreeMap<(String, String, String), i128> = BTreeMap::new();
    let mut sums: BTreeMap<String, Sums> = BTreeMap::new();
    for invoice in &invoices {
        check_sums(invoice)?;
        let date = |day: Option<i32>| day.map(format_date).unwrap_or_default();
        let _ = writeln!(
            invoice_rows,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            field(&invoice.invoice_number),
            field(&invoice.invoice_id),
            field(&invoice.customer_id),
            field(invoice.subscription_id.as_deref().unwrap_or("")),
            format_date(invoice.issue_date),
            format_date(invoice.due_date),
            date(invoice.period_start),
            date(invoice.period_end),
            field(&invoice.currency),
            invoice.subtotal_amount,
            invoice.tax_amount,
            invoice.total_amount,
        );
        for line in &invoice.lines {
            let mapping = GlMapping::select_line(
                mappings,
                &entity.legal_entity_id,
                line.product_id.as_deref(),
                line.charge_id.as_deref(),
                invoice.issue_date,
            )
            .ok_or_else(|| MonthEndError::Unmapped {
                invoice: invoice.invoice_id.clone(),
                line: line.line_number,
                legal_entity: entity.legal_entity_id.clone(),
                product: line.product_id.clone().unwrap_or_default(),
                charge: line.charge_id.clone().unwrap_or_default(),
                day: invoice.issue_date,
            })?;
            let currency = invoice.currency.clone();
            *revenue
                .entry((mapping.revenue_account.clone(), "revenue", currency.clone()))
                .or_default() += line.amount.unscaled();
            if line.tax_amount.unscaled() != 0 {
                *revenue
                    .entry((mapping.tax_account.clone(), "tax", currency.clone()))
                    .or_default() += line.tax_amount.unscaled();
            }
            *receivables
                .entry((
                    invoice.customer_id.clone(),
                    mapping.receivable_account.clone(),
                    currency,
                ))
                .or_default() += line.amount.unscaled() + line.tax_amount.unscaled();
        }
        let total = sums.entry(invoice.currency.clone()).or_default();
        total.invoices += 1;
        total.invoiced += invoice.total_amount.unscaled();
        total.revenue += invoice.subtotal_amount.unscaled();
        total.tax += invoice.tax_amount.unscaled();
        total.receivables += invoice
            .lines
            .iter()
            .map(|l| l.amount.unscaled() + l.tax_amount.unscaled())
            .sum::<i128>();
    }
    let mut revenue_rows = String::from("gl_account,kind,currency,amount\n");
    for ((account, kind, currency), amount) in &revenue {
        let _ = writeln!(
            revenue_rows,
            "{},{kind},{},{}",
            field(account),
            field(currency),
            amount_text(*amount)?
        );
    }
    let mut receivable_rows = String::from("customer_id,gl_account,currency,amount\n");
    for ((customer, account, currency), amount) in &receivables {
        let _ = writeln!(
            receivable_rows,
            "{},{},{},{}",
            field(customer),
            field(account),
            field(currency),
            amount_text(*amount)?
        );
    }
    let data = [
        (INVOICES, invoice_rows, invoices.len()),
        (REVENUE, revenue_rows, revenue.len()),
        (RECEIVABLES, receivable_rows, receivables.len()),
    ];
    let control_totals = sums
        .into_iter()
        .map(|(currency, s)| {
            Ok(ControlTotal {
                currency,
                invoices: s.invoices,
                invoiced: amount_text(s.invoiced)?,
                revenue: amount_text(s.revenue)?,
                tax: amount_text(s.tax)?,
                receivables: amount_text(s.receivables)?,
            })
        })
        .collect::<Result<Vec<_>, MonthEndError>>()?;
    let side = |account: &str, currency: &str, amount: i128, debit: bool| {
        // A negative amount goes on the other side, so both sides stay positive.
        let debit = debit == (amount >= 0);
        JournalLine {
            gl_account: account.to_owned(),
            currency: currency.to_owned(),
            debit: if debit { amount.abs() } else { 0 },
            credit: if debit { 0 } else { amount.abs() },
        }
    };
    // The journal is the general ledger's: a receivable account's total, whatever the number
    // of customers, so its record stays far below the broker's message size limit.
    let mut receivable_accounts: BTreeMap<(&str, &str), i128> = BTreeMap::new();
    for ((_, account, currency), amount) in &receivables {
        *receivable_accounts.entry((account, currency)).or_default() += amount;
    }
    let journal = receivable_accounts
        .iter()
        .map(|((account, currency), amount)| side(account, currency, *amount, true))
        .chain(
            revenue
                .iter()
                .map(|((account, _, currency), amount)| side(account, currency, *amount, false)),
        )
        .collect();
    let mut rated: BTreeMap<String, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for invoice in &invoices {
        let ids = rated.entry(invoice.currency.clone()).or_default();
        ids.extend(
            invoice
                .lines
                .iter()
                .flat_map(|l| l.rating_ids.iter().map(String::as_str)),
        );
    }
    let rating_ids = rated
        .into_iter()
        .map(|(currency, ids)| (currency, ids.len()))
        .collect();
    let mut ids: Vec<String> = invoices.iter().map(|i| i.invoice_id.clone()).collect();
    ids.sort();
    let manifest = Manifest {
        entity: entity.clone(),
        period: period.to_string(),
        sequence,
        kind: if sequence == 1 {
            BatchKind::Period
        } else {
            BatchKind::Adjusting
        },
        invoices: ids,
        files: data
            .iter()
            .map(|(name, text, rows)| FileEntry {
                name: (*name).to_owned(),
                rows: *rows,
                sha256: hex(&Sha256::digest(text.as_bytes())),
            })
            .collect(),
        control_totals,
    };
    let mut manifest_bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| MonthEndError::Input {
            what: "manifest".to_owned(),
            message: e.to_string(),
        })?;
    manifest_bytes.push(b'\n');
    let mut files: Vec<BatchFile> = data
        .into_iter()
        .map(|(name, text, _)| BatchFile {
            name,
            bytes: text.into_bytes(),
        })
        .collect();
    files.push(BatchFile {
        name: MANIFEST,
        bytes: manifest_bytes,
    });
    Ok(Batch {
        manifest,
        files,
        journal,
        rating_ids,
    })
}

/// An invoice's lines must add up to its subtotal, tax to its tax, and both to its total.
fn check_sums(invoice: &Invoice) -> Result<(), MonthEndError> {
    let lines: i128 = invoice.lines.iter().map(|l| l.amount.unscaled()).sum();
    let tax: i128 = invoice.lines.iter().map(|l| l.tax_amount.unscaled()).sum();
    let (subtotal, invoice_tax, total) = (
        invoice.subtotal_amount.unscaled(),
        invoice.tax_amount.unscaled(),
        invoice.total_amount.unscaled(),
    );
    if lines != subtotal || tax != invoice_tax || subtotal + invoice_tax != total {
        return Err(MonthEndError::Unbalanced {
            what: format!("invoice {}", invoice.invoice_id),
            message: format!(
                "lines {} and line tax {} against subtotal {}, tax {}, total {}",
                amount_text(lines)?,
                amount_text(tax)?,
                invoice.subtotal_amount,
                invoice.tax_amount,
                invoice.total_amount
            ),
        });
    }
    Ok(())
}

fn amount_text(unscaled: i128) -> Result<String, MonthEndError> {
    Amount::from_unscaled(unscaled)
        .map(|a| a.to_string())
        .map_err(|e| MonthEndError::Input {
            what: "a control total".to_owned(),
            message: e.to_string(),
        })
}

/// A CSV field, quoted when it holds a separator, a quote or a line break.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}
