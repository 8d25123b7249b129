//! Orders for the unit tests.

use backbone_schemas::types::{
    EventMetadata, OrderStatus, SalesOrder, SalesOrderLine, TraceContext,
};

/// Order `ord-1` of tenant `t1` at `revision` in `status`: a set-up line and, when it
/// `subscribes`, a line of plan `plan-pro` with a service period.
pub(crate) fn order(revision: i32, status: OrderStatus, subscribes: bool) -> SalesOrder {
    let line = |n: i32, product: &str, service: bool| SalesOrderLine {
        line_number: n,
        product_id: product.into(),
        description: None,
        quantity: "1".parse().expect("quantity"),
        unit_price: "10".parse().expect("price"),
        discount_amount: None,
        line_amount: "10".parse().expect("amount"),
        tax_code: None,
        service_start: service.then_some(20_400),
        service_end: None,
    };
    SalesOrder {
        metadata: EventMetadata {
            tenant_id: "t1".into(),
            event_id: format!("ord-1@{revision}"),
            source: "cpq".into(),
            r#type: "backbone.sales.order".into(),
            occurred_at: 0,
            produced_at: 0,
            trace: TraceContext {
                traceparent: String::new(),
                tracestate: None,
            },
            schema_version: None,
        },
        order_id: "ord-1".into(),
        revision,
        order_number: "SO-1".into(),
        customer_id: "c1".into(),
        legal_entity_id: "le-1".into(),
        status,
        ordered_at: 0,
        currency: "EUR".into(),
        lines: vec![line(1, "setup", false), line(2, "plan-pro", subscribes)],
        net_amount: "20".parse().expect("net"),
        tax_amount: "0".parse().expect("tax"),
        total_amount: "20".parse().expect("total"),
        subscription_id: None,
        ship_to: None,
        external_reference: None,
    }
}
