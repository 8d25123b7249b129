//! Period close on the test broker: usage through the validator, the enricher, the rater and
//! fanout, `period-close` invoicing each billing period of a subscription whose legal entity
//! keeps Berlin time, and `invoice-sink` delivering the invoices to the sandbox's billing and
//! ERP. The invoices' lines and totals are written out here from the usage and the price, not
//! computed by anything of the backbone; deliveries are counted at the sandbox per invoice.

#[path = "support/backbone.rs"]
mod backbone;
#[path = "support/berlin.rs"]
mod berlin;
#[path = "support/sinks.rs"]
mod sinks;

use std::collections::BTreeMap;
use std::time::Duration;

use backbone::{workspace_binary, Deployment};
use backbone_calendar::{days_from_civil, format_date};
use backbone_drift::books::Check;
use backbone_sandbox::{AppliedApi, SandboxConfig};
use backbone_schemas::types::{
    Amount, BatchType, BillingCharge, Invoice, InvoiceStatus, JournalBatch,
};
use backbone_schemas::WireCodec;
use backbone_testkit::{
    committed_total, consume_all, create_topic, end_offsets_total, produce, shared_settings,
    ChildProcess, TestRecord,
};
use berlin::{grace_closing_in, master_data, micros, publish_usage};
use sinks::{eventually, read_all, registry_url, Sandbox};

const DEADLINE: Duration = Duration::from_secs(180);
const CLOSE: &str = "period-close";
const DELIVERY: &str = "invoice-sink";

/// The issued invoices, by period start.
async fn invoices(codec: &WireCodec, deployment: &Deployment) -> BTreeMap<String, Vec<Invoice>> {
    let mut by_period: BTreeMap<String, Vec<Invoice>> = BTreeMap::new();
    for invoice in read_all::<Invoice>(codec, deployment.topics.name("sales.invoices")).await {
        let start = invoice.period_start.map(format_date).unwrap_or_default();
        by_period.entry(start).or_default().push(invoice);
    }
    by_period
}

/// An invoice's lines as (description, amount, rating ids named), and its number and total.
fn summary(invoice: &Invoice) -> (String, Vec<(String, Amount, usize)>, Amount) {
    let lines = invoice
        .lines
        .iter()
        .map(|l| (l.description.clone(), l.amount, l.rating_ids.len()))
        .collect();
    (invoice.invoice_number.clone(), lines, invoice.total_amount)
}

fn amount(text: &str) -> Amount {
    text.parse().expect("amount")
}

/// Runs `month-end --period <period>` on the deployment's topics with `grace`: its exit code
/// and what it printed.
fn month_end(deployment: &Deployment, period: &str, grace: &str) -> (Option<i32>, String) {
    deployment.run_month_end(period, grace, &deployment.dir.join("outbox"))
}

