//! The workflow of one order revision, as a state machine with no I/O: an order event, a step's
//! result or a timeout goes in, the workflow changes and says what to publish. The processor
//! (`lib.rs`) keeps it in partition state and turns its effects into records.
//!
//! A confirmed order runs check customer, provision entitlements, change the subscription (when
//! the order subscribes to a plan), record the order in the ERP and confirm to the sales
//! platform; a cancelled one revokes the entitlements, cancels the subscription (when one
//! exists), records the cancellation and confirms it. One step runs at a time. A step refused
//! for good (or not answered within the step timeout) undoes the steps done, newest first,
//! and parks the order for a person. A newer revision or a cancellation arriving meanwhile waits
//! until the running step has its result and then takes over; the revision it replaces stops
//! there, never interleaved with it.

use backbone_schemas::types::{
    OrderConclusion, OrderStatus, OrderStepKind, OrderWorkflowState, SalesOrder, SubscriptionChange,
};
use serde::{Deserialize, Serialize};

/// What a revision's workflow does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// Provision, bill, record and confirm a confirmed order.
    Fulfil,
    /// Undo a cancelled order's effects, record and confirm the cancellation.
    Cancel,
}

impl Kind {
    /// Its name in step keys: a cancellation of a revision runs steps of the same names as
    /// its fulfilment did, which must not be taken for them.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Fulfil => "fulfil",
            Kind::Cancel => "cancel",
        }
    }

    /// The kind called `name`; `None` for any other.
    pub(crate) fn from_name(name: &str) -> Option<Kind> {
        [Kind::Fulfil, Kind::Cancel]
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

/// Where the workflow stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Phase {
    /// A forward step runs.
    Running(OrderStepKind),
    /// A compensation step runs, undoing what a failed workflow did.
    Compensating {
        /// The compensation step.
        step: OrderStepKind,
        /// Why the workflow failed.
        reason: String,
    },
    /// The revision's workflow is over.
    Ended(OrderWorkflowState),
}

/// One order's workflow, as kept in partition state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Workflow {
    /// The order revision acted for.
    pub revision: i32,
    pub kind: Kind,
    pub phase: Phase,
    /// The subscription change this revision makes, if it makes one.
    pub subscription_change: Option<SubscriptionChange>,
    /// Forward steps done whose effects a compensation undoes, oldest first.
    pub done: Vec<OrderStepKind>,
    /// When the running step started, in the record time of the record that started it (ms).
    pub started_ms: i64,
    /// Whether the order's subscription exists (an earlier revision created it).
    pub subscribed: bool,
    /// A newer revision (or a cancellation) waiting for the running step to finish; its order
    /// is kept beside the workflow.
    pub pending: Option<i32>,
}

/// What the workflow asks the processor to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Command a step.
    Step {
        step: OrderStepKind,
        subscription_change: Option<SubscriptionChange>,
        conclusion: Option<OrderConclusion>,
    },
    /// Publish a state change.
    State {
        state: OrderWorkflowState,
        step: Option<OrderStepKind>,
        reason: Option<String>,
    },
    /// Put the order in the exception queue with `reason`.
    Park { reason: String },
    /// The subscription changed: publish its master record.
    Subscribed(SubscriptionChange),
    /// The revision's workflow ended and a pending one waits: start it.
    StartPending,
}

/// What an order event means for the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Not a status the workflow acts on (a draft, a placed order, the platform's own
    /// fulfilment notice).
    NotActionable,
    /// This revision and status were seen before, or a newer one is known.
    Seen,
    /// Start a workflow for it now.
    Start,
    /// Keep it until the running step has its result.
    Wait,
}

/// The plan an order subscribes to: its first line with a service period.
pub(crate) fn plan_of(order: &SalesOrder) -> Option<&str> {
    order
        .lines
        .iter()
        .find(|line| line.service_start.is_some())
        .map(|line| line.product_id.as_str())
}

fn kind_of(order: &SalesOrder) -> Option<Kind> {
    match order.status {
        OrderStatus::Confirmed => Some(Kind::Fulfil),
        OrderStatus::Cancelled => Some(Kind::Cancel),
        _ => None,
    }
}

