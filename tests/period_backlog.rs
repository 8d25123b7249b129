//! A period that came due while `period-close` was away: its charges reached the broker before
//! the close, so they are invoiced in their own period when the processor comes back, however
//! much of a backlog it has to read first, not booked into the next period as corrections.

#[path = "support/backbone.rs"]
mod backbone;
#[path = "support/berlin.rs"]
mod berlin;
#[path = "support/sinks.rs"]
mod sinks;

use std::collections::BTreeSet;
use std::time::Duration;

use backbone::Deployment;
use backbone_calendar::{days_from_civil, format_date, now_micros};
use backbone_schemas::types::{Amount, BillingCharge, BillingChargeType, Invoice};
use backbone_schemas::WireCodec;
use berlin::{master_data, micros, TENANT};
use sinks::{eventually, metadata, publish, read_all, registry_url, Sandbox};

const DEADLINE: Duration = Duration::from_secs(180);
const CLOSE: &str = "period-close";
/// Enough charges that reading them takes several close checks.
const CHARGES: usize = 40_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_period_due_while_period_close_was_away_invoices_its_whole_backlog() {
    let codec = WireCodec::new(registry_url().as_str());
    let sandbox = Sandbox::start(backbone_sandbox::SandboxConfig::default()).await;
    let mut deployment = Deployment::create(
        "period-backlog",
        &sandbox.url,
        "postgres://unused",
        &registry_url(),
    )
    .await;
    master_data(&deployment, &codec).await;
    // October's charges reached the broker a minute ago; October closed half a minute ago,
    // while no period-close ran.
    let now = now_micros();
    let october_end = micros("2026-10-31T23:00:00Z");
    let grace_secs = (now - 30_000_000 - october_end) / 1_000_000;
    deployment
        .settings
        .push((CLOSE, "processor.grace".into(), format!("{grace_secs}s")));
    let written_ms = now / 1_000 - 60_000;
    let charges: Vec<(String, BillingCharge, Option<i64>)> = (0..CHARGES)
        .map(|n| {
            let id = format!("r-{n}");
            let charge = BillingCharge {
                metadata: metadata(TENANT, &id, "backbone.billing.charge"),
                rating_id: id,
                revision: 1,
                charge_type: BillingChargeType::Usage,
                customer_id: "c-1".into(),
                subscription_id: "s-1".into(),
                charge_id: "calls".into(),
                group_key: String::new(),
                description: "API calls".into(),
                period_start: days_from_civil(2026, 10, 1),
                period_end: days_from_civil(2026, 11, 1),
                quantity: "1".parse().expect("quantity"),
                amount: "0.5".parse().expect("amount"),
                currency: "EUR".into(),
                billing_account_ref: None,
            };
            (format!("{TENANT}:s-1"), charge, Some(written_ms))
        })
        .collect();
    publish(&codec, deployment.topics.name("billing.charges"), &charges).await;
    deployment.start(CLOSE);

    let october = format_date(days_from_civil(2026, 10, 1));
    let invoice: Invoice = eventually(DEADLINE, "October's invoice", || async {
        read_all::<Invoice>(&codec, deployment.topics.name("sales.invoices"))
            .await
            .into_iter()
            .find(|i| i.invoice_id == format!("inv-s-1-{october}"))
    })
    .await;
    let on_invoice: BTreeSet<&str> = invoice
        .lines
        .iter()
        .flat_map(|l| l.rating_ids.iter().map(String::as_str))
        .collect();
    let expected: BTreeSet<String> = (0..CHARGES).map(|n| format!("r-{n}")).collect();
    assert_eq!(
        on_invoice.len(),
        CHARGES,
        "every charge on October's invoice, each once"
    );
    assert!(expected.iter().all(|id| on_invoice.contains(id.as_str())));
    // 40,000 charges of 0.50.
    assert_eq!(
        invoice.total_amount,
        "20000".parse::<Amount>().expect("total")
    );
    assert_eq!(invoice.lines.len(), 1, "{:?}", invoice.lines);
    let url = format!("http://{}/metrics", deployment.metrics_address(CLOSE));
    let scraped = reqwest::get(&url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let corrections = scraped
        .lines()
        .find(|l| l.starts_with("backbone_period_corrections_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(corrections, Some(0.0), "{scraped}");
}
