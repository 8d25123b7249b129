//! The sandbox served in-process on a free port and driven over real HTTP.

mod support;

use std::time::{Duration, Instant};

use backbone_core::config::load_from;
use backbone_sandbox::config::DEFAULT_ADMIN_TOKEN;
use backbone_sandbox::{Faults, SandboxConfig, System};
use reqwest::RequestBuilder;
use serde_json::{json, Value};

use support::{start, Answer, Running, TOKEN};

const CHARGES: &str = "/billing/v1/charges";
const ACCOUNTS: &str = "/crm/v1/accounts/batch";
const BATCHES: &str = "/erp/v1/journal-batches";
const LINES_SEARCH: &str = "/erp/v1/journal-lines/search";

impl Running {
    fn charge(&self, key: &str, body: &Value) -> RequestBuilder {
        self.post(CHARGES, body).header("Idempotency-Key", key)
    }
}

fn charge(amount: &str, currency: &str) -> Value {
    json!({
        "customer_id": "cus-1", "subscription_id": "sub-1", "charge_id": "chg-1",
        "charge_type": "usage", "description": "API calls", "quantity": "1000",
        "amount": amount, "currency": currency, "period_start": "2024-01-01",
        "period_end": "2024-01-31", "tenant_id": "tenant-a"
    })
}

fn record(external_id: &str, as_of: i64, name: &str) -> Value {
    json!({"external_id": external_id, "as_of": as_of, "fields": {"name": name}})
}

fn statuses(answer: &Answer) -> Vec<&str> {
    let results = answer.body["results"].as_array().expect("results");
    results
        .iter()
        .map(|r| r["status"].as_str().expect("a status"))
        .collect()
}

/// A balanced journal batch in EUR with matching control totals.
fn batch(external_id: &str, period: &str) -> Value {
    json!({
        "external_id": external_id, "tenant_id": "tenant-a", "legal_entity_id": "le-eu",
        "period": period, "posting_date": format!("{period}-28"), "batch_type": "REGULAR",
        "adjusts": null,
        "lines": [
            {"line_number": 1, "gl_account": "1200", "debit": "100.10", "credit": "0",
             "currency": "EUR", "description": "receivable"},
            {"line_number": 2, "gl_account": "4000", "debit": "0", "credit": "100.1",
             "currency": "EUR", "description": "revenue"}
        ],
        "control_totals": [
            {"currency": "EUR", "line_count": 2, "total_debits": "100.1", "total_credits": "100.10"}
        ]
    })
}

#[tokio::test]
async fn a_key_replays_its_first_answer_and_refuses_another_body() {
    let sandbox = start(SandboxConfig::default()).await;
    let first = sandbox
        .send(sandbox.charge("key-1", &charge("12.34", "EUR")))
        .await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.body["id"], "ch_000001");
    assert_eq!(first.body["status"], "succeeded");
    assert_eq!(first.body["amount"], "12.34");
    assert!(!first.replayed);

    let again = sandbox
        .send(sandbox.charge("key-1", &charge("12.34", "EUR")))
        .await;
    assert_eq!((again.status, &again.body), (201, &first.body));
    assert!(again.replayed);

    let reuse = sandbox
        .send(sandbox.charge("key-1", &charge("99.00", "EUR")))
        .await;
    assert_eq!((reuse.status, reuse.code()), (422, "idempotency_key_reuse"));

    let charges = sandbox.client.charges().await.expect("charges");
    assert_eq!(charges.len(), 1);
    assert_eq!(
        (charges[0].id.as_str(), charges[0].idempotency_key.as_str()),
        ("ch_000001", "key-1")
    );
    let stats = sandbox.client.stats().await.expect("stats");
    assert_eq!(stats["billing"]["201"], 2);
    assert_eq!(stats["billing"]["422"], 1);
    assert_eq!(stats["applied"]["billing"], 1);
}