/// Orders revisions and, within one, a cancellation after the confirmation.
fn rank(revision: i32, kind: Kind) -> (i32, bool) {
    (revision, kind == Kind::Cancel)
}

/// What `order` means for the order's `workflow` (none yet) and its `pending` revision.
pub(crate) fn arrival(
    workflow: Option<&Workflow>,
    pending: Option<&SalesOrder>,
    order: &SalesOrder,
) -> Arrival {
    let Some(kind) = kind_of(order) else {
        return Arrival::NotActionable;
    };
    let Some(workflow) = workflow else {
        return Arrival::Start;
    };
    let incoming = rank(order.revision, kind);
    let known = pending
        .and_then(|p| Some(rank(p.revision, kind_of(p)?)))
        .unwrap_or((i32::MIN, false))
        .max(rank(workflow.revision, workflow.kind));
    if incoming <= known {
        Arrival::Seen
    } else if matches!(workflow.phase, Phase::Ended(_)) {
        Arrival::Start
    } else {
        Arrival::Wait
    }
}

/// The forward steps of a revision's workflow, in order.
fn forward(kind: Kind, change: Option<SubscriptionChange>) -> Vec<OrderStepKind> {
    let mut steps = match kind {
        Kind::Fulfil => vec![
            OrderStepKind::CheckCustomer,
            OrderStepKind::ProvisionEntitlements,
        ],
        Kind::Cancel => vec![OrderStepKind::RevokeEntitlements],
    };
    if change.is_some() {
        steps.push(OrderStepKind::ChangeSubscription);
    }
    steps.extend([OrderStepKind::RecordOrder, OrderStepKind::ConfirmOrder]);
    steps
}

/// The step that undoes `step`, for the steps a failed workflow undoes.
fn undo(step: OrderStepKind) -> Option<OrderStepKind> {
    match step {
        OrderStepKind::ProvisionEntitlements => Some(OrderStepKind::RevokeEntitlements),
        OrderStepKind::ChangeSubscription => Some(OrderStepKind::RevertSubscription),
        _ => None,
    }
}

impl Workflow {
    /// The workflow of `order` (confirmed or cancelled), after `before` (the order's previous
    /// workflow, if any), starting at `now_ms`; `None` for an order of another status.
    pub(crate) fn start(
        order: &SalesOrder,
        before: Option<&Workflow>,
        now_ms: i64,
    ) -> Option<(Workflow, Vec<Effect>)> {
        let kind = kind_of(order)?;
        let subscribed = before.is_some_and(|b| b.subscribed);
        let subscription_change = match kind {
            Kind::Fulfil if plan_of(order).is_some() => Some(if subscribed {
                SubscriptionChange::Amend
            } else {
                SubscriptionChange::Create
            }),
            Kind::Cancel if subscribed => Some(SubscriptionChange::Cancel),
            _ => None,
        };
        let first = forward(kind, subscription_change)[0];
        let mut workflow = Workflow {
            revision: order.revision,
            kind,
            phase: Phase::Running(first),
            subscription_change,
            done: Vec::new(),
            started_ms: now_ms,
            subscribed,
            pending: None,
        };
        let effects = workflow.begin(first, now_ms);
        Some((workflow, effects))
    }

    /// Whether `step` of `revision`'s `kind` of workflow is the step running now.
    pub(crate) fn is_running(&self, revision: i32, kind: Kind, step: OrderStepKind) -> bool {
        revision == self.revision && kind == self.kind && self.running() == Some(step)
    }

    /// The step running now, forward or compensating; none once ended.
    pub(crate) fn running(&self) -> Option<OrderStepKind> {
        match &self.phase {
            Phase::Running(step) | Phase::Compensating { step, .. } => Some(*step),
            Phase::Ended(_) => None,
        }
    }