/// Every file of a batch directory, by name.
fn batch_files(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("file"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn periods_close_at_midnight_in_berlin_and_late_usage_corrects_the_next_invoice() {
    let codec = WireCodec::new(registry_url().as_str());
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let mut deployment = Deployment::create(
        "period-close",
        &sandbox.url,
        "postgres://unused",
        &registry_url(),
    )
    .await;
    // October's events are over a month old: the rater takes them.
    deployment
        .settings
        .push(("usage-rater", "processor.late_window".into(), "120d".into()));
    // Only the billing route: the invoices are made of its charges.
    for route in ["analytics", "crm", "erp"] {
        deployment
            .settings
            .push(("fanout", format!("processor.routes.{route}"), String::new()));
    }
    // October ends at midnight in Berlin, 23:00 UTC; it closes half a minute from now.
    let october_end = micros("2026-10-31T23:00:00Z");
    let october_grace = grace_closing_in(october_end, Duration::from_secs(30));
    deployment
        .settings
        .push((CLOSE, "processor.grace".into(), october_grace.clone()));
    master_data(&deployment, &codec).await;
    // Half an hour either side of midnight in Berlin (UTC+1 then): October, then November.
    publish_usage(
        &deployment,
        &codec,
        &[
            ("e-oct", "2026-10-31T22:30:00Z", "10"),
            ("e-nov", "2026-10-31T23:30:00Z", "4"),
        ],
    )
    .await;
    // A month-end run that takes October as closed before period-close has issued its invoice
    // (no grace, period-close not started yet) writes October's batch with no invoice; the
    // invoice becomes an adjusting batch below.
    let invoices_topic = deployment.topics.name("sales.invoices").to_owned();
    create_topic(&shared_settings(), &invoices_topic, 3)
        .await
        .expect("invoices topic");
    let journals = deployment.topics.name("erp.journal-batches").to_owned();
    create_topic(&shared_settings(), &journals, 3)
        .await
        .expect("journal batches topic");
    let early = deployment.dir.join("early-outbox");
    let (code, said) = deployment.run_month_end("2026-10", "0s", &early);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("2026-10 batch 001 (period): 0 invoices"),
        "{said}"
    );
    for stage in [
        "usage-validator",
        "enricher",
        "usage-rater",
        "fanout",
        CLOSE,
    ] {
        deployment.start(stage);
    }

    let october = eventually(DEADLINE, "October's invoice", || async {
        invoices(&codec, &deployment).await.remove("2026-10-01")
    })
    .await;
    assert_eq!(october.len(), 1, "{october:?}");
    let october = &october[0];
    assert_eq!(october.status, InvoiceStatus::Issued);
    assert_eq!(october.period_end, Some(days_from_civil(2026, 11, 1)));
    assert_eq!(
        summary(october),
        (
            "le-berlin-000001".to_owned(),
            vec![("calls".to_owned(), amount("5"), 1)],
            amount("5")
        ),
        "10 calls at 0.50 on October's invoice; the call half an hour later is November's"
    );

    // The month-end batch: refused while November is open, then October's for le-berlin,
    // written out here from October's invoice; a second run writes nothing and finds the
    // same bytes, and a run into an empty outbox writes them again.
    let (code, said) = month_end(&deployment, "2026-11", &october_grace);
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains("period 2026-11 of legal entity acme/le-berlin closes at"),
        "{said}"
    );
    let (code, said) = month_end(&deployment, "2026-10", &october_grace);
    assert_eq!(code, Some(0), "{said}");
    let batch_dir = deployment.dir.join("outbox/acme/le-berlin/2026-10/001");
    let first = batch_files(&batch_dir);
    let text = |name: &str| String::from_utf8(first[name].clone()).expect("text");
    assert_eq!(
        text("invoices.csv").lines().skip(1).collect::<Vec<_>>(),
        ["le-berlin-000001,inv-s-1-2026-10-01,c-1,s-1,2026-11-01,2026-12-01,2026-10-01,2026-11-01,EUR,5.000000,0.000000,5.000000"],
        "{said}"
    );
    assert_eq!(
        text("revenue.csv"),
        "gl_account,kind,currency,amount\n4000,revenue,EUR,5.000000\n"
    );
    assert_eq!(
        text("receivables.csv"),
        "customer_id,gl_account,currency,amount\nc-1,1200,EUR,5.000000\n"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&first["manifest.json"]).expect("manifest");
    assert_eq!(manifest["kind"], "period");
    assert_eq!(manifest["control_totals"][0]["invoiced"], "5.000000");
    assert_eq!(manifest["control_totals"][0]["receivables"], "5.000000");
    let (code, said) = month_end(&deployment, "2026-10", &october_grace);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("unchanged (1 batches"), "{said}");
    std::fs::remove_dir_all(deployment.dir.join("outbox")).expect("outbox emptied");
    let (code, said) = month_end(&deployment, "2026-10", &october_grace);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(
        batch_files(&batch_dir),
        first,
        "the batch again, byte for byte"
    );
    let (code, said) = deployment.run_month_end("2026-10", &october_grace, &early);
    assert_eq!(code, Some(0), "{said}");
    let adjusting = batch_files(&early.join("acme/le-berlin/2026-10/002"));
    assert_eq!(adjusting["invoices.csv"], first["invoices.csv"], "{said}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&adjusting["manifest.json"]).expect("manifest");
    assert_eq!(
        (manifest["kind"].as_str(), manifest["sequence"].as_u64()),
        (Some("adjusting"), Some(2))
    );

    // Each batch written was published as the ERP side's journal, balanced: October's batch
    // twice (written, and written again into the emptied outbox) under one id, the adjusting
    // batch once; the unchanged run and the batch without invoices published nothing.
    let published: Vec<JournalBatch> = read_all(&codec, &journals).await;
    let posted = |batch: &JournalBatch| {
        let mut lines: Vec<(String, String, String, Option<String>)> = batch
            .lines
            .iter()
            .map(|l| {
                (
                    l.gl_account.clone(),
                    l.debit.to_string(),
                    l.credit.to_string(),
                    l.customer_id.clone(),
                )
            })
            .collect();
        lines.sort();
        (batch.batch_type, lines, batch.adjusts_batch_id.is_some())
    };
    let expected_lines = vec![
        (
            "1200".to_owned(),
            "5.000000".to_owned(),
            "0.000000".to_owned(),
            None,
        ),
        (
            "4000".to_owned(),
            "0.000000".to_owned(),
            "5.000000".to_owned(),
            None,
        ),
    ];
    assert_eq!(
        published.iter().map(posted).collect::<Vec<_>>(),
        [
            (BatchType::Regular, expected_lines.clone(), false),
            (BatchType::Regular, expected_lines.clone(), false),
            (BatchType::Adjustment, expected_lines, false),
        ],
        "{published:?}"
    );
    assert_eq!(
        published[0], published[1],
        "the same batch, the same record"
    );
    assert_ne!(published[0].batch_id, published[2].batch_id);

    // Timer mode, on an outbox of its own: October's batch at once, November waited for, and
    // a SIGTERM between two ticks ends it with status 0.
    let timed = deployment.dir.join("timer-outbox");
    let log = deployment.dir.join("month-end-timer.log");
    let env = deployment.month_end_env(&october_grace, &timed);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut timer = ChildProcess::spawn(
        &workspace_binary("month-end"),
        &["--every", "1h"],
        &env,
        Some(&log),
    )
    .expect("month-end --every");
    let said = eventually(DEADLINE, "the timer's first tick", || async {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        said.contains("2026-11: waiting").then_some(said)
    })
    .await;
    assert!(
        said.contains("2026-10 batch 001 (period): 1 invoices"),
        "{said}"
    );
    assert_eq!(
        batch_files(&timed.join("acme/le-berlin/2026-10/001")),
        first,
        "the timer's batch is the same batch"
    );
    let status = timer.stop(DEADLINE).expect("stops on SIGTERM");
    assert!(status.success(), "{status:?}");

    // The invoices topic exists now: its sink starts.
    deployment.start(DELIVERY);

    // A call of 20 October arrives after October closed: it corrects November's invoice.
    publish_usage(
        &deployment,
        &codec,
        &[("e-late", "2026-10-20T12:00:00Z", "6")],
    )
    .await;
    let charges = deployment.topics.name("billing.charges").to_owned();
    let group = deployment.group(CLOSE);
    let booked = |count: i64| {
        let (charges, group) = (charges.clone(), group.clone());
        async move {
            let settings = shared_settings();
            let end = end_offsets_total(&settings, &charges).ok()?;
            (end == count && committed_total(&settings, &group, &charges) == end).then_some(())
        }
    };
    eventually(DEADLINE, "the three charges booked", || booked(3)).await;
    // The fanout delivers each charge again, as after a crash before its commit: October's
    // (its period closed) and November's and the late one (booked in November) are each
    // booked once.
    let again: Vec<TestRecord> = consume_all(&shared_settings(), &charges, DEADLINE)
        .await
        .expect("charges")
        .into_iter()
        .map(|r| TestRecord {
            key: r.key,
            value: r.value.expect("a charge"),
            partition: Some(r.partition),
            ..TestRecord::default()
        })
        .collect();
    produce(&shared_settings(), &charges, &again)
        .await
        .expect("charges again");
    eventually(DEADLINE, "the charges delivered again taken", || booked(6)).await;
    // Killed, and started again with a grace that closes November now.
    deployment.kill(CLOSE);
    let november_end = micros("2026-11-30T23:00:00Z");
    deployment.settings.push((
        CLOSE,
        "processor.grace".into(),
        grace_closing_in(november_end, Duration::from_secs(5)),
    ));
    deployment.start(CLOSE);
    let november = eventually(DEADLINE, "November's invoice", || async {
        invoices(&codec, &deployment).await.remove("2026-11-01")
    })
    .await;
    assert_eq!(november.len(), 1, "{november:?}");
    assert_eq!(
        summary(&november[0]),
        (
            "le-berlin-000002".to_owned(),
            vec![
                ("calls".to_owned(), amount("2"), 1),
                (
                    "calls: correction of an earlier period".to_owned(),
                    amount("3"),
                    1
                ),
            ],
            amount("5")
        ),
        "4 calls of November and the 6 late calls of October at 0.50"
    );

    // Every charge is on exactly one invoice, and no invoice was issued twice.
    let charged: BTreeMap<(String, i64), BillingCharge> = read_all(&codec, &charges)
        .await
        .into_iter()
        .map(|c: BillingCharge| ((c.rating_id.clone(), c.revision), c))
        .collect();
    assert_eq!(charged.len(), 3, "{charged:?}");
    let charged: Vec<BillingCharge> = charged.into_values().collect();
    let total: i128 = charged.iter().map(|c| c.amount.unscaled()).sum();
    let invoiced: i128 = [october, &november[0]]
        .iter()
        .map(|i| i.total_amount.unscaled())
        .sum();
    assert_eq!(total, invoiced);
    let on_invoices: Vec<String> = [october, &november[0]]
        .iter()
        .flat_map(|i| i.lines.iter().flat_map(|l| l.rating_ids.clone()))
        .collect();
    let mut rating_ids: Vec<String> = charged.iter().map(|c| c.rating_id.clone()).collect();
    rating_ids.sort();
    let mut on_invoices_sorted = on_invoices.clone();
    on_invoices_sorted.sort();
    assert_eq!(on_invoices_sorted, rating_ids);
    let all = invoices(&codec, &deployment).await;
    assert_eq!(
        all.values().map(Vec::len).sum::<usize>(),
        2,
        "one invoice per period, whatever the restart: {all:?}"
    );
    // The restarted process issued one, November's, and holds one open period: December's,
    // opened when November closed, as the subscription goes on.
    let url = format!("http://{}/metrics", deployment.metrics_address(CLOSE));
    let scraped = reqwest::get(&url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |series: &str| -> Option<f64> {
        scraped
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(
        value("backbone_invoices_issued_total{"),
        Some(1.0),
        "{scraped}"
    );
    assert_eq!(value("backbone_periods_open{"), Some(1.0), "{scraped}");

    // Billing and the ERP each got each invoice once, numbered: read once the sink has
    // settled every invoice.
    let issued = deployment.topics.name("sales.invoices").to_owned();
    let sink_group = deployment.group(DELIVERY);
    eventually(
        DEADLINE,
        "the invoice sink to settle both invoices",
        || async {
            let settings = shared_settings();
            let end = end_offsets_total(&settings, &issued).ok()?;
            (end == 2 && committed_total(&settings, &sink_group, &issued) == end).then_some(())
        },
    )
    .await;
    for api in [AppliedApi::Invoices, AppliedApi::ErpInvoices] {
        let delivered = sandbox.client.applied(api, None).await.expect("applied");
        let mut by_invoice: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for request in &delivered {
            by_invoice
                .entry(
                    request.body["invoice_id"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned(),
                )
                .or_default()
                .push(
                    request.body["invoice_number"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned(),
                );
        }
        assert_eq!(
            by_invoice,
            BTreeMap::from([
                (
                    "inv-s-1-2026-10-01".to_owned(),
                    vec!["le-berlin-000001".to_owned()]
                ),
                (
                    "inv-s-1-2026-11-01".to_owned(),
                    vec!["le-berlin-000002".to_owned()]
                ),
            ]),
            "{api:?}"
        );
    }

    // Drift finds each month's invoice lines equal to the rated lines they name (October's
    // call, and November's with the late call rated into November as an adjustment), and
    // the ERP holding each issued invoice once.
    let config = deployment.drift_config();
    let drift = |check: Check| {
        let config = &config;
        async move {
            backbone_drift::reconcile_once(config)
                .await
                .expect("drift")
                .into_iter()
                .filter(|l| l.key.check == check)
                .map(|l| (l.key.period, l.key.legal_entity, l.expected, l.observed))
                .collect::<Vec<_>>()
        }
    };
    let month = |period: &str, expected: i128, observed: i128| {
        (
            period.to_owned(),
            "le-berlin".to_owned(),
            expected,
            observed,
        )
    };
    let both_months = [
        month("2026-10", 5_000_000, 5_000_000),
        month("2026-11", 5_000_000, 5_000_000),
    ];
    assert_eq!(drift(Check::RatedVsInvoiced).await, both_months);
    assert_eq!(drift(Check::InvoicedVsErp).await, both_months);

    // October's invoice reaches the ERP a second time under a key of its own, as from a sink
    // that lost its ledger and keyed the delivery anew: the ERP holds it twice, and drift
    // says so.
    let erp = sandbox
        .client
        .applied(AppliedApi::ErpInvoices, None)
        .await
        .expect("applied");
    let october_body = erp
        .iter()
        .find(|r| r.body["invoice_id"] == "inv-s-1-2026-10-01")
        .map(|r| r.body.clone())
        .expect("October's invoice at the ERP");
    reqwest::Client::new()
        .post(format!("{}{}", sandbox.url, AppliedApi::ErpInvoices.path()))
        .bearer_auth("sandbox-token")
        .header("Idempotency-Key", "a-key-of-its-own")
        .json(&october_body)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("posted again");
    assert_eq!(
        drift(Check::InvoicedVsErp).await,
        [
            month("2026-10", 5_000_000, 10_000_000),
            month("2026-11", 5_000_000, 5_000_000),
        ]
    );
}
