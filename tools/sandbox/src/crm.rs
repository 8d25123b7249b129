//! The CRM API: accounts upserted in batches by external id, the newest `as_of` winning. An
//! equal `as_of` is stale too, so a replayed batch changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::http::{error, parse, typed};
use crate::{lock, Sandbox};

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
