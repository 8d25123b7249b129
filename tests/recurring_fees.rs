//! Recurring fees on the test broker: `period-close` bills a plan's fixed fees for every
//! billing period of a subscription, with or without usage, pro rata by the days of the period
//! it was billable in its legal entity's time zone (Berlin), and goes on to the next period
//! until the subscription ends. Every amount below is worked out here from the fees and the
//! days, not by anything of the backbone; invoices are counted per invoice id.

#[path = "support/backbone.rs"]
mod backbone;
#[path = "support/berlin.rs"]
mod berlin;
#[path = "support/sinks.rs"]
mod sinks;

use std::collections::BTreeMap;
use std::time::Duration;

use backbone::Deployment;
use backbone_calendar::{days_from_civil, format_date};
use backbone_schemas::types::{
    Amount, BillingCharge, BillingChargeType, BillingInterval, GlMapping, Invoice, RateCard,
    RecurringFee, Subscription, SubscriptionStatus,
};
use backbone_schemas::WireCodec;
use backbone_testkit::{committed_total, create_topic, end_offsets_total, shared_settings};
use berlin::{grace_closing_in, micros, TENANT};
use sinks::{eventually, metadata, publish, read_all, registry_url, Sandbox};

const DEADLINE: Duration = Duration::from_secs(180);
const CLOSE: &str = "period-close";

fn amount(text: &str) -> Amount {
    text.parse().expect("amount")
}

/// A monthly subscription of plan `p-fees` in Berlin, anchored on the 1st, whose current
/// period is October 2026.
fn subscription(id: &str, status: SubscriptionStatus, started_at: &str) -> Subscription {
    Subscription {
        metadata: metadata(TENANT, id, "backbone.master.subscription"),
        subscription_id: id.into(),
        customer_id: format!("c-{id}"),
        plan_id: "p-fees".into(),
        status,
        currency: "EUR".into(),
        legal_entity_id: "le-berlin".into(),
        billing_interval: BillingInterval::Monthly,
        billing_anchor_day: 1,
        current_period_start: days_from_civil(2026, 10, 1),
        current_period_end: days_from_civil(2026, 11, 1),
        started_at: micros(started_at),
        ends_at: None,
        trial_ends_at: None,
    }
}

/// Berlin's entity, customer, usage plan and default GL mapping (revenue 4000, `berlin.rs`),
/// then a GL mapping of the platform product (revenue 4500), a plan with a platform fee of 30.00
/// and a support fee of 10.00 a month, and five subscriptions of it.
async fn master_data(deployment: &Deployment, codec: &WireCodec) {
    berlin::master_data(deployment, codec).await;
    let t = &deployment.topics;
    let meta = |id: &str, kind: &str| metadata(TENANT, id, kind);
    let platform = GlMapping {
        metadata: meta("m-platform", "backbone.master.gl-mapping"),
        mapping_id: "m-platform".into(),
        legal_entity_id: "le-berlin".into(),
        product_id: Some("platform".into()),
        charge_id: None,
        revenue_account: "4500".into(),
        receivable_account: "1200".into(),
        deferred_revenue_account: "2500".into(),
        tax_account: "3800".into(),
        effective_from: 0,
        effective_to: None,
    };
    publish(
        codec,
        &t.gl_mappings,
        &[(format!("{TENANT}:m-platform"), platform, None)],
    )
    .await;
    let card = RateCard {
        metadata: meta("p-fees@1", "backbone.master.rate-card"),
        plan_id: "p-fees".into(),
        version: 1,
        name: "Plan with fees".into(),
        currency: "EUR".into(),
        effective_from: 0,
        effective_to: None,
        charges: Vec::new(),
        recurring_fees: vec![
            RecurringFee {
                fee_id: "platform".into(),
                name: "Platform fee".into(),
                product_id: Some("platform".into()),
                amount: amount("30"),
            },
            RecurringFee {
                fee_id: "support".into(),
                name: "Support".into(),
                product_id: None,
                amount: amount("10"),
            },
        ],
    };
    publish(
        codec,
        t.name("master.rate-cards"),
        &[(format!("{TENANT}:p-fees:1"), card, None)],
    )
    .await;
    // Berlin keeps summer time (UTC+2) until 25 October: its midnight is 22:00 UTC before.
    let full = subscription("s-full", SubscriptionStatus::Active, "2026-01-01T00:00:00Z");
    let new = subscription("s-new", SubscriptionStatus::Active, "2026-10-10T22:00:00Z");
    let mut trial = subscription(
        "s-trial",
        SubscriptionStatus::Active,
        "2026-09-01T00:00:00Z",
    );
    trial.trial_ends_at = Some(micros("2026-10-20T22:00:00Z"));
    let mut ending = subscription(
        "s-ending",
        SubscriptionStatus::Cancelled,
        "2026-01-01T00:00:00Z",
    );
    ending.ends_at = Some(micros("2026-10-19T22:00:00Z"));
    let paused = subscription(
        "s-paused",
        SubscriptionStatus::Paused,
        "2026-01-01T00:00:00Z",
    );
    let records: Vec<(String, Subscription, Option<i64>)> = [full, new, trial, ending, paused]
        .into_iter()
        .map(|s| (format!("{TENANT}:{}", s.subscription_id), s, None))
        .collect();
    publish(codec, t.name("master.subscriptions"), &records).await;
}