    /// The result of `step` of `revision`'s `kind` of workflow: `Ok` when the system carried it
    /// out (now or before), the reason when it refused for good. A result for any step but
    /// the running one is stale (a redelivery, or a step already timed out) and changes
    /// nothing.
    pub(crate) fn result(
        &mut self,
        (revision, kind, step): (i32, Kind, OrderStepKind),
        outcome: Result<(), String>,
        now_ms: i64,
    ) -> Vec<Effect> {
        if !self.is_running(revision, kind, step) {
            return Vec::new();
        }
        match (self.phase.clone(), outcome) {
            (Phase::Running(_), Ok(())) => self.advance(step, now_ms),
            (Phase::Running(_), Err(reason)) => {
                self.fail(format!("{}: {reason}", step.name()), now_ms)
            }
            (Phase::Compensating { reason, .. }, Ok(())) => {
                self.done.pop();
                self.compensate(reason, now_ms)
            }
            (Phase::Compensating { reason, .. }, Err(refusal)) => self.end_parked(format!(
                "{reason}; undoing it failed at {}: {refusal}",
                step.name()
            )),
            (Phase::Ended(_), _) => Vec::new(),
        }
    }

    /// Gives up on the running step if it started `timeout_ms` or more before `now_ms`. A step
    /// not answered may have acted, so a forward one is undone with the others.
    pub(crate) fn time_out(&mut self, now_ms: i64, timeout_ms: i64) -> Vec<Effect> {
        let Some(step) = self.running() else {
            return Vec::new();
        };
        if now_ms - self.started_ms < timeout_ms {
            return Vec::new();
        }
        let reason = format!("{}: no result within {} s", step.name(), timeout_ms / 1000);
        match self.phase.clone() {
            Phase::Running(_) => {
                if self.kind == Kind::Fulfil && undo(step).is_some() {
                    self.done.push(step);
                }
                self.fail(reason, now_ms)
            }
            Phase::Compensating { reason: first, .. } => {
                self.end_parked(format!("{first}; undoing it failed: {reason}"))
            }
            Phase::Ended(_) => Vec::new(),
        }
    }

    fn begin(&mut self, step: OrderStepKind, now_ms: i64) -> Vec<Effect> {
        self.started_ms = now_ms;
        let conclusion = (step == OrderStepKind::ConfirmOrder).then_some(match self.kind {
            Kind::Fulfil => OrderConclusion::Fulfilled,
            Kind::Cancel => OrderConclusion::Cancelled,
        });
        let (state, reason) = match &self.phase {
            Phase::Compensating { reason, .. } => {
                (OrderWorkflowState::Compensating, Some(reason.clone()))
            }
            _ => (OrderWorkflowState::InProgress, None),
        };
        let subscription_change = match step {
            OrderStepKind::ChangeSubscription | OrderStepKind::RevertSubscription => {
                self.subscription_change
            }
            _ => None,
        };
        vec![
            Effect::State {
                state,
                step: Some(step),
                reason,
            },
            Effect::Step {
                step,
                subscription_change,
                conclusion,
            },
        ]
    }

    fn advance(&mut self, step: OrderStepKind, now_ms: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.kind == Kind::Fulfil && undo(step).is_some() {
            self.done.push(step);
        }
        if step == OrderStepKind::ChangeSubscription {
            if let Some(change) = self.subscription_change {
                self.subscribed = change != SubscriptionChange::Cancel;
                effects.push(Effect::Subscribed(change));
            }
        }
        let steps = forward(self.kind, self.subscription_change);
        let next = steps
            .iter()
            .position(|s| *s == step)
            .and_then(|at| steps.get(at + 1))
            .copied();
        match next {
            // A newer revision waits: this one stops after the step that was running.
            Some(_) if self.pending.is_some() => {
                self.phase = Phase::Ended(OrderWorkflowState::Cancelled);
                effects.push(Effect::StartPending);
            }
            Some(next) => {
                self.phase = Phase::Running(next);
                effects.extend(self.begin(next, now_ms));
            }
            None => {
                let state = match self.kind {
                    Kind::Fulfil => OrderWorkflowState::Fulfilled,
                    Kind::Cancel => OrderWorkflowState::Cancelled,
                };
                effects.extend(self.end(state, None));
            }
        }
        effects
    }

