//! The workflow's transitions, each from a state a test builds by running the workflow.

use super::*;
use crate::fixtures::order;

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
    steps(&run_all(workflow, first, answer))
}

/// Runs the workflow to its end, every step answered by `answer`; every effect, in order.
fn run_all(
    workflow: &mut Workflow,
    first: Vec<Effect>,
    answer: impl Fn(OrderStepKind) -> Result<(), String>,
) -> Vec<Effect> {
    let mut all = first;
    while let Some(step) = workflow.running() {
        all.extend(workflow.result((workflow.revision, workflow.kind, step), answer(step), 0));
    }
    all
}

fn subscription_effects(effects: &[Effect]) -> Vec<Effect> {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::Subscribed(_) | Effect::SubscriptionRestored(_)))
        .cloned()
        .collect()
}

use OrderStepKind::*;

const TIMEOUTS: Timeouts = Timeouts {
    step_ms: 1_000,
    approval_ms: 5_000,
};

fn states(effects: &[Effect]) -> Vec<OrderWorkflowState> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::State { state, .. } => Some(*state),
            _ => None,
        })
        .collect()
}

fn awaiting() -> Workflow {
    let (workflow, effects) = Workflow::start(
        &order(1, OrderStatus::Confirmed, true),
        None,
        Some("total 20 EUR is at or above 10".into()),
        0,
    )
    .expect("start");
    assert_eq!(states(&effects), [OrderWorkflowState::AwaitingApproval]);
    assert!(
        steps(&effects).is_empty(),
        "nothing is done before the decision"
    );
    workflow
}

#[test]
fn an_approved_order_runs_its_steps() {
    let mut workflow = awaiting();
    assert!(
        workflow.decide(2, Ok(()), 10).is_empty(),
        "another revision"
    );
    let first = workflow.decide(1, Ok(()), 10);
    assert_eq!(
        run(&mut workflow, first, |_| Ok(())),
        [
            CheckCustomer,
            ProvisionEntitlements,
            ChangeSubscription,
            RecordOrder,
            ConfirmOrder
        ]
    );
    assert_eq!(workflow.phase, Phase::Ended(OrderWorkflowState::Fulfilled));
}

#[test]
fn a_rejected_order_is_confirmed_rejected_and_nothing_else_is_done() {
    let mut workflow = awaiting();
    let first = workflow.decide(1, Err("discount above policy".into()), 10);
    let commanded = run(&mut workflow, first.clone(), |_| Ok(()));
    assert_eq!(commanded, [ConfirmOrder]);
    assert!(first.iter().any(|e| matches!(
        e,
        Effect::Step {
            conclusion: Some(OrderConclusion::Rejected),
            ..
        }
    )));
    assert_eq!(workflow.phase, Phase::Ended(OrderWorkflowState::Rejected));
}

#[test]
fn an_undecided_order_is_escalated_then_rejected_and_a_late_approval_still_counts_between() {
    let mut workflow = awaiting();
    assert_eq!(workflow.due_ms(TIMEOUTS), Some(5_000));
    assert!(workflow.time_out(4_999, TIMEOUTS).is_empty());
    let escalated = workflow.time_out(5_000, TIMEOUTS);
    assert_eq!(states(&escalated), [OrderWorkflowState::Escalated]);
    assert_eq!(workflow.due_ms(TIMEOUTS), Some(10_000));
    let mut approved_late = workflow.clone();
    assert_eq!(
        steps(&approved_late.decide(1, Ok(()), 6_000)),
        [CheckCustomer]
    );
    let rejected = workflow.time_out(10_000, TIMEOUTS);
    assert_eq!(steps(&rejected), [ConfirmOrder]);
    assert_eq!(run(&mut workflow, rejected, |_| Ok(())), [ConfirmOrder]);
    assert_eq!(workflow.phase, Phase::Ended(OrderWorkflowState::Rejected));
}

#[test]
fn a_newer_revision_replaces_one_waiting_for_approval() {
    let workflow = awaiting();
    let amended = order(2, OrderStatus::Confirmed, true);
    assert_eq!(arrival(Some(&workflow), None, &amended), Arrival::Start);
    let cancelled = order(1, OrderStatus::Cancelled, true);
    assert_eq!(arrival(Some(&workflow), None, &cancelled), Arrival::Start);
}

