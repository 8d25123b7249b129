//! Many orders of every kind through the quote-to-cash workflow while the systems fail, answers
//! are lost, a system goes down for a while and both processes are SIGKILLed over and over.
//! What each order must end as, and which effects each system must have applied, is written
//! out per kind of order below, from the scenario alone: nothing of the orchestrator computes
//! it. `make test` runs it short; `make chaos` with `BACKBONE_CHAOS_ORDERS` orders and
//! `BACKBONE_CHAOS_ORDER_KILLS` kills (`BACKBONE_CHAOS_SEED` varies the mix and the driver).

#[path = "support/backbone.rs"]
mod backbone;
#[path = "support/order_workflow.rs"]
mod order_workflow;
#[path = "support/orders.rs"]
mod orders;
#[path = "support/sinks.rs"]
mod sinks;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backbone::Deployment;
use backbone_sandbox::{AppliedApi, Faults, System};
use backbone_schemas::types::{OrderStatus, OrderWorkflowState, SalesOrder, SubscriptionStatus};
use backbone_schemas::WireCodec;
use order_workflow::{
    applied, fault_every_system, final_states, newest_subscriptions, orders_deployment,
    sandbox_with, settled, DEADLINE, ORCHESTRATOR, STEP_SINK,
};
use orders::{order, publish_orders};
use sinks::registry_url;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What happens to an order in the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Story {
    /// Confirmed, no plan: provisioned, recorded, confirmed.
    OneOff,
    /// Confirmed with a plan: the subscription created too.
    Subscribes,
    /// Then, once fulfilled, a second revision on a bigger plan.
    Upgraded,
    /// Then, once fulfilled, cancelled.
    CancelledLater,
    /// Cancelled right behind its confirmation, while its first step runs.
    CancelledAtOnce,
    /// By a customer the CRM has as inactive: parked before anything is done.
    InactiveCustomer,
    /// Refused by the product platform: nothing done, nothing to undo, parked.
    RefusedByPlatform,
    /// Refused by billing: provisioning undone, parked.
    RefusedByBilling,
    /// Refused by the ERP: provisioning and subscription undone, parked.
    RefusedByErp,
    /// Refused by the sales platform: provisioning and subscription undone (the ERP keeps its
    /// record: it has no undo), parked.
    RefusedBySales,
}

const STORIES: [Story; 10] = [
    Story::OneOff,
    Story::Subscribes,
    Story::Upgraded,
    Story::CancelledLater,
    Story::CancelledAtOnce,
    Story::InactiveCustomer,
    Story::RefusedByPlatform,
    Story::RefusedByBilling,
    Story::RefusedByErp,
    Story::RefusedBySales,
];

impl Story {
    /// The system refusing the story's order, and the value of its body it refuses.
    fn refusal(self, id: &str) -> Option<(System, String)> {
        match self {
            Story::RefusedByPlatform => Some((System::Platform, id.to_owned())),
            Story::RefusedByBilling => Some((System::Billing, id.to_owned())),
            Story::RefusedByErp => Some((System::Erp, format!("SO-{id}"))),
            Story::RefusedBySales => Some((System::Sales, id.to_owned())),
            _ => None,
        }
    }
}

/// An order's expected end: its final revision and state, and per system API the business
/// identities applied (each exactly once) beyond which nothing may be applied; `optional`
/// identities may be applied at most once (what a cancellation racing the first steps may or
/// may not have let run).
#[derive(Debug, Default)]
struct Expected {
    end: Option<(i32, OrderWorkflowState)>,
    applied: BTreeMap<AppliedApi, Vec<String>>,
    optional: BTreeMap<AppliedApi, Vec<String>>,
    /// The newest `master.subscriptions` record of `sub-<id>`: plan and status.
    subscription: Option<(&'static str, SubscriptionStatus)>,
}

impl Expected {
    fn applied(mut self, api: AppliedApi, identities: &[String]) -> Self {
        self.applied
            .entry(api)
            .or_default()
            .extend_from_slice(identities);
        self
    }

