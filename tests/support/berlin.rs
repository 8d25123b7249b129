//! One customer of a legal entity that keeps Berlin time, for tests that take its usage
//! through the whole pipeline: the entity, the customer's account and monthly subscription
//! (anchored on the 1st), a GL mapping (revenue 4000, receivables 1200) and a plan at 0.50 EUR
//! per API call.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use backbone_calendar::{days_from_civil, now_micros, parse_rfc3339_ms};
use backbone_schemas::types::{
    AccountStatus, BillingInterval, ChargeModel, CustomerAccount, GlMapping, LegalEntity,
    MeterAggregation, RateCard, RateCharge, Subscription, SubscriptionStatus, UsageEvent,
};
use backbone_schemas::WireCodec;

use crate::backbone::Deployment;
use crate::sinks::{metadata, publish};

/// The tenant.
pub const TENANT: &str = "acme";

/// An RFC 3339 instant in microseconds.
pub fn micros(text: &str) -> i64 {
    parse_rfc3339_ms(text).expect("instant") * 1_000
}

/// A grace that makes the period ending at `end_micros` close `after` from now.
pub fn grace_closing_in(end_micros: i64, after: Duration) -> String {
    let close = now_micros() + i64::try_from(after.as_micros()).expect("µs");
    format!("{}s", (close - end_micros) / 1_000_000)
}

/// Publishes the master data above on the deployment's topics.
pub async fn master_data(deployment: &Deployment, codec: &WireCodec) {
    let t = &deployment.topics;
    let meta = |id: &str, kind: &str| metadata(TENANT, id, kind);
    let entity = LegalEntity {
        metadata: meta("le-berlin", "backbone.master.legal-entity"),
        legal_entity_id: "le-berlin".into(),
        name: "Acme GmbH".into(),
        country_code: "DE".into(),
        functional_currency: "EUR".into(),
        time_zone: "Europe/Berlin".into(),
        fiscal_year_start_month: 1,
        tax_id: None,
        registered_address: None,
    };
    publish(
        codec,
        t.name("master.legal-entities"),
        &[(format!("{TENANT}:le-berlin"), entity, None)],
    )
    .await;
    let account = CustomerAccount {
        metadata: meta("c-1", "backbone.master.customer-account"),
        customer_id: "c-1".into(),
        name: "Customer 1".into(),
        status: AccountStatus::Active,
        currency: "EUR".into(),
        legal_entity_id: "le-berlin".into(),
        country_code: "DE".into(),
        billing_contact_name: None,
        billing_email: None,
        billing_address: None,
        tax_id: None,
        crm_account_id: None,
        erp_customer_id: None,
    };
    publish(
        codec,
        t.name("master.customer-accounts"),
        &[(format!("{TENANT}:c-1"), account, None)],
    )
    .await;
    let subscription = Subscription {
        metadata: meta("s-1", "backbone.master.subscription"),
        subscription_id: "s-1".into(),
        customer_id: "c-1".into(),
        plan_id: "p-1".into(),
        status: SubscriptionStatus::Active,
        currency: "EUR".into(),
        legal_entity_id: "le-berlin".into(),
        billing_interval: BillingInterval::Monthly,
        billing_anchor_day: 1,
        current_period_start: days_from_civil(2026, 11, 1),
        current_period_end: days_from_civil(2026, 12, 1),
        started_at: 0,
        ends_at: None,
        trial_ends_at: None,
    };
    publish(
        codec,
        t.name("master.subscriptions"),
        &[(format!("{TENANT}:s-1"), subscription, None)],
    )
    .await;
    let mapping = GlMapping {
        metadata: meta("m-berlin", "backbone.master.gl-mapping"),
        mapping_id: "m-berlin".into(),
        legal_entity_id: "le-berlin".into(),
        product_id: None,
        charge_id: None,
        revenue_account: "4000".into(),
        receivable_account: "1200".into(),
        deferred_revenue_account: "2500".into(),
        tax_account: "3800".into(),
        effective_from: 0,
        effective_to: None,
    };
    publish(
        codec,
        &t.gl_mappings,
        &[(format!("{TENANT}:m-berlin"), mapping, None)],
    )
    .await;
    let card = RateCard {
        metadata: meta("p-1@1", "backbone.master.rate-card"),
        plan_id: "p-1".into(),
        version: 1,
        name: "Plan 1".into(),
        currency: "EUR".into(),
        effective_from: 0,
        effective_to: None,
        charges: vec![RateCharge {
            charge_id: "calls".into(),
            name: "API calls".into(),
            meter_id: "api-calls".into(),
            aggregation: MeterAggregation::Sum,
            charge_model: ChargeModel::Unit,
            flat_amount: None,
            unit_price: Some("0.5".parse().expect("price")),
            package_size: None,
            percentage: None,
            free_units: None,
            minimum_spend: None,
            maximum_spend: None,
            tiers: Vec::new(),
            group_by: Vec::new(),
        }],
        recurring_fees: Vec::new(),
    };
    publish(
        codec,
        t.name("master.rate-cards"),
        &[(format!("{TENANT}:p-1:1"), card, None)],
    )
    .await;
}

/// Publishes usage events `(event id, occurred at, calls)` of customer `c-1`.
pub async fn publish_usage(
    deployment: &Deployment,
    codec: &WireCodec,
    events: &[(&str, &str, &str)],
) {
    let values: Vec<(String, UsageEvent, Option<i64>)> = events
        .iter()
        .map(|(id, at, quantity)| {
            let mut meta = metadata(TENANT, id, "backbone.usage.recorded");
            meta.source = "api".into();
            meta.occurred_at = micros(at);
            meta.produced_at = now_micros();
            let event = UsageEvent {
                metadata: meta,
                customer_id: "c-1".into(),
                subscription_id: Some("s-1".into()),
                meter_id: "api-calls".into(),
                quantity: quantity.parse().expect("quantity"),
                unit: "call".into(),
                dimensions: None,
                unique_value: None,
            };
            (format!("{TENANT}:c-1"), event, None)
        })
        .collect();
    publish(codec, deployment.topics.name("usage.events"), &values).await;
}
