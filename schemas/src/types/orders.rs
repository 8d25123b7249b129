//! `backbone.sales`, the order workflow: the steps the order orchestrator commands and the
//! state changes it publishes.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::common::EventMetadata;
use super::sales::SalesOrder;
use super::{Amount, Contract};

/// One step of an order's workflow for one system to carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
pub struct OrderStep {
    /// Envelope; `event_id` is the step key.
    pub metadata: EventMetadata,
    /// Idempotency key of the step: `<order_id>:<revision>:<workflow>:<step>`, in lower case.
    pub step_key: String,
    /// Order the step belongs to.
    pub order_id: String,
    /// Order revision the step acts for.
    pub revision: i32,
    /// What the step does.
    pub step: OrderStepKind,
    /// The order revision the step acts for.
    pub order: SalesOrder,
    /// The subscription change to make or undo; none for other steps.
    #[avro(default = "null")]
    pub subscription_change: Option<SubscriptionChange>,
    /// The plan subscribed to; none for steps other than the subscription's.
    #[avro(default = "null")]
    pub plan_id: Option<String>,
    /// How the workflow ended, for `CONFIRM_ORDER`; none for other steps.
    #[avro(default = "null")]
    pub conclusion: Option<OrderConclusion>,
}

impl Contract for OrderStep {
    const FULL_NAME: &'static str = "backbone.sales.OrderStep";
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStepKind {
    #[doc = concat!("Ask the CRM whether the customer exists and is active.")]
    CheckCustomer,
    #[doc = concat!("Provision the order lines' entitlements on the product platform.")]
    ProvisionEntitlements,
    #[doc = concat!("Create, amend or cancel the subscription in billing.")]
    ChangeSubscription,
    #[doc = concat!("Record the order in the ERP.")]
    RecordOrder,
    #[doc = concat!("Tell the sales platform how the order ended.")]
    ConfirmOrder,
    #[doc = concat!("Revoke the order's entitlements (compensation).")]
    RevokeEntitlements,
    #[doc = concat!("Undo the order's subscription change (compensation).")]
    RevertSubscription,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

impl OrderStepKind {
    /// The step's name in lower case, as in step keys and `OrderStateChange.step`.
    pub fn name(self) -> &'static str {
        match self {
            Self::CheckCustomer => "check_customer",
            Self::ProvisionEntitlements => "provision_entitlements",
            Self::ChangeSubscription => "change_subscription",
            Self::RecordOrder => "record_order",
            Self::ConfirmOrder => "confirm_order",
            Self::RevokeEntitlements => "revoke_entitlements",
            Self::RevertSubscription => "revert_subscription",
            Self::Unknown => "unknown",
        }
    }

    /// The step called `name` (as [`name`](Self::name) gives it); `None` for any other.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::CheckCustomer,
            Self::ProvisionEntitlements,
            Self::ChangeSubscription,
            Self::RecordOrder,
            Self::ConfirmOrder,
            Self::RevokeEntitlements,
            Self::RevertSubscription,
        ]
        .into_iter()
        .find(|step| step.name() == name)
    }
}

/// What an order does to its subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubscriptionChange {
    #[doc = concat!("A new subscription.")]
    Create,
    #[doc = concat!("A change of an existing subscription (an upgrade, more seats).")]
    Amend,
    #[doc = concat!("The end of a subscription.")]
    Cancel,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

/// How an order's workflow ended, as the sales platform hears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderConclusion {
    #[doc = concat!("Provisioned, billed and recorded.")]
    Fulfilled,
    #[doc = concat!("Cancelled, what was done undone.")]
    Cancelled,
    #[doc = concat!("Not approved: nothing was done.")]
    Rejected,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

/// A change of state of an order's workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
pub struct OrderStateChange {
    /// Envelope.
    pub metadata: EventMetadata,
    /// Order whose workflow changed state.
    pub order_id: String,
    /// Order revision the workflow is acting for.
    pub revision: i32,
    /// The state entered.
    pub state: OrderWorkflowState,
    /// The step started, in lower case; none in a final state.
    #[avro(default = "null")]
    pub step: Option<String>,
    /// Why the workflow waits for approval, is escalated, compensating, rejected or parked;
    /// none otherwise.
    #[avro(default = "null")]
    pub reason: Option<String>,
    /// Customer account that placed the order.
    pub customer_id: String,
    /// Legal entity that sells the order.
    pub legal_entity_id: String,
    /// Currency of `total_amount`.
    pub currency: String,
    /// What the customer owes for the order revision.
    pub total_amount: Amount,
}