    fn optional(mut self, api: AppliedApi, identities: &[String]) -> Self {
        self.optional
            .entry(api)
            .or_default()
            .extend_from_slice(identities);
        self
    }
}

/// What `story` must leave behind for order `id`, written out from the workflow's contract in
/// docs/orchestration.md.
fn expected(id: &str, story: Story) -> Expected {
    use AppliedApi::*;
    use OrderWorkflowState::*;
    let at = |suffix: &str| vec![format!("{id}:{suffix}")];
    let fulfilled_once = |e: Expected| {
        e.applied(Entitlements, &at("1"))
            .applied(SalesOrders, &at("1:confirmed"))
            .applied(OrderConfirmations, &at("1:fulfilled"))
    };
    match story {
        Story::OneOff => fulfilled_once(Expected {
            end: Some((1, Fulfilled)),
            ..Expected::default()
        }),
        Story::Subscribes => fulfilled_once(Expected {
            end: Some((1, Fulfilled)),
            subscription: Some(("plan-pro", SubscriptionStatus::Active)),
            ..Expected::default()
        })
        .applied(SubscriptionChanges, &at("1:create")),
        Story::Upgraded => fulfilled_once(Expected {
            end: Some((2, Fulfilled)),
            subscription: Some(("plan-max", SubscriptionStatus::Active)),
            ..Expected::default()
        })
        .applied(Entitlements, &at("2"))
        .applied(
            SubscriptionChanges,
            &[at("1:create"), at("2:amend")].concat(),
        )
        .applied(SalesOrders, &at("2:confirmed"))
        .applied(OrderConfirmations, &at("2:fulfilled")),
        Story::CancelledLater => fulfilled_once(Expected {
            end: Some((1, Cancelled)),
            subscription: Some(("plan-pro", SubscriptionStatus::Cancelled)),
            ..Expected::default()
        })
        .applied(EntitlementRevocations, &at("1"))
        .applied(
            SubscriptionChanges,
            &[at("1:create"), at("1:cancel")].concat(),
        )
        .applied(SalesOrders, &at("1:cancelled"))
        .applied(OrderConfirmations, &at("1:cancelled")),
        // The cancellation is read before the customer check answers, so the fulfilment stops
        // after it; only a restart replaying the order and a result in another order may let a
        // provisioning (or even the subscription) through first, which the cancellation then
        // undoes. The revocation runs either way.
        Story::CancelledAtOnce => Expected {
            end: Some((1, Cancelled)),
            ..Expected::default()
        }
        .applied(EntitlementRevocations, &at("1"))
        .applied(SalesOrders, &at("1:cancelled"))
        .applied(OrderConfirmations, &at("1:cancelled"))
        .optional(Entitlements, &at("1"))
        .optional(
            SubscriptionChanges,
            &[at("1:create"), at("1:cancel")].concat(),
        ),
        Story::InactiveCustomer | Story::RefusedByPlatform => Expected {
            end: Some((1, Parked)),
            ..Expected::default()
        },
        Story::RefusedByBilling => Expected {
            end: Some((1, Parked)),
            ..Expected::default()
        }
        .applied(Entitlements, &at("1"))
        .applied(EntitlementRevocations, &at("1")),
        Story::RefusedBySales => Expected {
            end: Some((1, Parked)),
            subscription: Some(("plan-pro", SubscriptionStatus::Cancelled)),
            ..Expected::default()
        }
        .applied(Entitlements, &at("1"))
        .applied(EntitlementRevocations, &at("1"))
        .applied(
            SubscriptionChanges,
            &[at("1:create"), at("1:revert")].concat(),
        )
        .applied(SalesOrders, &at("1:confirmed")),
        Story::RefusedByErp => Expected {
            end: Some((1, Parked)),
            subscription: Some(("plan-pro", SubscriptionStatus::Cancelled)),
            ..Expected::default()
        }
        .applied(Entitlements, &at("1"))
        .applied(EntitlementRevocations, &at("1"))
        .applied(
            SubscriptionChanges,
            &[at("1:create"), at("1:revert")].concat(),
        ),
    }
}

/// The first revision of `story`'s order `id` of `tenant`, and what follows it at once.
fn first_orders(tenant: &str, id: &str, story: Story) -> Vec<SalesOrder> {
    let confirmed = |customer: &str, plan: Option<&str>| {
        order(tenant, id, 1, OrderStatus::Confirmed, customer, plan)
    };
    match story {
        Story::OneOff => vec![confirmed("c-1", None)],
        Story::InactiveCustomer => vec![confirmed("c-gone", Some("plan-pro"))],
        Story::CancelledAtOnce => vec![
            confirmed("c-1", Some("plan-pro")),
            order(
                tenant,
                id,
                1,
                OrderStatus::Cancelled,
                "c-1",
                Some("plan-pro"),
            ),
        ],
        _ => vec![confirmed("c-1", Some("plan-pro"))],
    }
}

/// What `story` publishes once its first revision ended.
fn later_orders(tenant: &str, id: &str, story: Story) -> Vec<SalesOrder> {
    match story {
        Story::Upgraded => {
            let mut upgrade = order(
                tenant,
                id,
                2,
                OrderStatus::Confirmed,
                "c-1",
                Some("plan-max"),
            );
            upgrade.metadata.event_id = format!("{id}@2");
            vec![upgrade]
        }
        Story::CancelledLater => vec![order(
            tenant,
            id,
            1,
            OrderStatus::Cancelled,
            "c-1",
            Some("plan-pro"),
        )],
        _ => Vec::new(),
    }
}

/// The end of `story`'s first part: where a later revision waits for it.
fn first_end(story: Story) -> (i32, OrderWorkflowState) {
    match story {
        Story::Upgraded | Story::CancelledLater => (1, OrderWorkflowState::Fulfilled),
        other => expected("-", other).end.expect("every story ends"),
    }
}

/// SIGKILLs and restarts what the driver picks, and sometimes takes a system down for a few
/// seconds; tells what it did.
struct Driver {
    rng: fastrand::Rng,
    background: Faults,
    kills: BTreeMap<&'static str, u32>,
    outages: BTreeMap<String, u32>,
}

impl Driver {
    async fn strike(&mut self, deployment: &mut Deployment, sandbox: &sinks::Sandbox) {
        let victims: &[&'static str] = match self.rng.u8(..3) {
            0 => &[ORCHESTRATOR],
            1 => &[STEP_SINK],
            _ => &[ORCHESTRATOR, STEP_SINK],
        };
        for victim in victims {
            deployment.kill(victim);
            *self.kills.entry(victim).or_default() += 1;
        }
        for victim in victims {
            deployment.start(victim);
        }
        if self.rng.bool() {
            let systems = [
                System::Crm,
                System::Platform,
                System::Billing,
                System::Erp,
                System::Sales,
            ];
            let system = systems[self.rng.usize(..systems.len())];
            let outage = Faults {
                outage_seconds: 3,
                ..self.background
            };
            sandbox
                .client
                .set_faults(system, &outage)
                .await
                .expect("outage");
            *self.outages.entry(format!("{system:?}")).or_default() += 1;
        }
    }
}

/// Every effect the sandbox applied, through every order API.
async fn applied_total(sandbox: &sinks::Sandbox) -> usize {
    let mut total = 0;
    for api in AppliedApi::ALL {
        total += sandbox
            .client
            .applied(api, None)
            .await
            .map(|a| a.len())
            .unwrap_or(0);
    }
    total
}

/// Polls until every order in `ends` is at its end, striking `kills` times on the way, spread
/// over the effects the sandbox applies (`per_kill` apart).
async fn drive_until(
    what: &str,
    codec: &WireCodec,
    deployment: &mut Deployment,
    sandbox: &sinks::Sandbox,
    driver: &mut Driver,
    ends: &BTreeMap<String, (i32, OrderWorkflowState)>,
    (kills, per_kill): (u64, usize),
) {
    let deadline = Instant::now() + DEADLINE * 2;
    let mut struck = 0;
    let mut next = applied_total(sandbox).await + per_kill;
    loop {
        let states = final_states(codec, deployment).await;
        let missing: Vec<&String> = ends
            .iter()
            .filter(|(id, end)| states.get(*id) != Some(end))
            .map(|(id, _)| id)
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} order(s) never reached their end, e.g. {:?}: {:?}",
            missing.len(),
            missing[0],
            states.get(missing[0])
        );
        let done = applied_total(sandbox).await;
        if struck < kills && done >= next {
            driver.strike(deployment, sandbox).await;
            struck += 1;
            next = done + per_kill;
        }
        // A poll interval, not a synchronisation: the loop re-reads the condition.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn many_orders_through_outages_and_kills_end_as_their_stories_say() {
    let count = usize::try_from(setting("BACKBONE_CHAOS_ORDERS", 35)).expect("orders");
    let kills = setting("BACKBONE_CHAOS_ORDER_KILLS", 4);
    let seed = setting("BACKBONE_CHAOS_SEED", 42);
    let mut rng = fastrand::Rng::with_seed(seed);
    let (sandbox, tenant) = sandbox_with(&[("c-1", "active"), ("c-gone", "inactive")]).await;
    // Answers come 100 ms after a call is applied, so kills land between the two too.
    let background = Faults {
        error_rate: 0.1,
        lost_response_rate: 0.1,
        throttle_rate: 0.05,
        retry_after_seconds: 1,
        answer_delay_ms: 100,
        ..Faults::default()
    };
    fault_every_system(&sandbox, &background).await;
    let stories: BTreeMap<String, Story> = (0..count)
        .map(|n| {
            let story = if n < STORIES.len() {
                STORIES[n]
            } else {
                STORIES[rng.usize(..STORIES.len())]
            };
            (format!("o-{n:04}"), story)
        })
        .collect();
    let mut refused: BTreeMap<System, Vec<String>> = BTreeMap::new();
    for (id, story) in &stories {
        if let Some((system, value)) = story.refusal(id) {
            refused.entry(system).or_default().push(value);
        }
    }
    for (system, values) in &refused {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        sandbox
            .client
            .refuse(*system, &values)
            .await
            .expect("refuse");
    }