#[tokio::test]
async fn an_expired_key_creates_a_second_charge_that_the_identity_count_shows() {
    let with_identity = |amount: &str| {
        let mut body = charge(amount, "EUR");
        body["metadata"] = json!({"rating_id": "r-1", "revision": "3"});
        body
    };
    // Remembered: the repeat is a replay, one charge for the identity.
    let remembering = start(SandboxConfig::default()).await;
    for _ in 0..2 {
        let answer = remembering
            .send(remembering.charge("key-1", &with_identity("1.00")))
            .await;
        assert_eq!(answer.status, 201, "{answer:?}");
    }
    let counts = remembering
        .client
        .charges_per_identity()
        .await
        .expect("counts");
    assert_eq!(counts.get("r-1#3"), Some(&1));

    // Keys forgotten at once: the repeat is a second charge, and the count says so.
    let mut config = SandboxConfig::default();
    config.billing.idempotency_ttl = Duration::ZERO;
    let forgetting = start(config).await;
    for _ in 0..2 {
        let answer = forgetting
            .send(forgetting.charge("key-1", &with_identity("1.00")))
            .await;
        assert_eq!((answer.status, answer.replayed), (201, false), "{answer:?}");
    }
    let charges = forgetting.client.charges().await.expect("charges");
    assert_eq!(charges.len(), 2);
    assert_eq!(charges[1].metadata["rating_id"], "r-1");
    let counts = forgetting
        .client
        .charges_per_identity()
        .await
        .expect("counts");
    assert_eq!(counts.get("r-1#3"), Some(&2));

    // Found by identity: the charges whose metadata holds every pair asked for.
    let find = |query: &str| {
        forgetting
            .http
            .get(format!("{}{CHARGES}?{query}", forgetting.base))
            .bearer_auth(TOKEN)
    };
    let found = forgetting
        .send(find("metadata[rating_id]=r-1&metadata[revision]=3"))
        .await;
    assert_eq!(found.body["charges"].as_array().map(Vec::len), Some(2));
    let none = forgetting
        .send(find("metadata[rating_id]=r-1&metadata[revision]=4"))
        .await;
    assert_eq!(none.body["charges"].as_array().map(Vec::len), Some(0));
    let wrong = forgetting.send(find("rating_id=r-1")).await;
    assert_eq!((wrong.status, wrong.code()), (400, "invalid_request"));
}

#[tokio::test]
async fn invalid_charges_name_the_field_and_leave_the_key_unused() {
    let sandbox = start(SandboxConfig::default()).await;
    let no_key = sandbox
        .send(sandbox.post(CHARGES, &charge("1", "EUR")))
        .await;
    assert_eq!(
        (no_key.status, no_key.code()),
        (400, "missing_idempotency_key")
    );

    let currency = sandbox.send(sandbox.charge("k", &charge("1", "XTS"))).await;
    assert_eq!(
        (currency.status, currency.code()),
        (400, "unsupported_currency")
    );

    let amount = sandbox
        .send(sandbox.charge("k", &charge("1,5", "EUR")))
        .await;
    assert_eq!((amount.status, amount.code()), (400, "invalid_request"));
    assert!(amount.message().contains("amount"), "{amount:?}");

    let mut missing = charge("1", "EUR");
    missing.as_object_mut().expect("object").remove("tenant_id");
    let missing = sandbox.send(sandbox.charge("k", &missing)).await;
    assert_eq!(missing.status, 400);
    assert!(missing.message().contains("tenant_id"), "{missing:?}");

    let valid = sandbox
        .send(sandbox.charge("k", &charge("-0.005", "JPY")))
        .await;
    assert_eq!((valid.status, valid.replayed), (201, false), "{valid:?}");
}

