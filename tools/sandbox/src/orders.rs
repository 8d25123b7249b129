//! Requests applied once per `Idempotency-Key`: the steps of a quote-to-cash order
//! (entitlements provisioned and revoked on the product platform, subscription changes in
//! billing, sales orders in the ERP, order confirmations to the sales platform) and issued
//! invoices (to billing and to the ERP).
//!
//! A key seen again with the same body replays the first answer; with another body it is
//! refused. Keys are remembered for as long as the sandbox runs. The sandbox does not
//! deduplicate by business identity: a new key with an earlier body is applied again, so a
//! workflow that acted twice shows it in the stored list. A body holding a value the system
//! refuses is answered as a business error and not remembered, so the same key may be applied
//! once the refusal is lifted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http::{error, json_value};
use crate::{lock, Sandbox, System};

/// One of the APIs that apply each request once per idempotency key: those an order workflow
/// applies its steps through, and those issued invoices are delivered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AppliedApi {
    /// Provisions the entitlements of an order's lines, on the product platform.
    Entitlements,
    /// Revokes an order's entitlements, on the product platform.
    EntitlementRevocations,
    /// Creates, amends or cancels a subscription, or reverts an earlier change, in billing.
    SubscriptionChanges,
    /// Records an order in the ERP.
    SalesOrders,
    /// Tells the sales platform how an order ended.
    OrderConfirmations,
    /// Delivers an issued invoice to billing.
    Invoices,
    /// Delivers an issued invoice to the ERP.
    ErpInvoices,
}

impl AppliedApi {
    /// Every such API, in declaration order.
    pub const ALL: [AppliedApi; 7] = [
        AppliedApi::Entitlements,
        AppliedApi::EntitlementRevocations,
        AppliedApi::SubscriptionChanges,
        AppliedApi::SalesOrders,
        AppliedApi::OrderConfirmations,
        AppliedApi::Invoices,
        AppliedApi::ErpInvoices,
    ];

    /// The path steps are `POST`ed to and read back from with `GET`.
    pub fn path(self) -> &'static str {
        match self {
            AppliedApi::Entitlements => "/platform/v1/entitlements",
            AppliedApi::EntitlementRevocations => "/platform/v1/entitlement-revocations",
            AppliedApi::SubscriptionChanges => "/billing/v1/subscription-changes",
            AppliedApi::SalesOrders => "/erp/v1/sales-orders",
            AppliedApi::OrderConfirmations => "/sales/v1/order-confirmations",
            AppliedApi::Invoices => "/billing/v1/invoices",
            AppliedApi::ErpInvoices => "/erp/v1/invoices",
        }
    }

    /// The system serving it, whose faults and refused values apply.
    pub fn system(self) -> System {
        match self {
            AppliedApi::Entitlements | AppliedApi::EntitlementRevocations => System::Platform,
            AppliedApi::SubscriptionChanges | AppliedApi::Invoices => System::Billing,
            AppliedApi::SalesOrders | AppliedApi::ErpInvoices => System::Erp,
            AppliedApi::OrderConfirmations => System::Sales,
        }
    }

    /// What the ids it assigns start with.
    fn id_prefix(self) -> &'static str {
        match self {
            AppliedApi::Entitlements => "ent",
            AppliedApi::EntitlementRevocations => "rev",
            AppliedApi::SubscriptionChanges => "subchg",
            AppliedApi::SalesOrders => "so",
            AppliedApi::OrderConfirmations => "conf",
            AppliedApi::Invoices => "inv",
            AppliedApi::ErpInvoices => "erpinv",
        }
    }
}

/// A request as applied: the id it was given, the key it came under and the body as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedRequest {
    /// Assigned id, `<prefix>_000001` onwards per API (`ent`, `rev`, `subchg`, `so`, `conf`).
    pub id: String,
    /// The `Idempotency-Key` it was applied under.
    pub idempotency_key: String,
    /// The body, kept as sent; the business identity a test counts by is in it.
    pub body: Value,
    /// Its place among the requests every such API applied, from 1: the order in which the
    /// systems acted, across APIs.
    pub sequence: u64,
}

