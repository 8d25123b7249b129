//! The order workflow's APIs (applied requests under an `Idempotency-Key`, customer lookups),
//! served in-process on a free port and driven over real HTTP.

mod support;

use backbone_core::config::load_from;
use backbone_sandbox::config::DEFAULT_ADMIN_TOKEN;
use backbone_sandbox::{AppliedApi, Customer, Faults, SandboxConfig, System};
use serde_json::{json, Value};

use support::{start, Answer, Running, TOKEN};

const LOOKUP: &str = "/crm/v1/customers/lookup";

impl Running {
    /// `body` applied through `api` under `key`.
    async fn apply(&self, api: AppliedApi, key: &str, body: &Value) -> Answer {
        let request = self.post(api.path(), body).header("Idempotency-Key", key);
        self.send(request).await
    }

    async fn look_up(&self, tenant_id: &str, customer_id: &str) -> Answer {
        let body = json!({"tenant_id": tenant_id, "customer_id": customer_id});
        self.send(self.post(LOOKUP, &body)).await
    }

    async fn applied(&self, api: AppliedApi) -> Vec<backbone_sandbox::AppliedRequest> {
        self.client.applied(api, None).await.expect("applied")
    }
}

/// A step of order `order_id` of tenant `tenant-a`, with a nested line as workflows send.
fn step(order_id: &str) -> Value {
    json!({
        "tenant_id": "tenant-a", "order_id": order_id, "version": 1,
        "lines": [{"line_id": "l-1", "product": "plan-pro", "quantity": 3}]
    })
}

fn applied(id: &str) -> Value {
    json!({"status": "applied", "id": id})
}

#[tokio::test]
async fn a_key_replays_its_first_answer_and_is_stored_once() {
    let sandbox = start(SandboxConfig::default()).await;
    let first_ids = [
        (AppliedApi::Entitlements, "ent_000001"),
        (AppliedApi::EntitlementRevocations, "rev_000001"),
        (AppliedApi::SubscriptionChanges, "subchg_000001"),
        (AppliedApi::SalesOrders, "so_000001"),
        (AppliedApi::OrderConfirmations, "conf_000001"),
    ];
    for (api, id) in first_ids {
        let first = sandbox.apply(api, "key-1", &step("o-1")).await;
        assert_eq!((first.status, &first.body), (200, &applied(id)), "{api:?}");
        assert!(!first.replayed);
        let again = sandbox.apply(api, "key-1", &step("o-1")).await;
        assert_eq!((again.status, &again.body), (200, &first.body), "{api:?}");
        assert!(again.replayed);

        let stored = sandbox.applied(api).await;
        assert_eq!(stored.len(), 1, "{api:?}");
        assert_eq!(
            (stored[0].id.as_str(), stored[0].idempotency_key.as_str()),
            (id, "key-1")
        );
        assert_eq!(stored[0].body, step("o-1"));
    }
    let stats = sandbox.client.stats().await.expect("stats");
    assert_eq!(stats["platform"]["200"], 4);
    assert_eq!(stats["sales"]["200"], 2);
    assert_eq!(
        stats["applied"],
        json!({"billing": 1, "crm": 0, "erp": 1, "platform": 2, "sales": 1})
    );
}