impl Contract for OrderStateChange {
    const FULL_NAME: &'static str = "backbone.sales.OrderStateChange";
}

/// Where an order's workflow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderWorkflowState {
    #[doc = concat!("Waiting for a person's approval.")]
    AwaitingApproval,
    #[doc = concat!("Still waiting for approval after the approval timeout: escalated.")]
    Escalated,
    #[doc = concat!("A step is running.")]
    InProgress,
    #[doc = concat!("A step failed for good; the steps done are being undone.")]
    Compensating,
    #[doc = concat!("Every step done.")]
    Fulfilled,
    #[doc = concat!("Cancelled, what was done undone.")]
    Cancelled,
    #[doc = concat!("Not approved, by a person or for want of a decision: nothing was done.")]
    Rejected,
    #[doc = concat!("Stopped for a person: in the exception queue with its reason.")]
    Parked,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

/// A person's decision on an order revision waiting for approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
pub struct OrderApproval {
    /// Envelope.
    pub metadata: EventMetadata,
    /// Order decided on.
    pub order_id: String,
    /// Order revision decided on.
    pub revision: i32,
    /// What the approver decided.
    pub decision: ApprovalDecision,
    /// The approver's user name.
    pub decided_by: String,
    /// Why, in the approver's words.
    #[avro(default = "null")]
    pub reason: Option<String>,
}

impl Contract for OrderApproval {
    const FULL_NAME: &'static str = "backbone.sales.OrderApproval";
}

/// What the approver decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.sales")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApprovalDecision {
    #[doc = concat!("Go ahead.")]
    Approve,
    #[doc = concat!("Do not.")]
    Reject,
    #[doc = concat!("A symbol this reader does not know.")]
    #[default]
    Unknown,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::common::tests::metadata;
    use crate::types::sales::tests::sales_order;
    use crate::types::tests::{check, dec};

    #[test]
    pub(crate) fn order_step_matches_its_contract() {
        check(&OrderStep {
            metadata: metadata(
                "order-orchestrator",
                "backbone.sales.order.step",
                "ord-1001:2:fulfil:change_subscription",
            ),
            step_key: "ord-1001:2:fulfil:change_subscription".into(),
            order_id: "ord-1001".into(),
            revision: 2,
            step: OrderStepKind::ChangeSubscription,
            order: sales_order(),
            subscription_change: Some(SubscriptionChange::Amend),
            plan_id: Some("prod-pro-seat".into()),
            conclusion: None,
        });
        check(&OrderStep {
            metadata: metadata(
                "order-orchestrator",
                "backbone.sales.order.step",
                "ord-1001:2:fulfil:confirm_order",
            ),
            step_key: "ord-1001:2:fulfil:confirm_order".into(),
            order_id: "ord-1001".into(),
            revision: 2,
            step: OrderStepKind::ConfirmOrder,
            order: sales_order(),
            subscription_change: None,
            plan_id: None,
            conclusion: Some(OrderConclusion::Fulfilled),
        });
    }

    #[test]
    pub(crate) fn order_state_change_matches_its_contract() {
        check(&OrderStateChange {
            metadata: metadata(
                "order-orchestrator",
                "backbone.sales.order.state",
                "ord-1001:2:parked",
            ),
            order_id: "ord-1001".into(),
            revision: 2,
            state: OrderWorkflowState::Parked,
            step: None,
            reason: Some("provision_entitlements: refused: prod-x is refused".into()),
            customer_id: "cust-42".into(),
            legal_entity_id: "le-de".into(),
            currency: "EUR".into(),
            total_amount: dec("3210.54287"),
        });
    }

    #[test]
    pub(crate) fn order_approval_matches_its_contract() {
        check(&OrderApproval {
            metadata: metadata(
                "orders",
                "backbone.sales.order.approval",
                "ord-1001:2:approve",
            ),
            order_id: "ord-1001".into(),
            revision: 2,
            decision: ApprovalDecision::Reject,
            decided_by: "a.approver".into(),
            reason: Some("discount above policy".into()),
        });
    }

    #[test]
    fn step_names_read_back() {
        for step in [
            OrderStepKind::CheckCustomer,
            OrderStepKind::ProvisionEntitlements,
            OrderStepKind::ChangeSubscription,
            OrderStepKind::RecordOrder,
            OrderStepKind::ConfirmOrder,
            OrderStepKind::RevokeEntitlements,
            OrderStepKind::RevertSubscription,
        ] {
            assert_eq!(OrderStepKind::from_name(step.name()), Some(step));
        }
        assert_eq!(OrderStepKind::from_name("unknown"), None);
    }
}