    fn fail(&mut self, reason: String, now_ms: i64) -> Vec<Effect> {
        self.compensate(reason, now_ms)
    }

    /// Starts undoing the newest step done, or parks when nothing is left to undo.
    fn compensate(&mut self, reason: String, now_ms: i64) -> Vec<Effect> {
        match self.done.last().copied().and_then(undo) {
            Some(step) => {
                self.phase = Phase::Compensating {
                    step,
                    reason: reason.clone(),
                };
                self.begin(step, now_ms)
            }
            None => self.end_parked(reason),
        }
    }

    fn end_parked(&mut self, reason: String) -> Vec<Effect> {
        let mut effects = vec![Effect::Park {
            reason: reason.clone(),
        }];
        effects.extend(self.end(OrderWorkflowState::Parked, Some(reason)));
        effects
    }

    fn end(&mut self, state: OrderWorkflowState, reason: Option<String>) -> Vec<Effect> {
        self.phase = Phase::Ended(state);
        let mut effects = vec![Effect::State {
            state,
            step: None,
            reason,
        }];
        if self.pending.is_some() {
            effects.push(Effect::StartPending);
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_schemas::types::{EventMetadata, SalesOrderLine, TraceContext};

    fn order(revision: i32, status: OrderStatus, subscribes: bool) -> SalesOrder {
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

    fn steps(effects: &[Effect]) -> Vec<OrderStepKind> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Step { step, .. } => Some(*step),
                _ => None,
            })
            .collect()
    }

    /// Runs the workflow to its end, every step answered by `answer`; the steps commanded.
    fn run(
        workflow: &mut Workflow,
        first: Vec<Effect>,
        answer: impl Fn(OrderStepKind) -> Result<(), String>,
    ) -> Vec<OrderStepKind> {
        let mut commanded = steps(&first);
        while let Some(step) = workflow.running() {
            let effects =
                workflow.result((workflow.revision, workflow.kind, step), answer(step), 0);
            commanded.extend(steps(&effects));
        }
        commanded
    }

    use OrderStepKind::*;

    #[test]
    fn a_confirmed_order_runs_every_step_once_in_order() {
        let (mut workflow, first) =
            Workflow::start(&order(1, OrderStatus::Confirmed, true), None, 0).expect("start");
        let commanded = run(&mut workflow, first, |_| Ok(()));
        assert_eq!(
            commanded,
            [
                CheckCustomer,
                ProvisionEntitlements,
                ChangeSubscription,
                RecordOrder,
                ConfirmOrder
            ]
        );
        assert_eq!(workflow.phase, Phase::Ended(OrderWorkflowState::Fulfilled));
        assert!(workflow.subscribed);
    }

    #[test]
    fn a_one_off_order_changes_no_subscription() {
        let (mut workflow, first) =
            Workflow::start(&order(1, OrderStatus::Confirmed, false), None, 0).expect("start");
        let commanded = run(&mut workflow, first, |_| Ok(()));
        assert_eq!(
            commanded,
            [
                CheckCustomer,
                ProvisionEntitlements,
                RecordOrder,
                ConfirmOrder
            ]
        );
    }

    #[test]
    fn a_refusal_undoes_the_steps_done_newest_first_then_parks() {
        let (mut workflow, first) =
            Workflow::start(&order(1, OrderStatus::Confirmed, true), None, 0).expect("start");
        let commanded = run(&mut workflow, first, |step| match step {
            RecordOrder => Err("closed_period: the period is closed".into()),
            _ => Ok(()),
        });
        assert_eq!(
            commanded,
            [
                CheckCustomer,
                ProvisionEntitlements,
                ChangeSubscription,
                RecordOrder,
                RevertSubscription,
                RevokeEntitlements
            ]
        );
        assert_eq!(workflow.phase, Phase::Ended(OrderWorkflowState::Parked));
        assert!(workflow.done.is_empty());
    }

