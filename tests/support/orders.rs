//! Sales orders for the tests of the order workflow, and their publishing into a deployment.
// Each test binary uses part of them.
#![allow(dead_code)]

use backbone_schemas::types::{OrderStatus, SalesOrder, SalesOrderLine};
use backbone_schemas::WireCodec;

use crate::backbone::Deployment;
use crate::sinks::{metadata, publish};

/// Order `id`'s `revision` in `status`, by `customer`: a set-up line and, when `plan` names
/// one, a subscription line to that plan.
pub fn order(
    tenant: &str,
    id: &str,
    revision: i32,
    status: OrderStatus,
    customer: &str,
    plan: Option<&str>,
) -> SalesOrder {
    let line = |n: i32, product: &str, service: bool| SalesOrderLine {
        line_number: n,
        product_id: product.to_owned(),
        description: None,
        quantity: format!("{revision}").parse().expect("quantity"),
        unit_price: "100".parse().expect("price"),
        discount_amount: None,
        line_amount: format!("{}", 100 * revision).parse().expect("amount"),
        tax_code: None,
        service_start: service.then_some(20_800),
        service_end: None,
    };
    let mut lines = vec![line(1, "setup-workshop", false)];
    if let Some(plan) = plan {
        lines.push(line(2, plan, true));
    }
    let status_name = format!("{status:?}").to_lowercase();
    SalesOrder {
        metadata: metadata(
            tenant,
            &format!("{id}@{revision}:{status_name}"),
            "backbone.sales.order",
        ),
        order_id: id.to_owned(),
        revision,
        order_number: format!("SO-{id}"),
        customer_id: customer.to_owned(),
        legal_entity_id: "le-de".to_owned(),
        status,
        ordered_at: 1_790_000_000_000_000,
        currency: "EUR".to_owned(),
        net_amount: format!(
            "{}",
            100 * revision * i32::try_from(lines.len()).unwrap_or(1)
        )
        .parse()
        .expect("net"),
        lines,
        tax_amount: "0".parse().expect("tax"),
        total_amount: "0".parse().expect("total"),
        subscription_id: None,
        ship_to: None,
        external_reference: None,
    }
}

/// Order `id`'s first revision, confirmed, by customer `c-1`, subscribing to `plan-pro`.
pub fn subscribing(tenant: &str, id: &str) -> SalesOrder {
    order(
        tenant,
        id,
        1,
        OrderStatus::Confirmed,
        "c-1",
        Some("plan-pro"),
    )
}

/// Publishes `orders` to `deployment`'s order topic, keyed `<tenant>:<order_id>`.
pub async fn publish_orders(deployment: &Deployment, codec: &WireCodec, orders: &[SalesOrder]) {
    let values: Vec<(String, SalesOrder, Option<i64>)> = orders
        .iter()
        .map(|o| {
            (
                format!("{}:{}", o.metadata.tenant_id, o.order_id),
                o.clone(),
                None,
            )
        })
        .collect();
    publish(codec, deployment.topics.name("sales.orders"), &values).await;
}