/// A usage charge of 5.00 in October for `s-full`, as fanout writes it.
async fn october_usage(deployment: &Deployment, codec: &WireCodec) {
    let charge = BillingCharge {
        metadata: metadata(TENANT, "r-full-oct", "backbone.billing.charge"),
        rating_id: "r-full-oct".into(),
        revision: 1,
        charge_type: BillingChargeType::Usage,
        customer_id: "c-s-full".into(),
        subscription_id: "s-full".into(),
        charge_id: "calls".into(),
        group_key: String::new(),
        description: "API calls".into(),
        period_start: days_from_civil(2026, 10, 1),
        period_end: days_from_civil(2026, 11, 1),
        quantity: "10".parse().expect("quantity"),
        amount: amount("5"),
        currency: "EUR".into(),
        billing_account_ref: None,
    };
    publish(
        codec,
        deployment.topics.name("billing.charges"),
        &[(format!("{TENANT}:s-full"), charge, None)],
    )
    .await;
}

/// Every issued invoice, by invoice id: all the records of each.
async fn invoices(codec: &WireCodec, deployment: &Deployment) -> BTreeMap<String, Vec<Invoice>> {
    let mut by_id: BTreeMap<String, Vec<Invoice>> = BTreeMap::new();
    for invoice in read_all::<Invoice>(codec, deployment.topics.name("sales.invoices")).await {
        by_id
            .entry(invoice.invoice_id.clone())
            .or_default()
            .push(invoice);
    }
    by_id
}

/// An invoice's lines as (description, amount) and its total.
fn lines(invoice: &Invoice) -> (Vec<(String, Amount)>, Amount) {
    let lines = invoice
        .lines
        .iter()
        .map(|l| (l.description.clone(), l.amount))
        .collect();
    (lines, invoice.total_amount)
}

fn expected(lines: &[(&str, &str)], total: &str) -> (Vec<(String, Amount)>, Amount) {
    let lines = lines
        .iter()
        .map(|(d, a)| ((*d).to_owned(), amount(a)))
        .collect();
    (lines, amount(total))
}

/// Once `invoices` are issued and `closed` periods have closed (with an invoice or with
/// nothing to bill), and every draft is numbered: all issued invoices, read to the topic's end.
async fn settled(
    codec: &WireCodec,
    deployment: &Deployment,
    expected: &[String],
    closed: f64,
) -> BTreeMap<String, Vec<Invoice>> {
    eventually(DEADLINE, "the invoices expected", || async {
        let issued = invoices(codec, deployment).await;
        expected
            .iter()
            .all(|id| issued.contains_key(id))
            .then_some(())
    })
    .await;
    let url = format!("http://{}/metrics", deployment.metrics_address(CLOSE));
    eventually(DEADLINE, "the periods due closed", || async {
        let scraped = reqwest::get(&url).await.ok()?.text().await.ok()?;
        let line = scraped
            .lines()
            .find(|l| l.starts_with("backbone_periods_closed_total{"))?;
        let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
        (value == closed).then_some(())
    })
    .await;
    let drafts = deployment.topics.name("sales.invoice-drafts").to_owned();
    let group = deployment.group(CLOSE);
    eventually(DEADLINE, "every draft numbered", || async {
        let end = end_offsets_total(&shared_settings(), &drafts).ok()?;
        (committed_total(&shared_settings(), &group, &drafts) == end).then_some(())
    })
    .await;
    invoices(codec, deployment).await
}

