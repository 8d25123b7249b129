//! The batch as bytes: the same invoices give the same files whatever their order, control
//! totals and GL rows are written out here from the invoices by hand, an invoice or line that
//! cannot be posted stops the build, and the outbox takes a batch whole or not at all.

use std::path::PathBuf;

use backbone_calendar::days_from_civil;
use backbone_month_end::batch::{build, Batch, BatchKind, Entity, Period};
use backbone_month_end::journal::{journal_batches, Window};
use backbone_month_end::{outbox, MonthEndError};
use backbone_schemas::types::{
    Amount, BatchType, EventMetadata, GlMapping, Invoice, InvoiceLine, InvoiceStatus, TraceContext,
};

fn metadata() -> EventMetadata {
    EventMetadata {
        tenant_id: "acme".into(),
        event_id: "e".into(),
        source: "period-close".into(),
        r#type: "backbone.sales.invoice".into(),
        occurred_at: 0,
        produced_at: 0,
        trace: TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: None,
        },
        schema_version: None,
    }
}

fn amount(text: &str) -> Amount {
    text.parse().expect("amount")
}

fn line(number: i32, charge: &str, value: &str) -> InvoiceLine {
    InvoiceLine {
        line_number: number,
        description: format!("{charge}, usage"),
        product_id: None,
        charge_id: Some(charge.into()),
        quantity: "1".parse().expect("quantity"),
        unit_price: None,
        amount: amount(value),
        tax_amount: Amount::ZERO,
        period_start: None,
        period_end: None,
        rating_ids: vec![format!("r-{number}")],
    }
}

fn invoice(id: &str, number: &str, customer: &str, lines: Vec<InvoiceLine>) -> Invoice {
    let total: i128 = lines.iter().map(|l| l.amount.unscaled()).sum();
    Invoice {
        metadata: metadata(),
        invoice_id: id.into(),
        invoice_number: number.into(),
        customer_id: customer.into(),
        legal_entity_id: "le-1".into(),
        status: InvoiceStatus::Issued,
        currency: "EUR".into(),
        issue_date: days_from_civil(2026, 11, 3),
        due_date: days_from_civil(2026, 12, 3),
        lines,
        subtotal_amount: Amount::from_unscaled(total).expect("subtotal"),
        tax_amount: Amount::ZERO,
        total_amount: Amount::from_unscaled(total).expect("total"),
        subscription_id: Some(format!("sub-{customer}")),
        order_id: None,
        period_start: Some(days_from_civil(2026, 10, 1)),
        period_end: Some(days_from_civil(2026, 11, 1)),
        billing_email: None,
        billing_address: None,
    }
}

fn mapping(id: &str, charge: Option<&str>, revenue: &str) -> GlMapping {
    GlMapping {
        metadata: metadata(),
        mapping_id: id.into(),
        legal_entity_id: "le-1".into(),
        product_id: None,
        charge_id: charge.map(str::to_owned),
        revenue_account: revenue.into(),
        receivable_account: "1200".into(),
        deferred_revenue_account: "2500".into(),
        tax_account: "3800".into(),
        effective_from: 0,
        effective_to: None,
    }
}

fn entity() -> Entity {
    Entity {
        tenant: "acme".into(),
        legal_entity_id: "le-1".into(),
    }
}

fn file<'b>(batch: &'b Batch, name: &str) -> &'b str {
    let file = batch.files.iter().find(|f| f.name == name).expect(name);
    std::str::from_utf8(&file.bytes).expect("text")
}

fn october() -> Period {
    Period::parse("2026-10").expect("period")
}

/// Batch `sequence` of October from `invoices`, every line on the entity's default accounts.
fn october_batch(sequence: u32, invoices: &[&Invoice]) -> Result<Batch, MonthEndError> {
    build(
        &entity(),
        october(),
        sequence,
        invoices,
        &[mapping("m", None, "4000")],
    )
}