/// The sandbox keeps what it is sent: a workflow that sends one step under two keys has
/// applied it twice, and the stored list must show it.
#[tokio::test]
async fn a_new_key_applies_an_equal_body_again() {
    let sandbox = start(SandboxConfig::default()).await;
    let api = AppliedApi::SubscriptionChanges;
    let first = sandbox.apply(api, "key-1", &step("o-1")).await;
    let second = sandbox.apply(api, "key-2", &step("o-1")).await;
    assert_eq!(first.body, applied("subchg_000001"));
    assert_eq!(
        (second.body, second.replayed),
        (applied("subchg_000002"), false)
    );

    let mut other_tenant = step("o-2");
    other_tenant["tenant_id"] = json!("tenant-b");
    let third = sandbox.apply(api, "key-3", &other_tenant).await;
    assert_eq!(third.body, applied("subchg_000003"));

    let stored = sandbox.applied(api).await;
    let keys: Vec<&str> = stored.iter().map(|s| s.idempotency_key.as_str()).collect();
    assert_eq!(keys, ["key-1", "key-2", "key-3"]);
    assert_eq!(stored[0].body, stored[1].body);

    let tenant_b = sandbox
        .client
        .applied(api, Some("tenant-b"))
        .await
        .expect("applied");
    assert_eq!(tenant_b.len(), 1);
    assert_eq!(tenant_b[0].id, "subchg_000003");
    let unknown = sandbox
        .send(
            sandbox
                .http
                .get(format!("{}{}?order_id=o-1", sandbox.base, api.path()))
                .bearer_auth(TOKEN),
        )
        .await;
    assert_eq!((unknown.status, unknown.code()), (400, "invalid_request"));
}

#[tokio::test]
async fn a_key_reused_with_another_body_is_refused() {
    let sandbox = start(SandboxConfig::default()).await;
    let api = AppliedApi::SalesOrders;
    assert_eq!(sandbox.apply(api, "key-1", &step("o-1")).await.status, 200);
    let reused = sandbox.apply(api, "key-1", &step("o-2")).await;
    assert_eq!(
        (reused.status, reused.code()),
        (422, "idempotency_key_reused")
    );
    assert_eq!(sandbox.applied(api).await.len(), 1);
}

#[tokio::test]
async fn a_step_wants_a_key_and_a_tenant() {
    let sandbox = start(SandboxConfig::default()).await;
    let api = AppliedApi::Entitlements;
    let no_key = sandbox.send(sandbox.post(api.path(), &step("o-1"))).await;
    assert_eq!(
        (no_key.status, no_key.code()),
        (400, "missing_idempotency_key")
    );
    let mut empty_tenant = step("o-1");
    empty_tenant["tenant_id"] = json!("");
    let mut no_tenant = step("o-1");
    no_tenant
        .as_object_mut()
        .expect("an object")
        .remove("tenant_id");
    let invalid = [
        (empty_tenant, "`tenant_id`"),
        (no_tenant, "`tenant_id`"),
        (json!(["tenant-a"]), "JSON object"),
    ];
    for (body, named) in invalid {
        let answer = sandbox.apply(api, "key-1", &body).await;
        assert_eq!((answer.status, answer.code()), (400, "invalid_request"));
        assert!(answer.body.to_string().contains(named), "{answer:?}");
    }
    // Invalid requests leave the key unused.
    let valid = sandbox.apply(api, "key-1", &step("o-1")).await;
    assert_eq!(valid.body, applied("ent_000001"));
}

#[tokio::test]
async fn a_refused_value_fails_in_a_200_and_the_key_applies_once_lifted() {
    let sandbox = start(SandboxConfig::default()).await;
    let api = AppliedApi::SubscriptionChanges;
    sandbox
        .client
        .refuse(System::Billing, &["plan-pro"])
        .await
        .expect("refuse");
    let failed = sandbox.apply(api, "key-1", &step("o-1")).await;
    assert_eq!(failed.status, 200);
    assert_eq!(
        failed.body,
        json!({"status": "failed", "error": {"code": "refused", "message": "plan-pro is refused"}})
    );
    assert!(sandbox.applied(api).await.is_empty());

    // Keys are not looked at, and other systems refuse nothing.
    let keyed = json!({"tenant_id": "tenant-a", "plan-pro": true});
    let answer = sandbox.apply(api, "key-2", &keyed).await;
    assert_eq!(answer.body, applied("subchg_000001"));
    let answer = sandbox
        .apply(AppliedApi::Entitlements, "key-1", &step("o-1"))
        .await;
    assert_eq!(answer.body, applied("ent_000001"));

    sandbox
        .client
        .refuse(System::Billing, &[])
        .await
        .expect("lift");
    let lifted = sandbox.apply(api, "key-1", &step("o-1")).await;
    assert_eq!(
        (lifted.body, lifted.replayed),
        (applied("subchg_000002"), false)
    );
    let stored = sandbox.applied(api).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].idempotency_key, "key-1");
}