fn id(subscription: &str, month: u32) -> String {
    format!(
        "inv-{subscription}-{}",
        format_date(days_from_civil(2026, month, 1))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn recurring_fees_bill_every_period_pro_rata_by_the_days_billable_in_berlin() {
    let codec = WireCodec::new(registry_url().as_str());
    let sandbox = Sandbox::start(backbone_sandbox::SandboxConfig::default()).await;
    let mut deployment = Deployment::create(
        "recurring-fees",
        &sandbox.url,
        "postgres://unused",
        &registry_url(),
    )
    .await;
    let october_end = micros("2026-10-31T23:00:00Z");
    deployment.settings.push((
        CLOSE,
        "processor.grace".into(),
        grace_closing_in(october_end, Duration::from_secs(10)),
    ));
    master_data(&deployment, &codec).await;
    october_usage(&deployment, &codec).await;
    deployment.start(CLOSE);

    // October's five periods closed: four invoices, and none for the paused subscription.
    let october_ids = ["s-ending", "s-full", "s-new", "s-trial"].map(|s| id(s, 10));
    let october = settled(&codec, &deployment, &october_ids, 5.0).await;
    assert_eq!(
        october.keys().cloned().collect::<Vec<_>>(),
        [
            id("s-ending", 10),
            id("s-full", 10),
            id("s-new", 10),
            id("s-trial", 10)
        ],
        "a paused subscription is billed no fee"
    );
    let one = |invoices: &BTreeMap<String, Vec<Invoice>>, key: String| {
        let records = &invoices[&key];
        assert_eq!(records.len(), 1, "{key} issued once: {records:?}");
        lines(&records[0])
    };
    // A whole month, and its usage after the fees.
    assert_eq!(
        one(&october, id("s-full", 10)),
        expected(
            &[("Platform fee", "30"), ("Support", "10"), ("calls", "5")],
            "45"
        )
    );
    // From 11 October in Berlin (10 October in UTC): 21 of 31 days.
    // 30 × 21 / 31 = 20.3225806…, 10 × 21 / 31 = 6.7741935…
    assert_eq!(
        one(&october, id("s-new", 10)),
        expected(
            &[
                ("Platform fee, 21 of 31 days", "20.322581"),
                ("Support, 21 of 31 days", "6.774194")
            ],
            "27.096775"
        )
    );
    // The trial ends at the start of 21 October: 11 days. 30 × 11 / 31 = 10.6451612…,
    // 10 × 11 / 31 = 3.5483870…
    assert_eq!(
        one(&october, id("s-trial", 10)),
        expected(
            &[
                ("Platform fee, 11 of 31 days", "10.645161"),
                ("Support, 11 of 31 days", "3.548387")
            ],
            "14.193548"
        )
    );
    // Cancelled, ending at the start of 20 October: 19 days. 30 × 19 / 31 = 18.3870967…,
    // 10 × 19 / 31 = 6.1290322…
    assert_eq!(
        one(&october, id("s-ending", 10)),
        expected(
            &[
                ("Platform fee, 19 of 31 days", "18.387097"),
                ("Support, 19 of 31 days", "6.129032")
            ],
            "24.516129"
        )
    );
    let fee_line = &october[&id("s-full", 10)][0].lines[0];
    assert_eq!(
        (
            fee_line.product_id.as_deref(),
            fee_line.charge_id.as_deref(),
            fee_line.rating_ids.len()
        ),
        (Some("platform"), None, 0)
    );

    // October's month-end batch credits the platform fees to their product's account.
    let journals = deployment.topics.name("erp.journal-batches").to_owned();
    create_topic(&shared_settings(), &journals, 1)
        .await
        .expect("journal batches topic");
    let outbox = deployment.dir.join("outbox");
    let (code, said) = deployment.run_month_end("2026-10", "0s", &outbox);
    assert_eq!(code, Some(0), "{said}");
    let revenue =
        std::fs::read_to_string(outbox.join(format!("{TENANT}/le-berlin/2026-10/001/revenue.csv")))
            .expect("revenue.csv");
    // 4000: 10 + 6.774194 + 3.548387 + 6.129032 + 5; 4500: 30 + 20.322581 + 10.645161 + 18.387097.
    assert_eq!(
        revenue,
        "gl_account,kind,currency,amount\n4000,revenue,EUR,31.451613\n4500,revenue,EUR,79.354839\n"
    );

    // Killed, and started again with a grace that closes November now: the periods opened
    // when October closed, with no usage and no new subscription record, bill a whole month.
    // Four of them: the paused subscription goes on (it may resume), the one that ended on
    // 19 October does not. A fifth period closes too, with nothing to bill: November of
    // `berlin.rs`'s subscription, whose plan has no fee and which had no usage.
    deployment.kill(CLOSE);
    let november_end = micros("2026-11-30T23:00:00Z");
    deployment.settings.push((
        CLOSE,
        "processor.grace".into(),
        grace_closing_in(november_end, Duration::from_secs(5)),
    ));
    deployment.start(CLOSE);
    let november_ids = ["s-full", "s-new", "s-trial"].map(|s| id(s, 11));
    let all = settled(&codec, &deployment, &november_ids, 5.0).await;
    let november: Vec<String> = all
        .keys()
        .filter(|k| k.ends_with("2026-11-01"))
        .cloned()
        .collect();
    assert_eq!(
        november,
        [id("s-full", 11), id("s-new", 11), id("s-trial", 11)],
        "nothing for the subscription that ended in October, nor the paused one"
    );
    for invoice in &november {
        assert_eq!(
            one(&all, invoice.clone()),
            expected(&[("Platform fee", "30"), ("Support", "10")], "40")
        );
    }
    // October's invoices were not issued again by the restarted process.
    assert_eq!(all.len(), 7, "{:?}", all.keys().collect::<Vec<_>>());
    for key in october.keys() {
        one(&all, key.clone());
    }
}