/// The applied requests of every such API, which one each key applied, and how many were
/// applied in all.
#[derive(Default)]
pub(crate) struct OrderSteps {
    apis: [Steps; AppliedApi::ALL.len()],
    applied: u64,
}

/// The applied requests of one API in arrival order, and the index each key applied.
#[derive(Default)]
struct Steps {
    applied: Vec<AppliedRequest>,
    by_key: HashMap<String, usize>,
}

impl OrderSteps {
    /// Requests applied through the APIs `system` serves.
    pub(crate) fn applied(&self, system: System) -> usize {
        AppliedApi::ALL
            .into_iter()
            .filter(|api| api.system() == system)
            .map(|api| self.apis[api as usize].applied.len())
            .sum()
    }
}

/// The `POST` and `GET` routes of the APIs `system` serves, for its gateway to wrap.
pub(crate) fn routes(system: System) -> Router<Arc<Sandbox>> {
    AppliedApi::ALL
        .into_iter()
        .filter(|api| api.system() == system)
        .fold(Router::new(), |routes, api| {
            let apply = move |app: State<Arc<Sandbox>>, headers: HeaderMap, body: Bytes| {
                apply(api, app, headers, body)
            };
            let list = move |app: State<Arc<Sandbox>>, query: Query<BTreeMap<String, String>>| {
                list(api, app, query)
            };
            routes.route(api.path(), post(apply).get(list))
        })
}

async fn apply(
    api: AppliedApi,
    State(app): State<Arc<Sandbox>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .filter(|key| !key.is_empty())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing_idempotency_key",
            "header `Idempotency-Key` is required",
        );
    };
    let request = match json_value(&body).and_then(with_tenant) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_request", message),
    };
    // Decided before the store is locked, so the two locks are never held together.
    let refusal = app.control().business_refusal(api.system(), &request);
    let mut orders = lock(&app.orders);
    let sequence = orders.applied + 1;
    let steps = &mut orders.apis[api as usize];
    if let Some(&index) = steps.by_key.get(key) {
        let first = &steps.applied[index];
        if first.body != request {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                format!("key `{key}` was used with another request body"),
            );
        }
        let mut replay = applied_reply(&first.id);
        replay
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return replay;
    }
    if let Some(refusal) = refusal {
        return refusal;
    }
    let index = steps.applied.len();
    let id = format!("{}_{:06}", api.id_prefix(), index + 1);
    let reply = applied_reply(&id);
    steps.applied.push(AppliedRequest {
        id,
        idempotency_key: key.to_owned(),
        body: request,
        sequence,
    });
    steps.by_key.insert(key.to_owned(), index);
    orders.applied = sequence;
    reply
}

/// `request` when it is an object with a non-empty string `tenant_id`, the one field every
/// order step carries; else the message naming it.
fn with_tenant(request: Value) -> Result<Value, String> {
    let Some(fields) = request.as_object() else {
        return Err("the body must be a JSON object".into());
    };
    match fields.get("tenant_id").and_then(Value::as_str) {
        Some(tenant) if !tenant.is_empty() => Ok(request),
        _ => Err("`tenant_id` must be a non-empty string".into()),
    }
}

fn applied_reply(id: &str) -> Response {
    (StatusCode::OK, Json(json!({"status": "applied", "id": id}))).into_response()
}

/// Every request applied through `api` in arrival order; with `tenant_id=<id>`, only that
/// tenant's.
async fn list(
    api: AppliedApi,
    State(app): State<Arc<Sandbox>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(parameter) = query.keys().find(|key| *key != "tenant_id") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("unknown query parameter `{parameter}`; filter with tenant_id"),
        );
    }
    let tenant = query.get("tenant_id").map(String::as_str);
    let orders = lock(&app.orders);
    let applied: Vec<&AppliedRequest> = orders.apis[api as usize]
        .applied
        .iter()
        .filter(|step| tenant.is_none_or(|tenant| step.body["tenant_id"] == tenant))
        .collect();
    Json(json!({ "applied": applied })).into_response()
}