#[tokio::test]
async fn crm_keeps_the_newest_version_and_counts_applied_writes() {
    let sandbox = start(SandboxConfig::default()).await;
    let first = json!({"records": [
        record("acc-a", 10, "Alpha"),
        record("acc-b", 10, "Beta"),
        {"as_of": 1, "fields": {}},
        record("", 1, "nameless"),
    ]});
    let answer = sandbox.send(sandbox.post(ACCOUNTS, &first)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        statuses(&answer),
        ["created", "created", "rejected", "rejected"]
    );
    assert!(answer.body["results"][2]["error"]
        .as_str()
        .is_some_and(|e| e.contains("external_id")));

    let second = json!({"records": [
        record("acc-a", 20, "Alpha 2"),
        record("acc-b", 5, "Beta old"),
        record("acc-a", 20, "Alpha 2 again"),
    ]});
    let answer = sandbox.send(sandbox.post(ACCOUNTS, &second)).await;
    assert_eq!(statuses(&answer), ["updated", "stale", "stale"]);

    let replay = sandbox.send(sandbox.post(ACCOUNTS, &first)).await;
    assert_eq!(
        statuses(&replay),
        ["stale", "stale", "rejected", "rejected"]
    );

    let accounts = sandbox.client.accounts().await.expect("accounts");
    let held: Vec<_> = accounts
        .iter()
        .map(|a| {
            (
                a.external_id.as_str(),
                a.as_of,
                a.version,
                a.fields["name"].clone(),
            )
        })
        .collect();
    assert_eq!(
        held,
        [
            ("acc-a", 20, 2, json!("Alpha 2")),
            ("acc-b", 10, 1, json!("Beta"))
        ]
    );
    let stats = sandbox.client.stats().await.expect("stats");
    assert_eq!(stats["applied"]["crm"], 3);
}

#[tokio::test]
async fn crm_refuses_oversized_and_empty_batches() {
    let mut config = SandboxConfig::default();
    config.crm.max_batch = 2;
    let sandbox = start(config).await;
    let three = json!({"records": [record("a", 1, "a"), record("b", 1, "b"), record("c", 1, "c")]});
    let answer = sandbox.send(sandbox.post(ACCOUNTS, &three)).await;
    assert_eq!((answer.status, answer.code()), (413, "batch_too_large"));
    let empty = sandbox
        .send(sandbox.post(ACCOUNTS, &json!({"records": []})))
        .await;
    assert_eq!((empty.status, empty.code()), (400, "invalid_request"));
    assert!(sandbox
        .client
        .accounts()
        .await
        .expect("accounts")
        .is_empty());
}

#[tokio::test]
async fn crm_throttles_with_retry_after() {
    let mut config = SandboxConfig::default();
    config.crm.rate_limit_per_second = 2;
    let sandbox = start(config).await;
    let body = json!({"records": [record("a", 1, "a")]});

    // Three calls land in one second unless each takes a third of a second.
    let mut answers = Vec::new();
    while answers.len() < 10 {
        let answer = sandbox.send(sandbox.post(ACCOUNTS, &body)).await;
        let limited = answer.status == 429;
        answers.push(answer);
        if limited {
            break;
        }
    }
    let limited = answers.last().expect("an answer");
    assert_eq!((limited.status, limited.code()), (429, "rate_limited"));
    assert_eq!(limited.retry_after.as_deref(), Some("1"));
    assert!(answers.len() >= 3, "{answers:?}");

    // Throttling is drawn after the rate limit, so it is shown on a sandbox without one.
    let mut config = SandboxConfig::default();
    config.crm.rate_limit_per_second = 0;
    let sandbox = start(config).await;
    let throttled = Faults {
        throttle_rate: 1.0,
        retry_after_seconds: 7,
        ..Faults::default()
    };
    sandbox
        .client
        .set_faults(System::Crm, &throttled)
        .await
        .expect("set faults");
    let fresh = json!({"records": [record("b", 1, "b")]});
    let answer = sandbox.send(sandbox.post(ACCOUNTS, &fresh)).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.retry_after.as_deref(), Some("7"));
    let accounts = sandbox.client.accounts().await.expect("accounts");
    assert!(accounts.iter().all(|a| a.external_id != "b"));
}

