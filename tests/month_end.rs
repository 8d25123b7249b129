//! `month-end` SIGKILLed while it writes a month's batch: the outbox then holds no batch a
//! reader could take, only the hidden partial directory, and the next run writes the batch
//! whole, byte for byte as a run never killed writes it. The month has thousands of invoices,
//! so the write lasts long enough for the test to see the partial directory and kill the
//! process inside it.

#[path = "support/backbone.rs"]
mod backbone;
#[path = "support/berlin.rs"]
mod berlin;
#[path = "support/sinks.rs"]
mod sinks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backbone::{workspace_binary, Deployment};
use backbone_calendar::days_from_civil;
use backbone_schemas::types::{Amount, Invoice, InvoiceLine, InvoiceStatus};
use backbone_schemas::WireCodec;
use backbone_testkit::{create_topic, shared_settings, ChildProcess};
use berlin::TENANT;
use sinks::{metadata, publish, registry_url};

/// Invoices of October 2026: enough that writing them outlasts the test's look.
const INVOICES: usize = 20_000;

/// Kills tried before the test gives up on catching the write.
const ATTEMPTS: usize = 5;

/// October's issued invoice number `n`, one line of `n`.25 EUR.
fn invoice(n: usize) -> Invoice {
    let amount: Amount = format!("{n}.25").parse().expect("amount");
    let start = days_from_civil(2026, 10, 1);
    let end = days_from_civil(2026, 11, 1);
    let id = format!("inv-s-{n}-2026-10-01");
    Invoice {
        metadata: metadata(TENANT, &id, "backbone.sales.invoice"),
        invoice_id: id,
        invoice_number: format!("le-berlin-{n:06}"),
        customer_id: format!("c-{n}"),
        legal_entity_id: "le-berlin".to_owned(),
        status: InvoiceStatus::Issued,
        currency: "EUR".to_owned(),
        issue_date: end,
        due_date: end + 30,
        lines: vec![InvoiceLine {
            line_number: 1,
            description: "API calls".to_owned(),
            product_id: None,
            charge_id: Some("calls".to_owned()),
            quantity: "1".parse().expect("quantity"),
            unit_price: None,
            amount,
            tax_amount: Amount::ZERO,
            period_start: Some(start),
            period_end: Some(end),
            rating_ids: vec![format!("rt-{n}")],
        }],
        subtotal_amount: amount,
        tax_amount: Amount::ZERO,
        total_amount: amount,
        subscription_id: Some(format!("s-{n}")),
        order_id: None,
        period_start: Some(start),
        period_end: Some(end),
        billing_email: None,
        billing_address: None,
    }
}

/// Every file under `dir`, by path relative to it, hidden ones included.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(next) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("a file of the outbox");
                let relative = path
                    .strip_prefix(dir)
                    .expect("under the outbox")
                    .to_path_buf();
                found.insert(relative, bytes);
            }
        }
    }
    found
}

#[tokio::test]
async fn month_end_killed_mid_write_leaves_no_batch_and_the_next_run_writes_it_whole() {
    let codec = WireCodec::new(registry_url());
    let deployment = Deployment::create(
        "month-end-kill",
        "http://127.0.0.1:9",
        "postgres://unused",
        &registry_url(),
    )
    .await;
    berlin::master_data(&deployment, &codec).await;
    let journals = deployment.topics.name("erp.journal-batches").to_owned();
    create_topic(&shared_settings(), &journals, 3)
        .await
        .expect("journal batches topic");
    let invoices: Vec<(String, Invoice, Option<i64>)> = (1..=INVOICES)
        .map(|n| (format!("{TENANT}:le-berlin"), invoice(n), None))
        .collect();
    publish(&codec, deployment.topics.name("sales.invoices"), &invoices).await;

    let reference = deployment.dir.join("never-killed");
    let (code, said) = deployment.run_month_end("2026-10", "0s", &reference);
    assert_eq!(code, Some(0), "{said}");
    let whole = files(&reference);
    let batch = Path::new("acme/le-berlin/2026-10/001");
    assert!(
        whole.keys().any(|path| path.starts_with(batch)),
        "October's batch: {:?}",
        whole.keys().collect::<Vec<_>>()
    );

    for attempt in 0..ATTEMPTS {
        let outbox = deployment.dir.join(format!("killed-{attempt}"));
        let month = outbox.join("acme/le-berlin/2026-10");
        let env = deployment.month_end_env("0s", &outbox);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut child = ChildProcess::spawn(
            &workspace_binary("month-end"),
            &["--period", "2026-10"],
            &env,
            Some(&deployment.dir.join(format!("month-end-{attempt}.log"))),
        )
        .expect("month-end starts");
        // Looked for as fast as the file system answers: the write lasts milliseconds.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !month.join(".001.partial").exists() && child.is_running() {
            assert!(Instant::now() < deadline, "month-end never began the batch");
            std::thread::yield_now();
        }
        child.crash().expect("SIGKILL");
        if month.join("001").exists() {
            // The rename came first: this kill missed the write.
            continue;
        }
        assert!(
            files(&outbox).keys().all(|path| !path.starts_with(batch)),
            "no batch in place after the kill"
        );
        eprintln!(
            "attempt {attempt}: killed with {} files of the batch written",
            files(&outbox).len()
        );
        let (code, said) = deployment.run_month_end("2026-10", "0s", &outbox);
        assert_eq!(code, Some(0), "{said}");
        assert_eq!(
            files(&outbox),
            whole,
            "the batch whole, as never killed, and nothing else"
        );
        return;
    }
    panic!("no kill in {ATTEMPTS} attempts came while the batch was being written");
}