#[tokio::test]
async fn customers_are_found_by_tenant_and_id_unless_refused() {
    let sandbox = start(SandboxConfig::default()).await;
    sandbox
        .client
        .seed_customers(&[
            Customer::new("tenant-a", "cus-1", "active"),
            Customer::new("tenant-a", "cus-2", "inactive"),
        ])
        .await
        .expect("seed");
    let found = sandbox.look_up("tenant-a", "cus-1").await;
    assert_eq!(
        (found.status, &found.body),
        (200, &json!({"customer_id": "cus-1", "status": "active"}))
    );
    let other_tenant = sandbox.look_up("tenant-b", "cus-1").await;
    assert_eq!(
        (other_tenant.status, other_tenant.code()),
        (404, "customer_not_found")
    );

    sandbox
        .client
        .seed_customers(&[Customer::new("tenant-a", "cus-1", "inactive")])
        .await
        .expect("seed again");
    let updated = sandbox.look_up("tenant-a", "cus-1").await;
    assert_eq!(updated.body["status"], "inactive");

    sandbox
        .client
        .refuse(System::Crm, &["cus-2"])
        .await
        .expect("refuse");
    let refused = sandbox.look_up("tenant-a", "cus-2").await;
    assert_eq!(
        (refused.status, &refused.body["status"]),
        (200, &json!("failed"))
    );
    assert_eq!(refused.code(), "refused");

    let malformed = sandbox
        .send(sandbox.post(LOOKUP, &json!({"tenant_id": "tenant-a"})))
        .await;
    assert_eq!(
        (malformed.status, malformed.code()),
        (400, "invalid_request")
    );
    let stats = sandbox.client.stats().await.expect("stats");
    assert_eq!(stats["crm"], json!({"200": 3, "400": 1, "404": 1}));
    assert_eq!(stats["applied"]["crm"], 0);

    let bad_seed = sandbox
        .send(
            sandbox
                .http
                .put(format!("{}/admin/crm/customers", sandbox.base))
                .bearer_auth(DEFAULT_ADMIN_TOKEN)
                .json(&json!([{"tenant_id": "tenant-a", "customer_id": "cus-3", "status": ""}])),
        )
        .await;
    assert_eq!((bad_seed.status, bad_seed.code()), (400, "invalid_request"));
    assert!(
        bad_seed.body.to_string().contains("[0].status"),
        "{bad_seed:?}"
    );
}

#[tokio::test]
async fn a_platform_outage_answers_503_and_applies_nothing() {
    let sandbox = start(SandboxConfig::default()).await;
    let outage = Faults {
        outage_seconds: 60,
        ..Faults::default()
    };
    sandbox
        .client
        .set_faults(System::Platform, &outage)
        .await
        .expect("set faults");
    for api in [AppliedApi::Entitlements, AppliedApi::EntitlementRevocations] {
        let down = sandbox.apply(api, "key-1", &step("o-1")).await;
        assert_eq!((down.status, down.code()), (503, "service_unavailable"));
        assert!(
            sandbox.applied(api).await.is_empty(),
            "reads are not faulted"
        );
    }
    let sales = sandbox
        .apply(AppliedApi::OrderConfirmations, "key-1", &step("o-1"))
        .await;
    assert_eq!(sales.status, 200, "other systems are not affected");
    let stats = sandbox.client.stats().await.expect("stats");
    assert_eq!(stats["platform"]["503"], 2);

    sandbox
        .client
        .clear_faults(System::Platform)
        .await
        .expect("clear faults");
    let up = sandbox
        .apply(AppliedApi::Entitlements, "key-1", &step("o-1"))
        .await;
    assert_eq!(up.body, applied("ent_000001"));
}