#[tokio::test]
async fn erp_answers_business_errors_with_200() {
    let sandbox = start(SandboxConfig::default()).await;
    let mut unbalanced = batch("b-1", "2024-01");
    unbalanced["lines"][1]["credit"] = json!("100.09");
    unbalanced["control_totals"][0]["total_credits"] = json!("100.09");
    let answer = sandbox.send(sandbox.post(BATCHES, &unbalanced)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["status"], "error");
    assert_eq!(answer.code(), "unbalanced");

    let mut mismatch = batch("b-2", "2024-01");
    mismatch["control_totals"][0]["line_count"] = json!(3);
    let answer = sandbox.send(sandbox.post(BATCHES, &mismatch)).await;
    assert_eq!(
        (answer.status, answer.code()),
        (200, "control_total_mismatch")
    );

    let mut empty = batch("b-3", "2024-01");
    empty["lines"] = json!([]);
    empty["control_totals"] = json!([]);
    let answer = sandbox.send(sandbox.post(BATCHES, &empty)).await;
    assert_eq!((answer.status, answer.code()), (200, "empty_batch"));

    let mut malformed = batch("b-4", "2024-01");
    malformed["lines"][0]["debit"] = json!("1e2");
    let answer = sandbox.send(sandbox.post(BATCHES, &malformed)).await;
    assert_eq!((answer.status, answer.code()), (400, "invalid_request"));
    assert!(answer.message().contains("lines[0].debit"), "{answer:?}");

    assert!(sandbox.client.batches().await.expect("batches").is_empty());
}

#[tokio::test]
async fn erp_posts_an_external_id_once() {
    let sandbox = start(SandboxConfig::default()).await;
    let posted = sandbox
        .send(sandbox.post(BATCHES, &batch("b-1", "2024-01")))
        .await;
    assert_eq!(posted.status, 201, "{posted:?}");
    assert_eq!(
        posted.body,
        json!({"status": "posted", "document_number": "JE-000001"})
    );

    let duplicate = sandbox
        .send(sandbox.post(BATCHES, &batch("b-1", "2024-01")))
        .await;
    assert_eq!(duplicate.status, 200);
    assert_eq!(
        duplicate.body,
        json!({"status": "duplicate", "document_number": "JE-000001"})
    );

    let mut changed = batch("b-1", "2024-01");
    changed["lines"][0]["description"] = json!("changed");
    let conflict = sandbox.send(sandbox.post(BATCHES, &changed)).await;
    assert_eq!(
        (conflict.status, conflict.code()),
        (409, "external_id_conflict")
    );

    let batches = sandbox.client.batches().await.expect("batches");
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].document_number, "JE-000001");
    assert_eq!(batches[0].lines[0].debit, "100.10");
}