    let codec = WireCodec::new(registry_url().as_str());
    let mut deployment = orders_deployment("orders-chaos", &sandbox, &[]).await;
    let mut driver = Driver {
        rng,
        background,
        kills: BTreeMap::new(),
        outages: BTreeMap::new(),
    };
    // Each order does about five things: strike every so many of them.
    let per_kill = (count * 5 / usize::try_from(kills + 1).unwrap_or(1)).max(1);
    let mut first: Vec<SalesOrder> = Vec::new();
    for (id, story) in &stories {
        first.extend(first_orders(&tenant, id, *story));
    }
    publish_orders(&deployment, &codec, &first).await;
    let first_ends = stories
        .iter()
        .map(|(id, story)| (id.clone(), first_end(*story)))
        .collect();
    drive_until(
        "the first revisions",
        &codec,
        &mut deployment,
        &sandbox,
        &mut driver,
        &first_ends,
        (kills - kills / 2, per_kill),
    )
    .await;

    let mut later: Vec<SalesOrder> = Vec::new();
    for (id, story) in &stories {
        later.extend(later_orders(&tenant, id, *story));
    }
    publish_orders(&deployment, &codec, &later).await;
    let expectations: BTreeMap<String, Expected> = stories
        .iter()
        .map(|(id, story)| (id.clone(), expected(id, *story)))
        .collect();
    let ends = expectations
        .iter()
        .map(|(id, e)| (id.clone(), e.end.expect("an end")))
        .collect();
    drive_until(
        "the later revisions",
        &codec,
        &mut deployment,
        &sandbox,
        &mut driver,
        &ends,
        (
            kills / 2,
            (later.len() * 4 / usize::try_from(kills / 2 + 1).unwrap_or(1)).max(1),
        ),
    )
    .await;
    settled(&deployment).await;
    eprintln!(
        "orders chaos (seed {seed}): {count} orders, kills {:?}, outages {:?}",
        driver.kills, driver.outages
    );

