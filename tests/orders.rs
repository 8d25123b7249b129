//! The quote-to-cash workflow on the test broker: the order orchestrator and the order step
//! sink as processes, the sandbox's CRM, product platform, billing, ERP and sales platform over
//! HTTP. What each system did is counted at the sandbox per business identity (order,
//! revision, and what the step did), never per idempotency key, against expectations written
//! out from the scenario.

#[path = "support/backbone.rs"]
mod backbone;
#[path = "support/order_workflow.rs"]
mod order_workflow;
#[path = "support/orders.rs"]
mod orders;
#[path = "support/sinks.rs"]
mod sinks;

use std::collections::BTreeMap;

use backbone::Deployment;
use backbone_calendar::now_micros;
use backbone_sandbox::{AppliedApi, AppliedRequest, Faults, SandboxConfig, System};
use backbone_schemas::types::{
    OrderStateChange, OrderStatus, OrderWorkflowState, SalesOrder, SubscriptionStatus,
};
use backbone_schemas::WireCodec;
use order_workflow::{
    applied, fault_every_system, final_states, newest_subscriptions, once, orders_deployment,
    sandbox_with, settled, until_state, DEADLINE, ORCHESTRATOR, STEP_SINK,
};
use orders::{order, publish_orders, subscribing};
use sinks::{eventually, read_all, registry_url, Sandbox};