/// What a sender asks before it posts: which lines carry its references, and whether an
/// external id is taken. Searches are reads: the faults of deliveries do not touch them.
#[tokio::test]
async fn erp_finds_lines_by_reference_and_batches_by_external_id() {
    let sandbox = start(SandboxConfig::default()).await;
    let mut referenced = batch("b-1", "2024-01");
    referenced["lines"][0]["reference"] = json!("rt-1");
    referenced["lines"][1]["reference"] = json!("rt-1");
    let posted = sandbox.send(sandbox.post(BATCHES, &referenced)).await;
    assert_eq!(posted.status, 201, "{posted:?}");
    sandbox
        .client
        .set_faults(
            System::Erp,
            &Faults {
                lost_response_rate: 1.0,
                ..Faults::default()
            },
        )
        .await
        .expect("set faults");

    let search =
        |references: Value| sandbox.post(LINES_SEARCH, &json!({ "references": references }));
    let found = sandbox.send(search(json!(["rt-1", "rt-2"]))).await;
    assert_eq!(found.status, 200, "{found:?}");
    assert_eq!(
        found.body["lines"],
        json!([
            {"reference": "rt-1", "line_number": 1, "external_id": "b-1", "document_number": "JE-000001"},
            {"reference": "rt-1", "line_number": 2, "external_id": "b-1", "document_number": "JE-000001"}
        ])
    );
    let none = sandbox.send(search(json!(["rt-2"]))).await;
    assert_eq!(none.body["lines"], json!([]));
    let malformed = sandbox.send(search(json!("rt-1"))).await;
    assert_eq!(
        (malformed.status, malformed.code()),
        (400, "invalid_request")
    );

    let by_id = |query: &str| {
        sandbox
            .http
            .get(format!("{}{BATCHES}?{query}", sandbox.base))
            .bearer_auth(TOKEN)
    };
    let taken = sandbox.send(by_id("external_id=b-1")).await;
    assert_eq!(taken.body["batches"].as_array().map(Vec::len), Some(1));
    let free = sandbox.send(by_id("external_id=b-2")).await;
    assert_eq!(free.body["batches"], json!([]));
    let wrong = sandbox.send(by_id("id=b-1")).await;
    assert_eq!((wrong.status, wrong.code()), (400, "invalid_request"));
}

#[tokio::test]
async fn erp_refuses_closed_periods() {
    let mut config = SandboxConfig::default();
    config.erp.closed_periods = vec!["2024-01".into()];
    let sandbox = start(config).await;
    let answer = sandbox
        .send(sandbox.post(BATCHES, &batch("b-1", "2024-01")))
        .await;
    assert_eq!((answer.status, answer.code()), (422, "period_closed"));

    let open = sandbox
        .send(sandbox.post(BATCHES, &batch("b-2", "2024-02")))
        .await;
    assert_eq!(open.status, 201);
    sandbox.client.close_period("2024-03").await.expect("close");
    let answer = sandbox
        .send(sandbox.post(BATCHES, &batch("b-3", "2024-03")))
        .await;
    assert_eq!((answer.status, answer.code()), (422, "period_closed"));
}

#[tokio::test]
async fn a_withheld_entity_is_acknowledged_but_not_stored() {
    let sandbox = start(SandboxConfig::default()).await;
    sandbox
        .client
        .withhold(Some("le-eu"))
        .await
        .expect("withhold");
    let lost = sandbox
        .send(sandbox.post(BATCHES, &batch("b-1", "2024-01")))
        .await;
    assert_eq!((lost.status, &lost.body["status"]), (201, &json!("posted")));
    assert!(sandbox.client.batches().await.expect("batches").is_empty());

    sandbox.client.withhold(None).await.expect("release");
    let kept = sandbox
        .send(sandbox.post(BATCHES, &batch("b-2", "2024-01")))
        .await;
    assert_eq!(kept.status, 201);
    assert_eq!(sandbox.client.batches().await.expect("batches").len(), 1);
}

#[tokio::test]
async fn a_lost_response_is_applied_and_the_retry_gets_the_original() {
    let sandbox = start(SandboxConfig::default()).await;
    let lose = Faults {
        lost_response_rate: 1.0,
        ..Faults::default()
    };
    for system in [System::Billing, System::Erp] {
        sandbox
            .client
            .set_faults(system, &lose)
            .await
            .expect("set faults");
    }
    let lost = sandbox
        .send(sandbox.charge("key-1", &charge("5", "EUR")))
        .await;
    assert_eq!((lost.status, lost.code()), (504, "gateway_timeout"));
    let lost_batch = sandbox
        .send(sandbox.post(BATCHES, &batch("b-1", "2024-01")))
        .await;
    assert_eq!(lost_batch.status, 504);
    let charges = sandbox.client.charges().await.expect("charges");
    assert_eq!(charges.len(), 1, "the lost call was applied");
    assert_eq!(sandbox.client.batches().await.expect("batches").len(), 1);

    for system in [System::Billing, System::Erp] {
        sandbox
            .client
            .clear_faults(system)
            .await
            .expect("clear faults");
    }
    let retry = sandbox
        .send(sandbox.charge("key-1", &charge("5", "EUR")))
        .await;
    assert_eq!((retry.status, retry.replayed), (201, true));
    assert_eq!(retry.body["id"], json!(charges[0].id));
    let retry_batch = sandbox
        .send(sandbox.post(BATCHES, &batch("b-1", "2024-01")))
        .await;
    assert_eq!(
        (retry_batch.status, &retry_batch.body["status"]),
        (200, &json!("duplicate"))
    );
    let stats = sandbox.client.stats().await.expect("stats");
    assert_eq!(stats["billing"]["504"], 1);
    assert_eq!(
        stats["applied"],
        json!({"billing": 1, "crm": 0, "erp": 1, "platform": 0, "sales": 0})
    );
}