    // Every identity each system applied, against the stories.
    let mut wrong = Vec::new();
    for api in AppliedApi::ALL {
        let mut counts = applied(&sandbox, api).await;
        for (id, expected) in &expectations {
            for identity in expected.applied.get(&api).into_iter().flatten() {
                let n = counts.remove(identity).unwrap_or(0);
                if n != 1 {
                    wrong.push(format!(
                        "{api:?} {identity}: applied {n} times, once expected ({id})"
                    ));
                }
            }
            for identity in expected.optional.get(&api).into_iter().flatten() {
                let n = counts.remove(identity).unwrap_or(0);
                if n > 1 {
                    wrong.push(format!(
                        "{api:?} {identity}: applied {n} times, at most once ({id})"
                    ));
                }
            }
        }
        for (identity, n) in counts {
            wrong.push(format!(
                "{api:?} {identity}: applied {n} times, never expected"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong effect(s):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // A cancellation that let the subscription be created cancelled it too.
    let subscription_changes = applied(&sandbox, AppliedApi::SubscriptionChanges).await;
    for (id, story) in &stories {
        if *story == Story::CancelledAtOnce {
            let created = subscription_changes.contains_key(&format!("{id}:1:create"));
            let cancelled = subscription_changes.contains_key(&format!("{id}:1:cancel"));
            assert_eq!(
                created, cancelled,
                "{id}: a subscription left behind or cancelled unmade"
            );
        }
    }

    let subscriptions = newest_subscriptions(&codec, &deployment).await;
    for (id, story) in &stories {
        let found = subscriptions.get(&format!("sub-{id}"));
        let found = found.map(|(plan, status)| (plan.as_str(), *status));
        match (expected(id, *story).subscription, *story) {
            (None, Story::CancelledAtOnce) => assert!(
                found.is_none_or(|f| f == ("plan-pro", SubscriptionStatus::Cancelled)),
                "{id}: {found:?}"
            ),
            (expected, _) => assert_eq!(found, expected, "{id} ({story:?})"),
        }
    }
}