#[test]
fn the_same_invoices_give_the_same_bytes_and_totals_written_out_by_hand() {
    let a = invoice(
        "inv-a",
        "le-1-000002",
        "c-2",
        vec![line(1, "calls", "5"), line(2, "storage", "2.5")],
    );
    let b = invoice(
        "inv-b",
        "le-1-000001",
        "c-1",
        vec![line(1, "calls", "1.25")],
    );
    let mappings = [
        mapping("m-default", None, "4000"),
        mapping("m-storage", Some("storage"), "4100"),
    ];
    let once = build(&entity(), october(), 1, &[&a, &b], &mappings).expect("batch");
    let again = build(&entity(), october(), 1, &[&b, &a], &mappings).expect("batch");
    assert_eq!(once, again, "order of the invoices read does not matter");
    assert_eq!(once.manifest.kind, BatchKind::Period);
    assert_eq!(
        file(&once, "invoices.csv"),
        "invoice_number,invoice_id,customer_id,subscription_id,issue_date,due_date,period_start,period_end,currency,subtotal,tax,total\n\
         le-1-000001,inv-b,c-1,sub-c-1,2026-11-03,2026-12-03,2026-10-01,2026-11-01,EUR,1.250000,0.000000,1.250000\n\
         le-1-000002,inv-a,c-2,sub-c-2,2026-11-03,2026-12-03,2026-10-01,2026-11-01,EUR,7.500000,0.000000,7.500000\n"
    );
    assert_eq!(
        file(&once, "revenue.csv"),
        "gl_account,kind,currency,amount\n4000,revenue,EUR,6.250000\n4100,revenue,EUR,2.500000\n"
    );
    assert_eq!(
        file(&once, "receivables.csv"),
        "customer_id,gl_account,currency,amount\nc-1,1200,EUR,1.250000\nc-2,1200,EUR,7.500000\n"
    );
    let totals = &once.manifest.control_totals;
    assert_eq!(totals.len(), 1);
    assert_eq!(
        (
            totals[0].invoices,
            totals[0].invoiced.as_str(),
            totals[0].revenue.as_str(),
            totals[0].receivables.as_str()
        ),
        (2, "8.750000", "8.750000", "8.750000")
    );
    assert_eq!(once.manifest.invoices, ["inv-a", "inv-b"]);
    let manifest = file(&once, "manifest.json");
    for entry in &once.manifest.files {
        assert!(manifest.contains(&entry.sha256), "{manifest}");
        assert_eq!(entry.sha256.len(), 64);
    }
}

#[test]
fn a_recurring_fee_is_credited_to_the_revenue_account_of_its_product() {
    let mut fee = line(2, "calls", "30");
    fee.charge_id = None;
    fee.product_id = Some("platform".into());
    fee.rating_ids.clear();
    let a = invoice(
        "inv-a",
        "le-1-000001",
        "c-1",
        vec![line(1, "calls", "1"), fee],
    );
    let mut platform = mapping("p", None, "4500");
    platform.product_id = Some("platform".into());
    let mappings = [mapping("d", None, "4000"), platform];
    let batch = build(&entity(), october(), 1, &[&a], &mappings).expect("batch");
    assert_eq!(
        file(&batch, "revenue.csv"),
        "gl_account,kind,currency,amount\n4000,revenue,EUR,1.000000\n4500,revenue,EUR,30.000000\n"
    );
    let only_calls = [mapping("c", Some("calls"), "4000")];
    let err = build(&entity(), october(), 1, &[&a], &only_calls).expect_err("fee unmapped");
    assert!(
        matches!(&err, MonthEndError::Unmapped { line: 2, product, charge, .. } if product == "platform" && charge.is_empty()),
        "{err}"
    );
}

#[test]
fn a_field_with_a_comma_or_a_quote_is_quoted() {
    let mut a = invoice("inv-a", "le-1-000001", "c-1", vec![line(1, "calls", "1")]);
    a.customer_id = "Müller, \"GmbH\"".into();
    let batch = october_batch(2, &[&a]).expect("batch");
    assert_eq!(batch.manifest.kind, BatchKind::Adjusting);
    assert!(
        file(&batch, "invoices.csv").contains(",\"Müller, \"\"GmbH\"\"\","),
        "{}",
        file(&batch, "invoices.csv")
    );
}