#[tokio::test]
async fn an_error_refuses_before_applying() {
    let sandbox = start(SandboxConfig::default()).await;
    let failing = Faults {
        error_rate: 1.0,
        ..Faults::default()
    };
    sandbox
        .client
        .set_faults(System::Billing, &failing)
        .await
        .expect("set faults");
    let answer = sandbox.send(sandbox.charge("k", &charge("5", "EUR"))).await;
    assert_eq!((answer.status, answer.code()), (503, "service_unavailable"));
    assert!(sandbox.client.charges().await.expect("charges").is_empty());
}

#[tokio::test]
async fn an_outage_answers_503_until_it_ends() {
    let sandbox = start(SandboxConfig::default()).await;
    let outage = Faults {
        outage_seconds: 1,
        ..Faults::default()
    };
    sandbox
        .client
        .set_faults(System::Billing, &outage)
        .await
        .expect("set faults");
    let down = sandbox.send(sandbox.charge("k", &charge("5", "EUR"))).await;
    assert_eq!((down.status, down.code()), (503, "service_unavailable"));
    let faults: Value = sandbox
        .http
        .get(format!("{}/admin/faults", sandbox.base))
        .bearer_auth(DEFAULT_ADMIN_TOKEN)
        .send()
        .await
        .expect("faults")
        .json()
        .await
        .expect("json");
    assert_eq!(faults["billing"]["outage_seconds"], 1);

    let deadline = Instant::now() + Duration::from_secs(10);
    let recovered = loop {
        let answer = sandbox.send(sandbox.charge("k", &charge("5", "EUR"))).await;
        if answer.status != 503 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((recovered.status, recovered.replayed), (201, false));
    let stats = sandbox.client.stats().await.expect("stats");
    assert_eq!(stats["billing"]["201"], 1);
    assert_eq!(stats["applied"]["billing"], 1);
}

#[tokio::test]
async fn wrong_and_revoked_tokens_get_401_and_forbidden_systems_403() {
    let sandbox = start(SandboxConfig::default()).await;
    let url = format!("{}{CHARGES}", sandbox.base);
    let body = charge("5", "EUR");
    let with_token = |token: &str| {
        sandbox
            .http
            .post(&url)
            .bearer_auth(token)
            .header("Idempotency-Key", format!("key-{token}"))
            .json(&body)
    };
    let missing = sandbox.send(sandbox.http.post(&url).json(&body)).await;
    assert_eq!((missing.status, missing.code()), (401, "unauthorized"));
    let wrong = sandbox.send(with_token("guess")).await;
    assert_eq!((wrong.status, wrong.code()), (401, "unauthorized"));

    sandbox
        .client
        .set_token("rotated")
        .await
        .expect("set token");
    assert_eq!(sandbox.send(with_token(TOKEN)).await.status, 401);
    assert_eq!(sandbox.send(with_token("rotated")).await.status, 201);
    assert_eq!(sandbox.client.charges().await.expect("charges").len(), 1);

    sandbox.client.reset().await.expect("reset");
    sandbox
        .client
        .set_forbidden(System::Billing, true)
        .await
        .expect("forbid");
    let forbidden = sandbox.send(with_token(TOKEN)).await;
    assert_eq!((forbidden.status, forbidden.code()), (403, "forbidden"));
    let crm = sandbox
        .send(sandbox.post(ACCOUNTS, &json!({"records": [record("a", 1, "a")]})))
        .await;
    assert_eq!(crm.status, 200, "other systems are not affected");
    sandbox
        .client
        .set_forbidden(System::Billing, false)
        .await
        .expect("allow");
    assert_eq!(sandbox.send(with_token(TOKEN)).await.status, 201);
}

#[tokio::test]
async fn admin_names_unknown_systems_and_bad_rates() {
    let sandbox = start(SandboxConfig::default()).await;
    let put = |path: &str, body: Value| {
        sandbox
            .http
            .put(format!("{}{path}", sandbox.base))
            .bearer_auth(DEFAULT_ADMIN_TOKEN)
            .json(&body)
    };
    let unknown = sandbox.send(put("/admin/faults/ledger", json!({}))).await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.message().contains("ledger"), "{unknown:?}");
    let bad = sandbox
        .send(put("/admin/faults/crm", json!({"error_rate": 1.5})))
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.message().contains("faults.crm.error_rate"), "{bad:?}");
    let health = sandbox
        .http
        .get(format!("{}/health", sandbox.base))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn the_admin_api_wants_its_own_token() {
    let sandbox = start(SandboxConfig::default()).await;
    let reset = |token: Option<&str>| {
        let request = sandbox.http.post(format!("{}/admin/reset", sandbox.base));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    for refused in [None, Some(TOKEN), Some("guess")] {
        let answer = sandbox.send(reset(refused)).await;
        assert_eq!(answer.status, 401, "{refused:?}: {answer:?}");
    }
    assert_eq!(
        sandbox.send(reset(Some(DEFAULT_ADMIN_TOKEN))).await.status,
        204
    );

    let same = load_from::<SandboxConfig, _>(None, env(&[("BACKBONE__ADMIN_TOKEN", TOKEN)]))
        .expect_err("the APIs' token as the admin token")
        .to_string();
    assert!(same.contains("admin_token"), "{same}");
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn config_defaults_overrides_and_errors_naming_the_key() {
    let config: SandboxConfig = load_from(None, env(&[])).expect("defaults");
    assert_eq!(config.listen.to_string(), "127.0.0.1:8090");
    assert_eq!(config.token.expose(), TOKEN);
    assert_eq!(config.crm.max_batch, 200);
    assert!(
        !format!("{config:?}").contains(TOKEN),
        "the token is redacted"
    );

    let config: SandboxConfig = load_from(
        None,
        env(&[
            ("BACKBONE__FAULTS__CRM__THROTTLE_RATE", "0.5"),
            ("BACKBONE__ERP__CLOSED_PERIODS", "[\"2024-01\"]"),
        ]),
    )
    .expect("overridden");
    assert_eq!(config.faults.crm.throttle_rate, 0.5);
    assert_eq!(config.erp.closed_periods, ["2024-01"]);

    let err =
        load_from::<SandboxConfig, _>(None, env(&[("BACKBONE__FAULTS__CRM__ERROR_RATE", "1.5")]))
            .expect_err("out of range");
    assert_eq!(
        err.to_string(),
        "config key `faults.crm.error_rate`: must be between 0 and 1"
    );

    let file = std::env::temp_dir().join(format!("sandbox-token-{}", std::process::id()));
    std::fs::write(&file, "from-file\n").expect("write token file");
    let path = file.to_string_lossy().into_owned();
    let config: SandboxConfig =
        load_from(None, env(&[("BACKBONE__TOKEN_FILE", &path)])).expect("token file");
    assert_eq!(config.resolve_token().expect("token").expose(), "from-file");
    std::fs::remove_file(&file).expect("remove token file");
}
