//! The order workflow as the tests run it: a deployment of the orchestrator and the step sink
//! against a sandbox, and what the tests read back from the topics and the sandbox.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_calendar::now_micros;
use backbone_sandbox::{AppliedApi, AppliedRequest, Customer, Faults, SandboxConfig, System};
use backbone_schemas::types::{
    OrderStateChange, OrderWorkflowState, Subscription, SubscriptionStatus,
};
use backbone_schemas::WireCodec;
use backbone_testkit::{committed_total, end_offsets_total, shared_settings};

use crate::backbone::Deployment;
use crate::sinks::{eventually, read_all, registry_url, Sandbox};

pub const ORCHESTRATOR: &str = "order-orchestrator";
pub const STEP_SINK: &str = "order-step-sink";
pub const DEADLINE: Duration = Duration::from_secs(180);

/// A deployment running only the order workflow against `sandbox`, with `settings` (binary,
/// key, value) besides the binaries' local ones.
pub async fn orders_deployment(
    name: &str,
    sandbox: &Sandbox,
    settings: &[(&'static str, &str, &str)],
) -> Deployment {
    // The order workflow writes nothing to PostgreSQL.
    let mut deployment =
        Deployment::create(name, &sandbox.url, "postgres://unused", &registry_url()).await;
    for (binary, key, value) in settings {
        deployment
            .settings
            .push((*binary, (*key).to_owned(), (*value).to_owned()));
    }
    deployment.start(ORCHESTRATOR);
    deployment.start(STEP_SINK);
    deployment
}

/// The state each order's workflow is in, by its latest change (one partition holds an order,
/// read in offset order).
pub async fn final_states(
    codec: &WireCodec,
    deployment: &Deployment,
) -> BTreeMap<String, (i32, OrderWorkflowState)> {
    let changes: Vec<OrderStateChange> =
        read_all(codec, deployment.topics.name("sales.order-status")).await;
    changes
        .into_iter()
        .map(|c| (c.order_id, (c.revision, c.state)))
        .collect()
}

/// The newest record of each subscription on `master.subscriptions`: its plan and status.
pub async fn newest_subscriptions(
    codec: &WireCodec,
    deployment: &Deployment,
) -> BTreeMap<String, (String, SubscriptionStatus)> {
    let subscriptions: Vec<Subscription> =
        read_all(codec, deployment.topics.name("master.subscriptions")).await;
    subscriptions
        .into_iter()
        .map(|s| (s.subscription_id, (s.plan_id, s.status)))
        .collect()
}

/// Waits until the orchestrator and the step sink have read everything on their inputs: no
/// step is running or retrying, no result is unread.
pub async fn settled(deployment: &Deployment) {
    let settings = shared_settings();
    let inputs = [
        (ORCHESTRATOR, "sales.orders"),
        (ORCHESTRATOR, "sales.order-step-results"),
        (STEP_SINK, "sales.order-steps"),
    ];
    eventually(DEADLINE, "the order workflow to settle", || async {
        inputs
            .iter()
            .all(|(binary, topic)| {
                let topic = deployment.topics.name(topic);
                let end = end_offsets_total(&settings, topic).unwrap_or(-1);
                committed_total(&settings, &deployment.group(binary), topic) == end
            })
            .then_some(())
    })
    .await;
}

/// How often each business identity was applied through `api`: `(order, revision)` plus, for
/// subscription changes, the change, for the ERP the order status, for confirmations the
/// conclusion.
pub async fn applied(sandbox: &Sandbox, api: AppliedApi) -> BTreeMap<String, usize> {
    let requests: Vec<AppliedRequest> = sandbox.client.applied(api, None).await.expect("applied");
    let mut counts = BTreeMap::new();
    for request in requests {
        let body = &request.body;
        let detail = ["change", "status", "conclusion"]
            .iter()
            .find_map(|field| body[field].as_str())
            .map(|d| format!(":{d}"))
            .unwrap_or_default();
        let identity = format!(
            "{}:{}{detail}",
            body["order_id"].as_str().unwrap_or("?"),
            body["revision"]
        );
        *counts.entry(identity).or_default() += 1;
    }
    counts
}

/// A sandbox knowing the `customers` (id, status) of a tenant of its own, and the tenant.
pub async fn sandbox_with(customers: &[(&str, &str)]) -> (Sandbox, String) {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let tenant = format!("q2c-{}", now_micros());
    let seeded: Vec<Customer> = customers
        .iter()
        .map(|(id, status)| Customer::new(&tenant, id, status))
        .collect();
    sandbox
        .client
        .seed_customers(&seeded)
        .await
        .expect("customers");
    (sandbox, tenant)
}

/// Sets `faults` on every system an order's steps call.
pub async fn fault_every_system(sandbox: &Sandbox, faults: &Faults) {
    for system in [
        System::Crm,
        System::Platform,
        System::Billing,
        System::Erp,
        System::Sales,
    ] {
        sandbox
            .client
            .set_faults(system, faults)
            .await
            .expect("faults");
    }
}

pub fn once(identities: &[&str]) -> BTreeMap<String, usize> {
    identities.iter().map(|i| ((*i).to_owned(), 1)).collect()
}

/// Waits until order `id`'s latest state change is `end` (revision and state).
pub async fn until_state(
    codec: &WireCodec,
    deployment: &Deployment,
    id: &str,
    end: (i32, OrderWorkflowState),
) {
    eventually(
        DEADLINE,
        &format!("order {id} to reach {end:?}"),
        || async {
            let states = final_states(codec, deployment).await;
            (states.get(id) == Some(&end)).then_some(())
        },
    )
    .await;
}
