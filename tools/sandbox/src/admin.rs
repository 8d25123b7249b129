//! The admin API tests and the demo steer the sandbox with: faults, token, refused systems,
//! values each system refuses, CRM customers, ERP periods and withholding, request counts, and
//! reset. It wants the admin token, not the APIs'.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use backbone_core::Secret;

use crate::config::FaultSettings;
use crate::faults::{Control, Faults};
use crate::http::{parse, Refusal};
use crate::money::is_period;
use crate::{billing, crm, erp, lock, orders, Sandbox, System};

pub(crate) fn routes() -> Router<Arc<Sandbox>> {
    Router::new()
        .route("/admin/faults", get(faults))
        .route(
            "/admin/faults/{system}",
            put(set_faults).delete(clear_faults),
        )
        .route("/admin/token", put(set_token))
        .route("/admin/forbidden/{system}", put(set_forbidden))
        .route("/admin/refused/{system}", put(set_refused))
        .route("/admin/crm/customers", put(seed_customers))
        .route("/admin/erp/periods/{period}/close", post(close_period))
        .route("/admin/erp/withhold", put(withhold).delete(release))
        .route("/admin/stats", get(stats))
        .route("/admin/reset", post(reset))
}

/// Lets a request through only with `Authorization: Bearer <admin token>`.
pub(crate) async fn gate(
    State(app): State<Arc<Sandbox>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if presented == Some(app.admin_token.expose()) {
        return next.run(request).await;
    }
    let body = json!({"error": {"code": "unauthorized", "message": "the admin API wants the admin token"}});
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

type Reply = Result<StatusCode, Refusal>;

fn bad_request(message: String) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

fn system(name: &str) -> Result<System, Refusal> {
    name.parse()
        .map_err(|message: String| Refusal::new(StatusCode::NOT_FOUND, "not_found", message))
}

async fn faults(State(app): State<Arc<Sandbox>>) -> Json<Value> {
    let mut control = app.control();
    let by_system: Map<String, Value> = System::ALL
        .into_iter()
        .map(|system| (system.to_string(), json!(control.faults(system))))
        .collect();
    Json(Value::Object(by_system))
}

async fn set_faults(
    State(app): State<Arc<Sandbox>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let system = system(&name)?;
    let faults: Faults = parse(&body).map_err(bad_request)?;
    if let Some(field) = faults.invalid_rate() {
        return Err(bad_request(format!(
            "`faults.{system}.{field}` must be between 0 and 1"
        )));
    }
    app.control().set_faults(system, faults);
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_faults(State(app): State<Arc<Sandbox>>, Path(name): Path<String>) -> Reply {
    app.control().set_faults(system(&name)?, Faults::default());
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenChange {
    token: String,
}

async fn set_token(State(app): State<Arc<Sandbox>>, body: Bytes) -> Reply {
    let change: TokenChange = parse(&body).map_err(bad_request)?;
    if change.token.is_empty() {
        return Err(bad_request("`token` must not be empty".into()));
    }
    app.control().token = Secret::from(change.token);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Forbidden {
    forbidden: bool,
}

async fn set_forbidden(
    State(app): State<Arc<Sandbox>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let system = system(&name)?;
    let change: Forbidden = parse(&body).map_err(bad_request)?;
    app.control().set_forbidden(system, change.forbidden);
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the values `system` refuses with the body's list of strings; `[]` lifts them.
async fn set_refused(
    State(app): State<Arc<Sandbox>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let system = system(&name)?;
    let values: BTreeSet<String> = parse(&body).map_err(bad_request)?;
    app.control().set_refused(system, values);
    Ok(StatusCode::NO_CONTENT)
}

/// Adds the body's customers to the CRM, or replaces the status of those it knows.
async fn seed_customers(State(app): State<Arc<Sandbox>>, body: Bytes) -> Reply {
    let customers: Vec<crm::Customer> = parse(&body).map_err(bad_request)?;
    lock(&app.customers).seed(customers).map_err(bad_request)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn close_period(State(app): State<Arc<Sandbox>>, Path(period): Path<String>) -> Reply {
    if !is_period(&period) {
        return Err(bad_request(format!(
            "expected a period like 2024-01, got {period:?}"
        )));
    }
    lock(&app.erp).closed_periods.insert(period);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Withhold {
    legal_entity_id: String,
}

async fn withhold(State(app): State<Arc<Sandbox>>, body: Bytes) -> Reply {
    let withhold: Withhold = parse(&body).map_err(bad_request)?;
    lock(&app.erp).withheld = Some(withhold.legal_entity_id);
    Ok(StatusCode::NO_CONTENT)
}

async fn release(State(app): State<Arc<Sandbox>>) -> StatusCode {
    lock(&app.erp).withheld = None;
    StatusCode::NO_CONTENT
}

async fn stats(State(app): State<Arc<Sandbox>>) -> Json<Value> {
    let mut stats = Map::new();
    {
        let mut control = app.control();
        for system in System::ALL {
            stats.insert(system.to_string(), json!(control.responses(system)));
        }
    }
    // Per system: its own records, and the order steps applied through it.
    let applied: Map<String, Value> = System::ALL
        .into_iter()
        .map(|system| {
            let own = match system {
                System::Billing => lock(&app.billing).applied() as u64,
                System::Crm => lock(&app.crm).applied(),
                System::Erp => lock(&app.erp).applied() as u64,
                System::Platform | System::Sales => 0,
            };
            let steps = lock(&app.orders).applied(system) as u64;
            (system.to_string(), json!(own + steps))
        })
        .collect();
    stats.insert("applied".to_owned(), Value::Object(applied));
    Json(Value::Object(stats))
}

/// Back to the configured start: no data, no faults or refused values, the configured token
/// and closed periods.
async fn reset(State(app): State<Arc<Sandbox>>) -> StatusCode {
    *app.control() = Control::new(&app.token, &FaultSettings::default());
    *lock(&app.billing) = billing::Ledger::default();
    *lock(&app.crm) = crm::Accounts::default();
    *lock(&app.customers) = crm::Customers::default();
    *lock(&app.erp) = erp::Journal::new(&app.config.erp.closed_periods);
    *lock(&app.orders) = orders::OrderSteps::default();
    StatusCode::NO_CONTENT
}