#[test]
fn an_unmapped_line_or_an_invoice_that_does_not_add_up_stops_the_batch() {
    let a = invoice("inv-a", "le-1-000001", "c-1", vec![line(1, "calls", "1")]);
    let only_storage = [mapping("m", Some("storage"), "4100")];
    let err = build(&entity(), october(), 1, &[&a], &only_storage).expect_err("unmapped");
    assert!(
        matches!(&err, MonthEndError::Unmapped { invoice, charge, .. } if invoice == "inv-a" && charge == "calls"),
        "{err}"
    );
    let mut wrong = invoice("inv-w", "le-1-000002", "c-1", vec![line(1, "calls", "1")]);
    wrong.total_amount = amount("2");
    let err = october_batch(1, &[&wrong]).expect_err("unbalanced");
    assert!(
        matches!(&err, MonthEndError::Unbalanced { what, .. } if what == "invoice inv-w"),
        "{err}"
    );
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("month-end-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_outbox_takes_a_batch_whole_and_clears_what_a_killed_run_left() {
    let dir = scratch("outbox");
    let a = invoice("inv-a", "le-1-000001", "c-1", vec![line(1, "calls", "1")]);
    let batch = october_batch(1, &[&a]).expect("batch");
    // What a run killed mid-write leaves: a hidden directory with part of a batch.
    std::fs::create_dir_all(dir.join(".002.partial")).expect("partial");
    std::fs::write(dir.join(".002.partial/invoices.csv"), "cut short").expect("partial file");
    let written = outbox::write(&dir, &batch).expect("written");
    assert_eq!(written, dir.join("001"));
    let found = outbox::written(&dir).expect("read back");
    assert_eq!(found.len(), 1, "the partial batch is not a batch");
    assert!(!dir.join(".002.partial").exists(), "and it is cleared");
    assert_eq!(found[0].manifest, batch.manifest);
    assert_eq!(outbox::differs(&batch, &found[0]), None);
    std::fs::write(dir.join("001/revenue.csv"), "edited\n").expect("edit");
    assert_eq!(
        outbox::differs(&batch, &found[0]),
        Some(dir.join("001/revenue.csv"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_period_is_a_month_and_anything_else_is_refused_by_name() {
    let period = october();
    assert_eq!(period.to_string(), "2026-10");
    assert_eq!(
        (period.start(), period.end()),
        (days_from_civil(2026, 10, 1), days_from_civil(2026, 11, 1))
    );
    assert_eq!(
        Period::parse("2026-12")
            .expect("december")
            .next()
            .to_string(),
        "2027-01"
    );
    assert_eq!(
        Period::parse("2026-01")
            .expect("january")
            .previous()
            .to_string(),
        "2025-12"
    );
    for bad in ["2026-13", "2026-00", "26-10", "2026/10", "october"] {
        let err = Period::parse(bad).expect_err(bad);
        assert!(err.to_string().contains(bad), "{err}");
    }
}

/// A journal batch's currency, type, lines (account, debit, credit) and control totals.
type JournalShape = (
    String,
    BatchType,
    Vec<(String, String, String)>,
    String,
    String,
);

fn window() -> Window {
    Window {
        period_start: days_from_civil(2026, 10, 1),
        period_end: days_from_civil(2026, 11, 1),
        start: 1_790_000_000_000_000,
        end: 1_792_000_000_000_000,
    }
}

#[test]
fn the_journal_of_a_batch_balances_per_currency_and_a_credit_note_changes_sides() {
    let a = invoice(
        "inv-a",
        "le-1-000001",
        "c-1",
        vec![line(1, "calls", "5"), line(2, "storage", "2.5")],
    );
    // Another customer's: one receivable line per account, the customers' sum.
    let b = invoice("inv-b", "le-1-000003", "c-3", vec![line(1, "calls", "1")]);
    let mut credit = invoice(
        "inv-c",
        "le-1-000002",
        "c-2",
        vec![line(1, "calls", "-1.5")],
    );
    credit.currency = "USD".into();
    let mappings = [
        mapping("m-default", None, "4000"),
        mapping("m-storage", Some("storage"), "4100"),
    ];
    let batch = build(&entity(), october(), 1, &[&a, &b, &credit], &mappings).expect("batch");
    let journals = journal_batches(&batch, &[], window()).expect("journal");
    let shape: Vec<JournalShape> = journals
        .iter()
        .map(|j| {
            (
                j.control_totals[0].currency.clone(),
                j.batch_type,
                j.lines
                    .iter()
                    .map(|l| {
                        (
                            l.gl_account.clone(),
                            l.debit.to_string(),
                            l.credit.to_string(),
                        )
                    })
                    .collect(),
                j.control_totals[0].total_debits.to_string(),
                j.control_totals[0].total_credits.to_string(),
            )
        })
        .collect();
    let text = |s: &str| s.to_owned();
    assert_eq!(
        shape,
        [
            (
                text("EUR"),
                BatchType::Regular,
                vec![
                    (text("1200"), text("8.500000"), text("0.000000")),
                    (text("4000"), text("0.000000"), text("6.000000")),
                    (text("4100"), text("0.000000"), text("2.500000")),
                ],
                text("8.500000"),
                text("8.500000"),
            ),
            (
                text("USD"),
                BatchType::Regular,
                vec![
                    (text("1200"), text("0.000000"), text("1.500000")),
                    (text("4000"), text("1.500000"), text("0.000000")),
                ],
                text("1.500000"),
                text("1.500000"),
            ),
        ]
    );
    assert_eq!(journals[0].source_rating_count, 2);
    assert_eq!(journals[0].posting_date, days_from_civil(2026, 10, 31));
    // The same batch gives the same ids; an adjusting batch names the batch it adjusts.
    let again = journal_batches(&batch, &[], window()).expect("journal");
    assert_eq!(journals, again);
    let later = invoice("inv-l", "le-1-000004", "c-1", vec![line(1, "calls", "1")]);
    let adjusting = build(&entity(), october(), 2, &[&later], &mappings).expect("batch");
    let adjusted = journal_batches(&adjusting, &[&batch.manifest], window()).expect("journal");
    assert_eq!(adjusted[0].batch_type, BatchType::Adjustment);
    assert_eq!(
        adjusted[0].adjusts_batch_id.as_deref(),
        Some(journals[0].batch_id.as_str())
    );
    assert_ne!(adjusted[0].batch_id, journals[0].batch_id);
    let mut lopsided = batch.clone();
    lopsided.journal[0].debit += 1;
    let err = journal_batches(&lopsided, &[], window()).expect_err("unbalanced");
    assert!(
        err.to_string()
            .contains("EUR journal of acme/le-1 2026-10 does not add up"),
        "{err}"
    );
    assert!(build(&entity(), october(), 1, &[], &mappings)
        .and_then(|empty| journal_batches(&empty, &[], window()))
        .expect("empty")
        .is_empty());
}
