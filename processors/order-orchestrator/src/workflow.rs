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
//! there, never interleaved with it. A confirmed order the approval rules pick waits for a
//! person's decision first: approved, it runs; rejected (or undecided after twice the approval
//! timeout, escalated after once) it is confirmed to the sales platform as rejected.

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
    /// Waiting for a person's decision since `since_ms` (record time).
    AwaitingApproval {
        since_ms: i64,
        /// Whether the approval timeout passed once already.
        escalated: bool,
    },
    /// The revision's workflow is over.
    Ended(OrderWorkflowState),
}

/// How long the workflow waits for a step's result, and for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub step_ms: i64,
    pub approval_ms: i64,
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
    /// Why the revision was not approved, once it was not: it is confirmed as rejected.
    #[serde(default)]
    pub rejection: Option<String>,
    /// The plan this revision's subscription change moves the subscription to.
    #[serde(default)]
    pub new_plan: Option<String>,
    /// The plan the subscription was on before this revision (none when there was no
    /// subscription): what undoing its change goes back to.
    #[serde(default)]
    pub previous_plan: Option<String>,
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
    /// A subscription change was undone: publish the master record of the plan it had before,
    /// or a cancelled one when there was no subscription before.
    SubscriptionRestored(Option<String>),
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
    match workflow.phase {
        _ if incoming <= known => Arrival::Seen,
        // Nothing was done for a revision waiting for approval: the newer one replaces it.
        Phase::Ended(_) | Phase::AwaitingApproval { .. } => Arrival::Start,
        _ => Arrival::Wait,
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
    /// The plan the order's subscription is on as this workflow leaves it, if it has one.
    fn current_plan(&self) -> Option<String> {
        if !self.subscribed {
            None
        } else if self.done.contains(&OrderStepKind::ChangeSubscription) {
            self.new_plan.clone()
        } else {
            self.previous_plan.clone()
        }
    }

    /// The workflow of `order` (confirmed or cancelled), after `before` (the order's previous
    /// workflow, if any), starting at `now_ms`; `None` for an order of another status. A
    /// confirmed order with an `approval` reason waits for a decision first.
    pub(crate) fn start(
        order: &SalesOrder,
        before: Option<&Workflow>,
        approval: Option<String>,
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
            rejection: None,
            new_plan: subscription_change
                .filter(|c| *c != SubscriptionChange::Cancel)
                .and(plan_of(order).map(str::to_owned)),
            previous_plan: before.and_then(Workflow::current_plan),
        };
        if let (Kind::Fulfil, Some(reason)) = (kind, approval) {
            workflow.phase = Phase::AwaitingApproval {
                since_ms: now_ms,
                escalated: false,
            };
            let waiting = Effect::State {
                state: OrderWorkflowState::AwaitingApproval,
                step: None,
                reason: Some(reason),
            };
            return Some((workflow, vec![waiting]));
        }
        let effects = workflow.begin(first, now_ms);
        Some((workflow, effects))
    }

    /// A person's decision on `revision`: approved, the workflow runs; rejected, the order is
    /// confirmed as rejected. A decision on a revision not waiting changes nothing.
    pub(crate) fn decide(
        &mut self,
        revision: i32,
        decision: Result<(), String>,
        now_ms: i64,
    ) -> Vec<Effect> {
        if revision != self.revision || !matches!(self.phase, Phase::AwaitingApproval { .. }) {
            return Vec::new();
        }
        match decision {
            Ok(()) => {
                let first = forward(self.kind, self.subscription_change)[0];
                self.phase = Phase::Running(first);
                self.begin(first, now_ms)
            }
            Err(reason) => self.reject(reason, now_ms),
        }
    }

    /// When the workflow gives up waiting next (for a step's result or a decision).
    pub(crate) fn due_ms(&self, timeouts: Timeouts) -> Option<i64> {
        match &self.phase {
            Phase::Running(_) | Phase::Compensating { .. } => {
                Some(self.started_ms.saturating_add(timeouts.step_ms))
            }
            Phase::AwaitingApproval {
                since_ms,
                escalated,
            } => Some(since_ms.saturating_add(timeouts.approval_ms * (1 + i64::from(*escalated)))),
            Phase::Ended(_) => None,
        }
    }

    /// Since when the revision waits for approval; `None` when it does not.
    pub(crate) fn awaiting_approval_since(&self) -> Option<i64> {
        match self.phase {
            Phase::AwaitingApproval { since_ms, .. } => Some(since_ms),
            _ => None,
        }
    }

    fn reject(&mut self, reason: String, now_ms: i64) -> Vec<Effect> {
        self.rejection = Some(reason);
        self.phase = Phase::Running(OrderStepKind::ConfirmOrder);
        self.begin(OrderStepKind::ConfirmOrder, now_ms)
    }

    /// Whether `step` of `revision`'s `kind` of workflow is the step running now.
    pub(crate) fn is_running(&self, revision: i32, kind: Kind, step: OrderStepKind) -> bool {
        revision == self.revision && kind == self.kind && self.running() == Some(step)
    }

    /// The step running now, forward or compensating; none once ended.
    pub(crate) fn running(&self) -> Option<OrderStepKind> {
        match &self.phase {
            Phase::Running(step) | Phase::Compensating { step, .. } => Some(*step),
            Phase::AwaitingApproval { .. } | Phase::Ended(_) => None,
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
                let mut effects = Vec::new();
                if step == OrderStepKind::RevertSubscription {
                    self.subscribed = self.previous_plan.is_some();
                    effects.push(Effect::SubscriptionRestored(self.previous_plan.clone()));
                }
                self.done.pop();
                effects.extend(self.compensate(reason, now_ms));
                effects
            }
            (Phase::Compensating { reason, .. }, Err(refusal)) => self.end_parked(format!(
                "{reason}; undoing it failed at {}: {refusal}",
                step.name()
            )),
            (Phase::AwaitingApproval { .. } | Phase::Ended(_), _) => Vec::new(),
        }
    }

    /// Gives up waiting once [`due_ms`](Self::due_ms) has come: on a step's result (a step not
    /// answered may have acted, so a forward one is undone with the others), or on a decision
    /// (escalated the first time, rejected the second).
    pub(crate) fn time_out(&mut self, now_ms: i64, timeouts: Timeouts) -> Vec<Effect> {
        if self.due_ms(timeouts).is_none_or(|due| now_ms < due) {
            return Vec::new();
        }
        if let Phase::AwaitingApproval {
            since_ms,
            escalated,
        } = self.phase
        {
            let waited = format!("no decision within {} s", (now_ms - since_ms) / 1000);
            if escalated {
                return self.reject(waited, now_ms);
            }
            self.phase = Phase::AwaitingApproval {
                since_ms,
                escalated: true,
            };
            return vec![Effect::State {
                state: OrderWorkflowState::Escalated,
                step: None,
                reason: Some(waited),
            }];
        }
        let Some(step) = self.running() else {
            return Vec::new();
        };
        let timeout_ms = timeouts.step_ms;
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
            Phase::AwaitingApproval { .. } | Phase::Ended(_) => Vec::new(),
        }
    }

    fn begin(&mut self, step: OrderStepKind, now_ms: i64) -> Vec<Effect> {
        self.started_ms = now_ms;
        let conclusion =
            (step == OrderStepKind::ConfirmOrder).then_some(match (self.kind, &self.rejection) {
                (_, Some(_)) => OrderConclusion::Rejected,
                (Kind::Fulfil, None) => OrderConclusion::Fulfilled,
                (Kind::Cancel, None) => OrderConclusion::Cancelled,
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
                let state = match (self.kind, &self.rejection) {
                    (_, Some(_)) => OrderWorkflowState::Rejected,
                    (Kind::Fulfil, None) => OrderWorkflowState::Fulfilled,
                    (Kind::Cancel, None) => OrderWorkflowState::Cancelled,
                };
                let reason = self.rejection.clone();
                effects.extend(self.end(state, reason));
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
mod tests;