#[tokio::test(flavor = "multi_thread")]
async fn orders_end_fulfilled_upgraded_or_cancelled_through_faults_and_kills_each_effect_once() {
    let (sandbox, tenant) = sandbox_with(&[("c-1", "active")]).await;
    // Every system drops, loses and throttles calls: each step is retried, some after they
    // were applied (a lost answer), under the same key.
    let faults = Faults {
        error_rate: 0.15,
        lost_response_rate: 0.15,
        throttle_rate: 0.1,
        retry_after_seconds: 1,
        ..Faults::default()
    };
    fault_every_system(&sandbox, &faults).await;
    let codec = WireCodec::new(registry_url().as_str());
    let mut deployment = orders_deployment("orders", &sandbox, &[]).await;
    let subscribers: Vec<String> = (1..=6).map(|n| format!("o-{n}")).collect();
    let mut first: Vec<SalesOrder> = subscribers
        .iter()
        .map(|id| {
            order(
                &tenant,
                id,
                1,
                OrderStatus::Confirmed,
                "c-1",
                Some("plan-pro"),
            )
        })
        .collect();
    for id in ["o-7", "o-8"] {
        first.push(order(&tenant, id, 1, OrderStatus::Confirmed, "c-1", None));
    }
    // Placed, not confirmed: nothing to do yet.
    first.push(order(
        &tenant,
        "o-9",
        1,
        OrderStatus::Placed,
        "c-1",
        Some("plan-pro"),
    ));
    publish_orders(&deployment, &codec, &first).await;

    // Both crash mid-way, once some steps were applied, and start again.
    eventually(DEADLINE, "some entitlements provisioned", || async {
        (sandbox
            .client
            .applied(AppliedApi::Entitlements, None)
            .await
            .ok()?
            .len()
            >= 3)
            .then_some(())
    })
    .await;
    deployment.kill(ORCHESTRATOR);
    deployment.kill(STEP_SINK);
    deployment.start(STEP_SINK);
    deployment.start(ORCHESTRATOR);

    let fulfilled = |states: &BTreeMap<String, (i32, OrderWorkflowState)>, id: &str, revision| {
        states.get(id) == Some(&(revision, OrderWorkflowState::Fulfilled))
    };
    eventually(DEADLINE, "the first orders fulfilled", || async {
        let states = final_states(&codec, &deployment).await;
        (1..=8)
            .all(|n| fulfilled(&states, &format!("o-{n}"), 1))
            .then_some(())
    })
    .await;
    // An upgrade of o-1, a cancellation of o-2, and o-3 again as it was (a repeat).
    let mut upgrade = order(
        &tenant,
        "o-1",
        2,
        OrderStatus::Confirmed,
        "c-1",
        Some("plan-max"),
    );
    upgrade.metadata.event_id = "o-1@2".to_owned();
    publish_orders(
        &deployment,
        &codec,
        &[
            upgrade,
            order(
                &tenant,
                "o-2",
                1,
                OrderStatus::Cancelled,
                "c-1",
                Some("plan-pro"),
            ),
            subscribing(&tenant, "o-3"),
        ],
    )
    .await;
    eventually(
        DEADLINE,
        "the upgrade and the cancellation to end",
        || async {
            let states = final_states(&codec, &deployment).await;
            (fulfilled(&states, "o-1", 2)
                && states.get("o-2") == Some(&(1, OrderWorkflowState::Cancelled)))
            .then_some(())
        },
    )
    .await;
    settled(&deployment).await;

    let states = final_states(&codec, &deployment).await;
    let mut expected: BTreeMap<String, (i32, OrderWorkflowState)> = (3..=8)
        .map(|n| (format!("o-{n}"), (1, OrderWorkflowState::Fulfilled)))
        .collect();
    expected.insert("o-1".into(), (2, OrderWorkflowState::Fulfilled));
    expected.insert("o-2".into(), (1, OrderWorkflowState::Cancelled));
    assert_eq!(
        states, expected,
        "o-9 was never confirmed and has no workflow"
    );

    let all: Vec<String> = (1..=8).map(|n| format!("o-{n}:1")).collect();
    let mut provisioned: Vec<&str> = all.iter().map(String::as_str).collect();
    provisioned.push("o-1:2");
    assert_eq!(
        applied(&sandbox, AppliedApi::Entitlements).await,
        once(&provisioned)
    );
    assert_eq!(
        applied(&sandbox, AppliedApi::EntitlementRevocations).await,
        once(&["o-2:1"])
    );
    assert_eq!(
        applied(&sandbox, AppliedApi::SubscriptionChanges).await,
        once(&[
            "o-1:1:create",
            "o-1:2:amend",
            "o-2:1:create",
            "o-2:1:cancel",
            "o-3:1:create",
            "o-4:1:create",
            "o-5:1:create",
            "o-6:1:create",
        ])
    );
    let mut recorded: Vec<String> = (1..=8).map(|n| format!("o-{n}:1:confirmed")).collect();
    recorded.extend(["o-1:2:confirmed".to_owned(), "o-2:1:cancelled".to_owned()]);
    let recorded: Vec<&str> = recorded.iter().map(String::as_str).collect();
    assert_eq!(
        applied(&sandbox, AppliedApi::SalesOrders).await,
        once(&recorded)
    );
    let mut confirmed: Vec<String> = (1..=8).map(|n| format!("o-{n}:1:fulfilled")).collect();
    confirmed.extend(["o-1:2:fulfilled".to_owned(), "o-2:1:cancelled".to_owned()]);
    let confirmed: Vec<&str> = confirmed.iter().map(String::as_str).collect();
    assert_eq!(
        applied(&sandbox, AppliedApi::OrderConfirmations).await,
        once(&confirmed)
    );

    // Usage rating follows the subscriptions: the newest record of each.
    let newest = newest_subscriptions(&codec, &deployment).await;
    let mut expected: BTreeMap<String, (String, SubscriptionStatus)> = (3..=6)
        .map(|n| {
            (
                format!("sub-o-{n}"),
                ("plan-pro".to_owned(), SubscriptionStatus::Active),
            )
        })
        .collect();
    expected.insert(
        "sub-o-1".into(),
        ("plan-max".into(), SubscriptionStatus::Active),
    );
    expected.insert(
        "sub-o-2".into(),
        ("plan-pro".into(), SubscriptionStatus::Cancelled),
    );
    assert_eq!(newest, expected);
    let stats = sandbox.client.stats().await.expect("stats");
    assert!(
        stats.to_string().contains("504"),
        "answers were lost, so steps were retried after they were applied: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_refused_for_good_undoes_what_the_order_did_and_parks_it_with_the_reason() {
    let (sandbox, tenant) = sandbox_with(&[("c-1", "active"), ("c-gone", "inactive")]).await;
    // The ERP refuses this order number: a business error in a 200.
    sandbox
        .client
        .refuse(System::Erp, &["SO-o-refused"])
        .await
        .expect("refuse");
    let codec = WireCodec::new(registry_url().as_str());
    let deployment = orders_deployment("orders-refused", &sandbox, &[]).await;
    publish_orders(
        &deployment,
        &codec,
        &[
            subscribing(&tenant, "o-refused"),
            order(
                &tenant,
                "o-inactive",
                1,
                OrderStatus::Confirmed,
                "c-gone",
                Some("plan-pro"),
            ),
            subscribing(&tenant, "o-fine"),
        ],
    )
    .await;
    eventually(DEADLINE, "every order to end", || async {
        let states = final_states(&codec, &deployment).await;
        (states.get("o-refused") == Some(&(1, OrderWorkflowState::Parked))
            && states.get("o-inactive") == Some(&(1, OrderWorkflowState::Parked))
            && states.get("o-fine") == Some(&(1, OrderWorkflowState::Fulfilled)))
        .then_some(())
    })
    .await;
    settled(&deployment).await;

    let parked: Vec<OrderStateChange> =
        read_all(&codec, deployment.topics.name("sales.order-exceptions")).await;
    let reasons: BTreeMap<String, String> = parked
        .into_iter()
        .map(|p| (p.order_id, p.reason.unwrap_or_default()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons["o-refused"].starts_with("record_order: refused"),
        "{reasons:?}"
    );
    assert!(
        reasons["o-inactive"].starts_with("check_customer: customer_not_active"),
        "{reasons:?}"
    );
    // o-refused was provisioned and subscribed, then both undone; o-inactive did nothing.
    assert_eq!(
        applied(&sandbox, AppliedApi::Entitlements).await,
        once(&["o-fine:1", "o-refused:1"])
    );
    assert_eq!(
        applied(&sandbox, AppliedApi::EntitlementRevocations).await,
        once(&["o-refused:1"])
    );
    assert_eq!(
        applied(&sandbox, AppliedApi::SubscriptionChanges).await,
        once(&[
            "o-fine:1:create",
            "o-refused:1:create",
            "o-refused:1:revert"
        ])
    );
    assert_eq!(
        applied(&sandbox, AppliedApi::SalesOrders).await,
        once(&["o-fine:1:confirmed"])
    );
    assert_eq!(
        applied(&sandbox, AppliedApi::OrderConfirmations).await,
        once(&["o-fine:1:fulfilled"])
    );
    // Usage is not rated under the subscription billing undid.
    assert_eq!(
        newest_subscriptions(&codec, &deployment).await,
        BTreeMap::from([
            (
                "sub-o-fine".to_owned(),
                ("plan-pro".to_owned(), SubscriptionStatus::Active)
            ),
            (
                "sub-o-refused".to_owned(),
                ("plan-pro".to_owned(), SubscriptionStatus::Cancelled)
            ),
        ])
    );
}

/// `replay orders` with `args` against `deployment`'s topics: its exit code and output.
async fn replay_orders(deployment: &Deployment, args: &[&str]) -> (i32, String) {
    let output = tokio::process::Command::new(backbone::workspace_binary("replay"))
        .args(["--bootstrap-servers", &deployment.kafka.bootstrap_servers])
        .args(["--registry-url", &registry_url(), "orders"])
        .args(args)
        .args([
            "--status-topic",
            deployment.topics.name("sales.order-status"),
        ])
        .args([
            "--approvals-topic",
            deployment.topics.name("sales.order-approvals"),
        ])
        .kill_on_drop(true)
        .output()
        .await
        .expect("replay starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// `replay orders serve` against `deployment`'s topics, with one approver, `tester`: the
/// process (killed when dropped), its base URL and the approver's token.
async fn approvals_api(deployment: &Deployment) -> (tokio::process::Child, String, String) {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncBufReadExt;
    let token = format!("{:032x}", fastrand::u128(..));
    let file = std::env::temp_dir().join(format!(
        "approvers-{}",
        deployment.topics.name("sales.order-status")
    ));
    std::fs::write(&file, format!("tester {token}\n")).expect("approvers file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("mode");
    let mut child = tokio::process::Command::new(backbone::workspace_binary("replay"))
        .args(["--bootstrap-servers", &deployment.kafka.bootstrap_servers])
        .args(["--registry-url", &registry_url(), "orders", "serve"])
        .args(["--listen", "127.0.0.1:0"])
        .arg("--approvers-file")
        .arg(&file)
        .args([
            "--status-topic",
            deployment.topics.name("sales.order-status"),
        ])
        .args([
            "--approvals-topic",
            deployment.topics.name("sales.order-approvals"),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("replay orders serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the API to say where it serves")
        .expect("stdout")
        .expect("a line");
    let url = first
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    (child, url, token)
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_over_the_limit_wait_for_a_decision_and_run_when_approved_only() {
    let (sandbox, tenant) = sandbox_with(&[("c-1", "active")]).await;
    let codec = WireCodec::new(registry_url().as_str());
    let deployment = orders_deployment(
        "orders-approvals",
        &sandbox,
        &[
            (ORCHESTRATOR, "processor.approval.min_total", "1000"),
            (ORCHESTRATOR, "processor.approval.timeout", "15s"),
        ],
    )
    .await;
    let big = |id: &str| {
        let mut order = order(
            &tenant,
            id,
            1,
            OrderStatus::Confirmed,
            "c-1",
            Some("plan-pro"),
        );
        order.total_amount = "5000".parse().expect("total");
        order
    };
    let mut small = subscribing(&tenant, "o-small");
    small.total_amount = "999.99".parse().expect("total");
    publish_orders(
        &deployment,
        &codec,
        &[
            big("o-approved"),
            big("o-rejected"),
            big("o-undecided"),
            small,
        ],
    )
    .await;
    let awaiting = (1, OrderWorkflowState::AwaitingApproval);
    eventually(
        DEADLINE,
        "the big orders to wait and the small one to run",
        || async {
            let states = final_states(&codec, &deployment).await;
            (states.get("o-approved") == Some(&awaiting)
                && states.get("o-rejected") == Some(&awaiting)
                && states.get("o-small") == Some(&(1, OrderWorkflowState::Fulfilled)))
            .then_some(())
        },
    )
    .await;
    let (code, listed) =
        replay_orders(&deployment, &["pending", "--tenant", &tenant, "--json"]).await;
    assert_eq!(code, 0, "{listed}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).expect("JSON");
    let ids: Vec<&str> = listed
        .iter()
        .filter_map(|w| w["order_id"].as_str())
        .collect();
    for id in ["o-approved", "o-rejected"] {
        assert!(ids.contains(&id), "{id} pending: {listed:?}");
    }
    assert!(!ids.contains(&"o-small"), "{listed:?}");

    let order_of = |id: &str| format!("{tenant}:{id}");
    // A decision on a revision that is not waiting is refused, naming the flag.
    let (code, said) = replay_orders(
        &deployment,
        &[
            "approve",
            "--order",
            &order_of("o-approved"),
            "--revision",
            "2",
            "--by",
            "tester",
        ],
    )
    .await;
    assert_eq!(code, 2, "{said}");
    assert!(
        said.contains("revision 2 is not waiting")
            && said.contains("the revision waiting for approval is 1"),
        "{said}"
    );
    let (code, said) = replay_orders(
        &deployment,
        &[
            "reject",
            "--order",
            &order_of("o-rejected"),
            "--revision",
            "1",
            "--by",
            "tester",
        ],
    )
    .await;
    assert_eq!(code, 2, "a rejection without a reason: {said}");
    let (code, said) = replay_orders(
        &deployment,
        &[
            "approve",
            "--order",
            &order_of("o-approved"),
            "--revision",
            "1",
            "--by",
            "tester",
        ],
    )
    .await;
    assert_eq!(code, 0, "{said}");

    // The same queue over HTTP: only an approver's token opens it, and the approver it
    // belongs to is who decided.
    let (_api, url, token) = approvals_api(&deployment).await;
    let http = reqwest::Client::new();
    let pending_url = format!("{url}/v1/orders/pending?tenant={tenant}");
    let anonymous = http.get(&pending_url).send().await.expect("answer");
    assert_eq!(anonymous.status(), 401);
    let forged = http
        .get(&pending_url)
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .expect("answer");
    assert_eq!(forged.status(), 401);
    let listed: Vec<serde_json::Value> = http
        .get(&pending_url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("JSON");
    let ids: Vec<&str> = listed
        .iter()
        .filter_map(|w| w["order_id"].as_str())
        .collect();
    assert!(ids.contains(&"o-rejected"), "{listed:?}");
    let reject = |revision: i32, reason: Option<&str>| {
        http.post(format!("{url}/v1/orders/{tenant}/o-rejected/reject"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "revision": revision, "reason": reason }))
            .send()
    };
    let unexplained = reject(1, None).await.expect("answer");
    assert_eq!(unexplained.status(), 422);
    let not_waiting = reject(2, Some("wrong revision")).await.expect("answer");
    assert_eq!(not_waiting.status(), 409);
    let said = not_waiting.text().await.expect("body");
    assert!(
        said.contains("the revision waiting for approval is 1"),
        "{said}"
    );
    let rejected = reject(1, Some("discount above policy"))
        .await
        .expect("answer");
    let status = rejected.status();
    let said = rejected.text().await.expect("body");
    assert_eq!(status, 200, "{said}");
    assert!(said.contains("\"by\":\"tester\""), "{said}");
    eventually(DEADLINE, "every order to end", || async {
        let states = final_states(&codec, &deployment).await;
        (states.get("o-approved") == Some(&(1, OrderWorkflowState::Fulfilled))
            && states.get("o-rejected") == Some(&(1, OrderWorkflowState::Rejected))
            && states.get("o-undecided") == Some(&(1, OrderWorkflowState::Rejected)))
        .then_some(())
    })
    .await;
    settled(&deployment).await;

    let changes: Vec<OrderStateChange> =
        read_all(&codec, deployment.topics.name("sales.order-status")).await;
    let undecided: Vec<OrderWorkflowState> = changes
        .iter()
        .filter(|c| c.order_id == "o-undecided")
        .map(|c| c.state)
        .collect();
    assert_eq!(
        undecided,
        [
            OrderWorkflowState::AwaitingApproval,
            OrderWorkflowState::Escalated,
            OrderWorkflowState::InProgress,
            OrderWorkflowState::Rejected
        ],
        "escalated after one timeout, rejected (confirm_order running) after two"
    );
    let rejected_reason = changes
        .iter()
        .find(|c| c.order_id == "o-rejected" && c.state == OrderWorkflowState::Rejected)
        .and_then(|c| c.reason.clone())
        .unwrap_or_default();
    assert!(
        rejected_reason.contains("by tester: discount above policy"),
        "{rejected_reason}"
    );
    // Only the approved and the small order were provisioned; every order heard how it ended.
    assert_eq!(
        applied(&sandbox, AppliedApi::Entitlements).await,
        once(&["o-approved:1", "o-small:1"])
    );
    assert_eq!(
        applied(&sandbox, AppliedApi::OrderConfirmations).await,
        once(&[
            "o-approved:1:fulfilled",
            "o-rejected:1:rejected",
            "o-small:1:fulfilled",
            "o-undecided:1:rejected"
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_cancelled_while_its_provisioning_is_retried_is_undone_once_it_is_provisioned() {
    let (sandbox, tenant) = sandbox_with(&[("c-1", "active")]).await;
    // The product platform is down: provisioning is retried until it is back.
    let down = Faults {
        outage_seconds: 600,
        ..Faults::default()
    };
    sandbox
        .client
        .set_faults(System::Platform, &down)
        .await
        .expect("outage");
    let codec = WireCodec::new(registry_url().as_str());
    let deployment = orders_deployment("orders-cancelled", &sandbox, &[]).await;
    publish_orders(&deployment, &codec, &[subscribing(&tenant, "o-1")]).await;
    let provisioning = (1, OrderWorkflowState::InProgress);
    eventually(DEADLINE, "provisioning to be retried", || async {
        let states = final_states(&codec, &deployment).await;
        let retried = sandbox.answered("platform", 503).await >= 2;
        (states.get("o-1") == Some(&provisioning) && retried).then_some(())
    })
    .await;
    publish_orders(
        &deployment,
        &codec,
        &[order(
            &tenant,
            "o-1",
            1,
            OrderStatus::Cancelled,
            "c-1",
            Some("plan-pro"),
        )],
    )
    .await;
    sandbox
        .client
        .clear_faults(System::Platform)
        .await
        .expect("the platform is back");
    until_state(
        &codec,
        &deployment,
        "o-1",
        (1, OrderWorkflowState::Cancelled),
    )
    .await;
    settled(&deployment).await;

    // Provisioned once (its retry landed), then revoked once; the subscription was never
    // created, so there is nothing to cancel; the ERP and the sales platform hear of the
    // cancellation only.
    assert_eq!(
        applied(&sandbox, AppliedApi::Entitlements).await,
        once(&["o-1:1"])
    );
    assert_eq!(
        applied(&sandbox, AppliedApi::EntitlementRevocations).await,
        once(&["o-1:1"])
    );
    let first = |requests: Vec<AppliedRequest>| requests.first().map(|r| r.sequence);
    let provisioned = first(
        sandbox
            .client
            .applied(AppliedApi::Entitlements, None)
            .await
            .expect("applied"),
    );
    let revoked = first(
        sandbox
            .client
            .applied(AppliedApi::EntitlementRevocations, None)
            .await
            .expect("applied"),
    );
    assert!(
        provisioned < revoked,
        "the revocation came after the provisioning it undoes"
    );
    assert!(applied(&sandbox, AppliedApi::SubscriptionChanges)
        .await
        .is_empty());
    assert_eq!(
        applied(&sandbox, AppliedApi::SalesOrders).await,
        once(&["o-1:1:cancelled"])
    );
    assert_eq!(
        applied(&sandbox, AppliedApi::OrderConfirmations).await,
        once(&["o-1:1:cancelled"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn both_processes_killed_as_each_step_is_applied_and_before_it_is_answered_apply_each_once() {
    let (sandbox, tenant) = sandbox_with(&[("c-1", "active")]).await;
    // Every call is answered a second after it is applied: a kill in that second leaves a step
    // the system did but the sink never heard of, which the restarted sink sends again.
    let late = Faults {
        answer_delay_ms: 1_000,
        ..Faults::default()
    };
    fault_every_system(&sandbox, &late).await;
    let codec = WireCodec::new(registry_url().as_str());
    let mut deployment = orders_deployment("orders-kills", &sandbox, &[]).await;
    publish_orders(&deployment, &codec, &[subscribing(&tenant, "o-1")]).await;
    let status = deployment.topics.name("sales.order-status").to_owned();
    // The customer check is a read: the kill lands as it starts. Each later step is killed
    // as soon as its system has applied it.
    eventually(DEADLINE, "check_customer to start", || async {
        let changes: Vec<OrderStateChange> = read_all(&codec, &status).await;
        changes
            .iter()
            .any(|c| c.step.as_deref() == Some("check_customer"))
            .then_some(())
    })
    .await;
    deployment.kill(ORCHESTRATOR);
    deployment.kill(STEP_SINK);
    deployment.start(STEP_SINK);
    deployment.start(ORCHESTRATOR);
    for api in [
        AppliedApi::Entitlements,
        AppliedApi::SubscriptionChanges,
        AppliedApi::SalesOrders,
        AppliedApi::OrderConfirmations,
    ] {
        eventually(DEADLINE, &format!("{api:?} to be applied"), || async {
            let requests = sandbox.client.applied(api, None).await.ok()?;
            (!requests.is_empty()).then_some(())
        })
        .await;
        deployment.kill(STEP_SINK);
        deployment.kill(ORCHESTRATOR);
        deployment.start(STEP_SINK);
        deployment.start(ORCHESTRATOR);
    }
    until_state(
        &codec,
        &deployment,
        "o-1",
        (1, OrderWorkflowState::Fulfilled),
    )
    .await;
    settled(&deployment).await;

    assert_eq!(
        applied(&sandbox, AppliedApi::Entitlements).await,
        once(&["o-1:1"])
    );
    assert_eq!(
        applied(&sandbox, AppliedApi::SubscriptionChanges).await,
        once(&["o-1:1:create"])
    );
    assert_eq!(
        applied(&sandbox, AppliedApi::SalesOrders).await,
        once(&["o-1:1:confirmed"])
    );
    assert_eq!(
        applied(&sandbox, AppliedApi::OrderConfirmations).await,
        once(&["o-1:1:fulfilled"])
    );
    assert!(applied(&sandbox, AppliedApi::EntitlementRevocations)
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_system_at_an_address_of_its_own_gets_its_steps_there_and_only_there() {
    let (gateway, tenant) = sandbox_with(&[("c-1", "active")]).await;
    let erp = Sandbox::start(SandboxConfig::default()).await;
    let codec = WireCodec::new(registry_url().as_str());
    let token = std::env::temp_dir().join(format!("erp-token-{}", now_micros()));
    std::fs::write(&token, "sandbox-token\n").expect("token file");
    let deployment = orders_deployment(
        "orders-systems",
        &gateway,
        &[
            (STEP_SINK, "sink.systems.erp.url", &erp.url),
            (
                STEP_SINK,
                "sink.systems.erp.credential_file",
                &token.display().to_string(),
            ),
        ],
    )
    .await;
    publish_orders(&deployment, &codec, &[subscribing(&tenant, "o-1")]).await;
    until_state(
        &codec,
        &deployment,
        "o-1",
        (1, OrderWorkflowState::Fulfilled),
    )
    .await;
    settled(&deployment).await;

    assert_eq!(
        applied(&erp, AppliedApi::SalesOrders).await,
        once(&["o-1:1:confirmed"])
    );
    assert!(applied(&gateway, AppliedApi::SalesOrders).await.is_empty());
    assert_eq!(
        applied(&gateway, AppliedApi::Entitlements).await,
        once(&["o-1:1"])
    );
    assert!(applied(&erp, AppliedApi::Entitlements).await.is_empty());
}
