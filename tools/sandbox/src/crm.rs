//! The CRM API: accounts upserted in batches by external id, the newest `as_of` winning. An
//! equal `as_of` is stale too, so a replayed batch changes nothing. Customers, seeded through
//! the admin API, are looked up by id for the status an order workflow checks before it acts.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::http::{error, json_value, parse, typed};
use crate::{lock, Sandbox, System};

/// An account as the CRM holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAccount {
    /// The caller's id of the account.
    pub external_id: String,
    /// Time of the version held, in microseconds since the epoch.
    pub as_of: i64,
    /// Fields of the version held.
    pub fields: Map<String, Value>,
    /// Writes applied: 1 when created, one more per update. A replay that double-applied
    /// would show here.
    pub version: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    records: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    external_id: String,
    as_of: i64,
    fields: Map<String, Value>,
}

/// Accounts by external id.
#[derive(Default)]
pub(crate) struct Accounts(BTreeMap<String, StoredAccount>);

impl Accounts {
    /// Writes applied over all accounts.
    pub(crate) fn applied(&self) -> u64 {
        self.0.values().map(|account| account.version).sum()
    }

    fn upsert(&mut self, record: Record) -> &'static str {
        match self.0.get_mut(&record.external_id) {
            None => {
                let account = StoredAccount {
                    external_id: record.external_id.clone(),
                    as_of: record.as_of,
                    fields: record.fields,
                    version: 1,
                };
                self.0.insert(record.external_id, account);
                "created"
            }
            Some(account) if account.as_of < record.as_of => {
                account.as_of = record.as_of;
                account.fields = record.fields;
                account.version += 1;
                "updated"
            }
            Some(_) => "stale",
        }
    }
}

pub(crate) async fn upsert_batch(State(app): State<Arc<Sandbox>>, body: Bytes) -> Response {
    let batch: BatchRequest = match parse(&body) {
        Ok(batch) => batch,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_request", message),
    };
    let max = app.config.crm.max_batch;
    if batch.records.len() > max {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("{} records; at most {max} per batch", batch.records.len()),
        );
    }
    if batch.records.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`records` must not be empty",
        );
    }
    let mut accounts = lock(&app.crm);
    let results: Vec<Value> = batch
        .records
        .into_iter()
        .map(|record| {
            // Named in the result even when the rest of the record is malformed.
            let external_id = record
                .get("external_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let rejected = |message: String| {
                json!({"external_id": external_id, "status": "rejected", "error": message})
            };
            match typed::<Record>(record) {
                Err(message) => rejected(message),
                Ok(record) if record.external_id.is_empty() => {
                    rejected("`external_id` must not be empty".into())
                }
                Ok(record) => json!({"external_id": external_id, "status": accounts.upsert(record)}),
            }
        })
        .collect();
    (StatusCode::OK, Json(json!({"results": results}))).into_response()
}

pub(crate) async fn list(State(app): State<Arc<Sandbox>>) -> Json<Value> {
    let accounts = lock(&app.crm);
    Json(json!({"accounts": accounts.0.values().collect::<Vec<_>>()}))
}

/// A customer of a tenant and its status (`active`, `inactive` or any other word), as seeded
/// through the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    /// Tenant the customer belongs to.
    pub tenant_id: String,
    /// The customer's id within the tenant.
    pub customer_id: String,
    /// What a lookup answers about it.
    pub status: String,
}

impl Customer {
    /// A customer of `tenant_id` with `status`.
    pub fn new(tenant_id: &str, customer_id: &str, status: &str) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            customer_id: customer_id.to_owned(),
            status: status.to_owned(),
        }
    }
}

/// Customer statuses by tenant and customer id.
#[derive(Default)]
pub(crate) struct Customers(BTreeMap<(String, String), String>);

impl Customers {
    /// Adds `customers` or replaces the status of those already known; the message naming the
    /// first one with an empty field, before any is stored.
    pub(crate) fn seed(&mut self, customers: Vec<Customer>) -> Result<(), String> {
        for (i, customer) in customers.iter().enumerate() {
            let fields = [
                ("tenant_id", &customer.tenant_id),
                ("customer_id", &customer.customer_id),
                ("status", &customer.status),
            ];
            if let Some((field, _)) = fields.iter().find(|(_, value)| value.is_empty()) {
                return Err(format!("`[{i}].{field}` must not be empty"));
            }
        }
        for customer in customers {
            let id = (customer.tenant_id, customer.customer_id);
            self.0.insert(id, customer.status);
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Lookup {
    tenant_id: String,
    customer_id: String,
}

/// `POST /crm/v1/customers/lookup` with `{"tenant_id","customer_id"}`: the customer's status,
/// or 404 when the CRM does not know it. It changes nothing, but the gateway treats it as a
/// call under test, faults and all: a workflow step depends on its answer.
pub(crate) async fn look_up_customer(State(app): State<Arc<Sandbox>>, body: Bytes) -> Response {
    let parsed = json_value(&body).and_then(|request| {
        let lookup: Lookup = typed(request.clone())?;
        let required = [
            ("tenant_id", &lookup.tenant_id),
            ("customer_id", &lookup.customer_id),
        ];
        match required.iter().find(|(_, value)| value.is_empty()) {
            Some((field, _)) => Err(format!("`{field}` must not be empty")),
            None => Ok((request, lookup)),
        }
    });
    let (request, lookup) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_request", message),
    };
    if let Some(refusal) = app.control().business_refusal(System::Crm, &request) {
        return refusal;
    }
    let customers = lock(&app.customers);
    let id = (lookup.tenant_id, lookup.customer_id);
    match customers.0.get(&id) {
        Some(status) => {
            let body = json!({"customer_id": id.1, "status": status});
            (StatusCode::OK, Json(body)).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            "customer_not_found",
            format!("no customer `{}` in tenant `{}`", id.1, id.0),
        ),
    }
}