#[test]
fn a_confirmed_order_runs_every_step_once_in_order() {
    let (mut workflow, first) =
        Workflow::start(&order(1, OrderStatus::Confirmed, true), None, None, 0).expect("start");
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
        Workflow::start(&order(1, OrderStatus::Confirmed, false), None, None, 0).expect("start");
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
        Workflow::start(&order(1, OrderStatus::Confirmed, true), None, None, 0).expect("start");
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
        Workflow::start(&order(1, OrderStatus::Confirmed, true), None, None, 0).expect("start");
    workflow.result((1, Kind::Fulfil, CheckCustomer), Ok(()), 10);
    assert!(workflow.time_out(999, TIMEOUTS).is_empty(), "not yet due");
    let effects = workflow.time_out(1_010, TIMEOUTS);
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
        Workflow::start(&order(1, OrderStatus::Confirmed, true), None, None, 0).expect("start");
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
        Workflow::start(&cancelled, Some(&workflow), None, 0).expect("start");
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
        Workflow::start(&order(1, OrderStatus::Confirmed, true), None, None, 0).expect("start");
    run(&mut workflow, first, |_| Ok(()));
    let cancelled = order(1, OrderStatus::Cancelled, true);
    assert_eq!(arrival(Some(&workflow), None, &cancelled), Arrival::Start);
    let (mut cancelling, first) =
        Workflow::start(&cancelled, Some(&workflow), None, 0).expect("start");
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
        Workflow::start(&order(1, OrderStatus::Confirmed, true), None, None, 0).expect("start");
    run(&mut workflow, first, |_| Ok(()));
    let amended = order(2, OrderStatus::Confirmed, true);
    assert_eq!(arrival(Some(&workflow), None, &amended), Arrival::Start);
    let (upgrade, _) = Workflow::start(&amended, Some(&workflow), None, 0).expect("start");
    assert_eq!(upgrade.subscription_change, Some(SubscriptionChange::Amend));
    for repeat in [order(1, OrderStatus::Confirmed, true), amended] {
        assert_eq!(arrival(Some(&upgrade), None, &repeat), Arrival::Seen);
    }
    assert_eq!(
        arrival(Some(&upgrade), None, &order(3, OrderStatus::Placed, true)),
        Arrival::NotActionable
    );
}

#[test]
fn undoing_a_subscription_change_puts_back_the_subscription_it_changed() {
    let erp_refuses = |step| match step {
        RecordOrder => Err("closed_period".to_owned()),
        _ => Ok(()),
    };
    // A new subscription undone: the order leaves none behind.
    let (mut created, first) =
        Workflow::start(&order(1, OrderStatus::Confirmed, true), None, None, 0).expect("start");
    let effects = run_all(&mut created, first, erp_refuses);
    assert_eq!(
        subscription_effects(&effects),
        [
            Effect::Subscribed(SubscriptionChange::Create),
            Effect::SubscriptionRestored(None)
        ]
    );
    assert!(!created.subscribed);
    let (again, _) = Workflow::start(
        &order(2, OrderStatus::Confirmed, true),
        Some(&created),
        None,
        0,
    )
    .expect("start");
    assert_eq!(again.subscription_change, Some(SubscriptionChange::Create));

    // An upgrade undone: the plan before it.
    let (mut fulfilled, first) =
        Workflow::start(&order(1, OrderStatus::Confirmed, true), None, None, 0).expect("start");
    run(&mut fulfilled, first, |_| Ok(()));
    let mut upgrade = order(2, OrderStatus::Confirmed, true);
    upgrade.lines[1].product_id = "plan-max".into();
    let (mut upgrading, first) =
        Workflow::start(&upgrade, Some(&fulfilled), None, 0).expect("start");
    let effects = run_all(&mut upgrading, first, erp_refuses);
    assert_eq!(
        subscription_effects(&effects),
        [
            Effect::Subscribed(SubscriptionChange::Amend),
            Effect::SubscriptionRestored(Some("plan-pro".into()))
        ]
    );
    assert!(upgrading.subscribed);
    // Undone again later, the subscription goes back to the same plan.
    let (mut retried, first) = Workflow::start(
        &order(3, OrderStatus::Confirmed, true),
        Some(&upgrading),
        None,
        0,
    )
    .expect("start");
    let effects = run_all(&mut retried, first, erp_refuses);
    assert_eq!(
        subscription_effects(&effects).last(),
        Some(&Effect::SubscriptionRestored(Some("plan-pro".into())))
    );
}
