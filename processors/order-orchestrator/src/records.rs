//! The records the orchestrator publishes, made from the order and the workflow only, so that
//! a redelivered input reproduces them byte for byte.

use backbone_calendar::{civil_from_days, DAY_MICROS};
use backbone_rating::PeriodPlan;
use backbone_schemas::types::{
    BillingInterval, EventMetadata, OrderConclusion, OrderStateChange, OrderStep, OrderStepKind,
    OrderWorkflowState, SalesOrder, Subscription, SubscriptionChange, SubscriptionStatus,
};

use crate::workflow::{plan_of, Kind};

/// The key every record of an order carries: `<tenant>:<order_id>`.
pub(crate) fn order_key(order: &SalesOrder) -> String {
    format!("{}:{}", order.metadata.tenant_id, order.order_id)
}

/// The step key of `step` of the `kind` of workflow of `order`'s revision:
/// `<order_id>:<revision>:<kind>:<step>`.
pub(crate) fn step_key(order: &SalesOrder, kind: Kind, step: OrderStepKind) -> String {
    format!(
        "{}:{}:{}:{}",
        order.order_id,
        order.revision,
        kind.name(),
        step.name()
    )
}

/// The order key, revision, kind of workflow and step of the key the step sink delivered a
/// step under, `<tenant>:<step key>`; `None` when it is not one.
pub(crate) fn parse_delivery_key(key: &str) -> Option<(&str, (i32, Kind, OrderStepKind))> {
    let mut parts = key.rsplitn(4, ':');
    let step = OrderStepKind::from_name(parts.next()?)?;
    let kind = Kind::from_name(parts.next()?)?;
    let revision = parts.next()?.parse().ok()?;
    let order = parts.next()?;
    Some((order, (revision, kind, step)))
}

fn metadata(order: &SalesOrder, event_id: String, kind: &str, at_micros: i64) -> EventMetadata {
    EventMetadata {
        tenant_id: order.metadata.tenant_id.clone(),
        event_id,
        source: crate::SOURCE.to_owned(),
        r#type: kind.to_owned(),
        occurred_at: at_micros,
        produced_at: at_micros,
        trace: order.metadata.trace.clone(),
        schema_version: None,
    }
}

/// The command for `step` of `order`'s `kind` of workflow.
pub(crate) fn step(
    order: &SalesOrder,
    kind: Kind,
    step: OrderStepKind,
    subscription_change: Option<SubscriptionChange>,
    conclusion: Option<OrderConclusion>,
    at_micros: i64,
) -> OrderStep {
    let key = step_key(order, kind, step);
    let subscribes = matches!(
        step,
        OrderStepKind::ChangeSubscription | OrderStepKind::RevertSubscription
    );
    OrderStep {
        metadata: metadata(order, key.clone(), "backbone.sales.order.step", at_micros),
        step_key: key,
        order_id: order.order_id.clone(),
        revision: order.revision,
        step,
        order: order.clone(),
        subscription_change,
        plan_id: subscribes
            .then(|| plan_of(order).map(str::to_owned))
            .flatten(),
        conclusion,
    }
}

/// The state change to `state` of `order`'s `kind` of workflow.
pub(crate) fn state_change(
    order: &SalesOrder,
    kind: Kind,
    state: OrderWorkflowState,
    step: Option<OrderStepKind>,
    reason: Option<String>,
    at_micros: i64,
) -> OrderStateChange {
    let state_name = crate::state_name(state);
    let event_id = format!(
        "{}:{}:{}:{state_name}:{}",
        order_key(order),
        order.revision,
        kind.name(),
        step.map_or("-", OrderStepKind::name)
    );
    OrderStateChange {
        metadata: metadata(order, event_id, "backbone.sales.order.state", at_micros),
        order_id: order.order_id.clone(),
        revision: order.revision,
        state,
        step: step.map(|s| s.name().to_owned()),
        reason,
        customer_id: order.customer_id.clone(),
        legal_entity_id: order.legal_entity_id.clone(),
        currency: order.currency.clone(),
        total_amount: order.total_amount,
    }
}

/// The subscription an order's subscription `change` leaves, for `master.subscriptions`; `None`
/// for an order that subscribes to no plan.
pub(crate) fn subscription(
    order: &SalesOrder,
    change: SubscriptionChange,
    at_micros: i64,
) -> Option<Subscription> {
    let status = match change {
        SubscriptionChange::Cancel => SubscriptionStatus::Cancelled,
        _ => SubscriptionStatus::Active,
    };
    subscription_on(order, plan_of(order)?, status, "", at_micros)
}

/// The subscription as it was before `order` changed it: on `plan`, or cancelled (on the
/// order's plan) when there was none.
pub(crate) fn restored_subscription(
    order: &SalesOrder,
    plan: Option<&str>,
    at_micros: i64,
) -> Option<Subscription> {
    match plan {
        Some(plan) => subscription_on(
            order,
            plan,
            SubscriptionStatus::Active,
            ":restored",
            at_micros,
        ),
        None => subscription_on(
            order,
            plan_of(order)?,
            SubscriptionStatus::Cancelled,
            ":restored",
            at_micros,
        ),
    }
}

/// The master record of `order`'s subscription on `plan_id` in `status`; `event` tells records
/// of one order revision apart.
fn subscription_on(
    order: &SalesOrder,
    plan_id: &str,
    status: SubscriptionStatus,
    event: &str,
    at_micros: i64,
) -> Option<Subscription> {
    let start = order
        .lines
        .iter()
        .find_map(|line| line.service_start)
        .unwrap_or_else(|| backbone_calendar::day_of_micros(at_micros));
    let (_, _, anchor) = civil_from_days(start);
    let anchor = i32::try_from(anchor).unwrap_or(1);
    let period = PeriodPlan::new(start, anchor, BillingInterval::Monthly)
        .ok()?
        .period_of(start);
    let id = order.subscription_or_own();
    Some(Subscription {
        metadata: metadata(
            order,
            format!("{id}@{}:{}{event}", order.order_id, order.revision),
            "backbone.master.subscription",
            at_micros,
        ),
        subscription_id: id,
        customer_id: order.customer_id.clone(),
        plan_id: plan_id.to_owned(),
        status,
        currency: order.currency.clone(),
        legal_entity_id: order.legal_entity_id.clone(),
        billing_interval: BillingInterval::Monthly,
        billing_anchor_day: anchor,
        current_period_start: period.start,
        current_period_end: period.end,
        started_at: i64::from(start) * DAY_MICROS,
        ends_at: (status == SubscriptionStatus::Cancelled).then_some(at_micros),
        trial_ends_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_keys_read_back_whatever_the_order_id_holds() {
        for (order, revision, kind, step) in [
            ("t1:ord-1", 1, Kind::Fulfil, OrderStepKind::CheckCustomer),
            (
                "t1:ord:with:colons",
                12,
                Kind::Cancel,
                OrderStepKind::RevokeEntitlements,
            ),
        ] {
            let key = format!("{order}:{revision}:{}:{}", kind.name(), step.name());
            assert_eq!(
                parse_delivery_key(&key),
                Some((order, (revision, kind, step)))
            );
        }
        assert_eq!(parse_delivery_key("t1:ord-1:x:fulfil:check_customer"), None);
        assert_eq!(parse_delivery_key("t1:ord-1:1:refund:check_customer"), None);
        assert_eq!(parse_delivery_key("t1:ord-1:1:fulfil:sing"), None);
    }
}