#[tokio::test]
async fn a_lost_response_is_applied_and_the_retry_replays_it() {
    let sandbox = start(SandboxConfig::default()).await;
    let lose = Faults {
        lost_response_rate: 1.0,
        ..Faults::default()
    };
    sandbox
        .client
        .set_faults(System::Sales, &lose)
        .await
        .expect("set faults");
    let api = AppliedApi::OrderConfirmations;
    let lost = sandbox.apply(api, "key-1", &step("o-1")).await;
    assert_eq!((lost.status, lost.code()), (504, "gateway_timeout"));
    assert_eq!(
        sandbox.applied(api).await.len(),
        1,
        "the lost call was applied"
    );

    sandbox
        .client
        .clear_faults(System::Sales)
        .await
        .expect("clear faults");
    let retry = sandbox.apply(api, "key-1", &step("o-1")).await;
    assert_eq!((retry.body, retry.replayed), (applied("conf_000001"), true));
    assert_eq!(sandbox.applied(api).await.len(), 1);
}

#[tokio::test]
async fn reset_clears_steps_customers_and_refused_values() {
    let sandbox = start(SandboxConfig::default()).await;
    let api = AppliedApi::SalesOrders;
    assert_eq!(sandbox.apply(api, "key-1", &step("o-1")).await.status, 200);
    sandbox
        .client
        .seed_customers(&[Customer::new("tenant-a", "cus-1", "active")])
        .await
        .expect("seed");
    sandbox
        .client
        .refuse(System::Erp, &["plan-pro"])
        .await
        .expect("refuse");

    sandbox.client.reset().await.expect("reset");
    assert!(sandbox.applied(api).await.is_empty());
    assert_eq!(sandbox.look_up("tenant-a", "cus-1").await.status, 404);
    // The key is forgotten and the value no longer refused: the step applies afresh.
    let again = sandbox.apply(api, "key-1", &step("o-1")).await;
    assert_eq!((again.body, again.replayed), (applied("so_000001"), false));
}

#[tokio::test]
async fn the_new_systems_are_named_in_the_admin_api_and_the_config() {
    let sandbox = start(SandboxConfig::default()).await;
    let put = |path: &str, body: Value| {
        sandbox
            .http
            .put(format!("{}{path}", sandbox.base))
            .bearer_auth(DEFAULT_ADMIN_TOKEN)
            .json(&body)
    };
    let unknown = sandbox.send(put("/admin/refused/ledger", json!([]))).await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.body.to_string().contains("platform or sales"),
        "{unknown:?}"
    );
    let not_strings = sandbox.send(put("/admin/refused/sales", json!([1]))).await;
    assert_eq!(not_strings.status, 400);
    let forbidden = sandbox
        .send(put("/admin/forbidden/sales", json!({"forbidden": true})))
        .await;
    assert_eq!(forbidden.status, 204);
    let answer = sandbox
        .apply(AppliedApi::OrderConfirmations, "key-1", &step("o-1"))
        .await;
    assert_eq!((answer.status, answer.code()), (403, "forbidden"));

    let env = |key: &str, value: &str| vec![(key.to_owned(), value.to_owned())];
    let config: SandboxConfig =
        load_from(None, env("BACKBONE__FAULTS__PLATFORM__ERROR_RATE", "0.5"))
            .expect("platform faults");
    assert_eq!(config.faults.platform.error_rate, 0.5);
    let err =
        load_from::<SandboxConfig, _>(None, env("BACKBONE__FAULTS__SALES__THROTTLE_RATE", "2"))
            .expect_err("out of range");
    assert_eq!(
        err.to_string(),
        "config key `faults.sales.throttle_rate`: must be between 0 and 1"
    );
}