    #[test]
    fn a_step_timed_out_is_undone_with_the_others_and_its_late_result_ignored() {
        let (mut workflow, _) =
            Workflow::start(&order(1, OrderStatus::Confirmed, true), None, 0).expect("start");
        workflow.result((1, Kind::Fulfil, CheckCustomer), Ok(()), 10);
        assert!(workflow.time_out(999, 1_000).is_empty(), "not yet due");
        let effects = workflow.time_out(1_010, 1_000);
        assert_eq!(steps(&effects), [RevokeEntitlements]);
        assert!(workflow
            .result((1, Kind::Fulfil, ProvisionEntitlements), Ok(()), 1_020)
            .is_empty());
        let effects = workflow.result((1, Kind::Fulfil, RevokeEntitlements), Ok(()), 1_030);
        assert!(effects.iter().any(|e| matches!(e, Effect::Park { reason } if reason.contains("provision_entitlements: no result"))));
    }

    #[test]
    fn a_cancellation_while_a_step_runs_waits_for_its_result_then_undoes_the_order() {
        let (mut workflow, _) =
            Workflow::start(&order(1, OrderStatus::Confirmed, true), None, 0).expect("start");
        workflow.result((1, Kind::Fulfil, CheckCustomer), Ok(()), 0);
        workflow.result((1, Kind::Fulfil, ProvisionEntitlements), Ok(()), 0);
        let cancelled = order(1, OrderStatus::Cancelled, true);
        assert_eq!(arrival(Some(&workflow), None, &cancelled), Arrival::Wait);
        workflow.pending = Some(1);
        assert_eq!(
            arrival(Some(&workflow), Some(&cancelled), &cancelled),
            Arrival::Seen,
            "the same cancellation again"
        );
        let effects = workflow.result((1, Kind::Fulfil, ChangeSubscription), Ok(()), 0);
        assert!(effects.contains(&Effect::StartPending));
        assert!(steps(&effects).is_empty(), "the confirmed revision stops");
        let (mut cancelling, first) =
            Workflow::start(&cancelled, Some(&workflow), 0).expect("start");
        assert_eq!(
            run(&mut cancelling, first, |_| Ok(())),
            [
                RevokeEntitlements,
                ChangeSubscription,
                RecordOrder,
                ConfirmOrder
            ]
        );
        assert_eq!(
            cancelling.subscription_change,
            Some(SubscriptionChange::Cancel)
        );
        assert_eq!(
            cancelling.phase,
            Phase::Ended(OrderWorkflowState::Cancelled)
        );
    }

    #[test]
    fn a_cancellation_after_fulfilment_cancels_the_subscription() {
        let (mut workflow, first) =
            Workflow::start(&order(1, OrderStatus::Confirmed, true), None, 0).expect("start");
        run(&mut workflow, first, |_| Ok(()));
        let cancelled = order(1, OrderStatus::Cancelled, true);
        assert_eq!(arrival(Some(&workflow), None, &cancelled), Arrival::Start);
        let (mut cancelling, first) =
            Workflow::start(&cancelled, Some(&workflow), 0).expect("start");
        assert_eq!(
            run(&mut cancelling, first, |_| Ok(())),
            [
                RevokeEntitlements,
                ChangeSubscription,
                RecordOrder,
                ConfirmOrder
            ]
        );
        assert!(!cancelling.subscribed);
    }

    #[test]
    fn an_amendment_after_fulfilment_amends_the_subscription_and_a_repeat_is_seen() {
        let (mut workflow, first) =
            Workflow::start(&order(1, OrderStatus::Confirmed, true), None, 0).expect("start");
        run(&mut workflow, first, |_| Ok(()));
        let amended = order(2, OrderStatus::Confirmed, true);
        assert_eq!(arrival(Some(&workflow), None, &amended), Arrival::Start);
        let (upgrade, _) = Workflow::start(&amended, Some(&workflow), 0).expect("start");
        assert_eq!(upgrade.subscription_change, Some(SubscriptionChange::Amend));
        for repeat in [order(1, OrderStatus::Confirmed, true), amended] {
            assert_eq!(arrival(Some(&upgrade), None, &repeat), Arrival::Seen);
        }
        assert_eq!(
            arrival(Some(&upgrade), None, &order(3, OrderStatus::Placed, true)),
            Arrival::NotActionable
        );
    }
}
