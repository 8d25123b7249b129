//! `POST /v1/events`: authentication, limits, one CloudEvent or a batch, and the answer.
//!
//! Statuses: 202 when every event was acknowledged; 207 when some were and others refused
//! (each result says which); 422 when every event was refused; 400 for a body that is not
//! JSON of the right shape; 401 for a missing, wrong or revoked key; 413 for a body
//! (`body_too_large`) or batch (`batch_too_large`) over its limit; 415 for another content type; 429 with `Retry-After` when the key's rate or
//! daily quota is spent; 503 with `Retry-After` when the broker did not acknowledge an event in
//! time or the registry could not say the contract's id. A 503's results still say which events
//! were acknowledged; sending the whole request again is safe, the pipeline deduplicates by id.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use backbone_core::endpoint::{self, Readiness};
use backbone_schemas::wire::{encode_body, frame};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::{json, Map, Value as JsonValue};

use crate::convert::{rfc3339_micros, FieldError};
use crate::keys::{self, ProducerKey, Refused};
use crate::limits::Throttled;
use crate::{Gateway, Route};

const SINGLE: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";
const PLAIN: &str = "application/json";

/// The API, `/metrics` and `/health` on one port.
pub(crate) fn router(gateway: Arc<Gateway>) -> Router {
    let limit = gateway.settings.max_request_bytes;
    let readiness = Readiness::new();
    readiness.set_ready(true);
    let observability = endpoint::router(gateway.metrics.registry.clone(), readiness);
    Router::new()
        .route("/v1/events", post(publish))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gateway)
        .merge(observability)
}

/// A refusal of the whole request.
fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": code, "message": message.into()}});
    (status, Json(body)).into_response()
}

fn retry_after(mut response: Response, seconds: u64) -> Response {
    if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn publish(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let keys = gateway
        .keys
        .read()
        .map(|k| Arc::clone(&k))
        .unwrap_or_default();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let key = match keys.authenticate(token) {
        Ok(key) => key,
        Err(refused) => {
            let (code, message) = match refused {
                Refused::Unknown => (
                    "unauthorized",
                    "a valid API key is required: Authorization: Bearer bbk_...",
                ),
                Refused::Revoked => ("key_revoked", "this API key was revoked"),
            };
            gateway.metrics.rejected("unknown", code);
            let mut response = refuse(StatusCode::UNAUTHORIZED, code, message);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    };
    let response = match body {
        Ok(body) => answer(&gateway, key, &headers, &body).await,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the body is over {} bytes",
                gateway.settings.max_request_bytes
            ),
        ),
        Err(rejection) => refuse(rejection.status(), "unreadable_body", rejection.body_text()),
    };
    gateway
        .metrics
        .observe(&key.id, started.elapsed().as_secs_f64());
    response
}

async fn answer(
    gateway: &Gateway,
    key: &ProducerKey,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let batch = match content_type.as_str() {
        SINGLE | PLAIN => false,
        BATCH => true,
        other => {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_type",
                format!("content type {other:?}: send {SINGLE} (one event) or {BATCH} (an array)"),
            )
        }
    };
    let parsed: JsonValue = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(err) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not JSON: {err}"),
            )
        }
    };
    let events = match (batch, parsed) {
        (false, event @ JsonValue::Object(_)) => vec![event],
        (true, JsonValue::Array(events)) if !events.is_empty() => events,
        (true, JsonValue::Array(_)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "empty_batch",
                "the batch holds no event",
            )
        }
        (false, _) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "malformed_event",
                "a single event is a JSON object",
            )
        }
        (true, _) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "malformed_batch",
                "a batch is a JSON array of events",
            )
        }
    };
    let limit = gateway.settings.max_batch_events;
    if events.len() > limit {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("{} events in the batch; at most {limit}", events.len()),
        );
    }
    let now = SystemTime::now();
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let count = events.len() as u64;
    if let Err(throttled) = gateway.admission.admit(
        &key.id,
        count,
        gateway.allowance(key),
        Instant::now(),
        now_secs,
    ) {
        let (limit, wait, message) = match throttled {
            Throttled::Rate(wait) => ("rate", wait, "the key's rate is spent"),
            Throttled::Quota(wait) => ("quota", wait, "the key's daily quota is spent"),
        };
        gateway.metrics.throttled(&key.id, limit);
        let response = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("{limit}_limited"),
            message,
        );
        return retry_after(response, wait.as_secs_f64().ceil() as u64);
    }
    let request_trace = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let produced_at = time::OffsetDateTime::from(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut results = Vec::with_capacity(events.len());
    let mut pending = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let id = event
            .get("id")
            .and_then(JsonValue::as_str)
            .unwrap_or_default();
        match record(gateway, key, event, request_trace, &produced_at).await {
            Ok(Ready::Record(record)) => {
                results.push(json!({"index": index, "id": id, "status": "accepted"}));
                pending.push((index, record));
            }
            Ok(Ready::Unavailable(message)) => {
                results.push(json!({"index": index, "id": id, "status": "failed", "reason": "registry_unavailable", "message": message}));
            }
            Err(err) => {
                gateway.metrics.rejected(&key.id, err.reason);
                results.push(json!({"index": index, "id": id, "status": "rejected", "reason": err.reason, "field": err.path, "message": err.message}));
            }
        }
    }
    let sends = pending.iter().map(|(_, record)| {
        let mut headers = OwnedHeaders::new();
        headers = headers.insert(Header {
            key: "traceparent",
            value: Some(record.traceparent.as_bytes()),
        });
        gateway.producer.send(
            FutureRecord::to(&record.topic)
                .key(&record.key)
                .payload(&record.value)
                .headers(headers),
            gateway.settings.produce_timeout,
        )
    });
    let acks = futures::future::join_all(sends).await;
    let mut accepted = 0u64;
    for ((index, _), ack) in pending.iter().zip(acks) {
        match ack {
            Ok(delivery) => {
                accepted += 1;
                results[*index]["partition"] = json!(delivery.partition);
                results[*index]["offset"] = json!(delivery.offset);
            }
            Err((err, _)) => {
                results[*index]["status"] = json!("failed");
                results[*index]["reason"] = json!("broker_unavailable");
                results[*index]["message"] = json!(format!("not acknowledged: {err}"));
            }
        }
    }
    gateway.metrics.accepted(&key.id, accepted);
    let failed = results.iter().filter(|r| r["status"] == "failed").count();
    let rejected = results.iter().filter(|r| r["status"] == "rejected").count();
    let status = if failed > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else if rejected == 0 {
        StatusCode::ACCEPTED
    } else if accepted > 0 {
        StatusCode::MULTI_STATUS
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let body =
        json!({"accepted": accepted, "rejected": rejected, "failed": failed, "results": results});
    let response = (status, Json(body)).into_response();
    if failed > 0 {
        retry_after(response, 1)
    } else {
        response
    }
}

/// An event ready to produce.
struct Produce {
    topic: String,
    key: String,
    value: Vec<u8>,
    traceparent: String,
}

enum Ready {
    Record(Produce),
    /// The event is fine, but the registry could not say its contract's id.
    Unavailable(String),
}

fn attribute<'e>(event: &'e Map<String, JsonValue>, name: &str) -> Result<&'e str, FieldError> {
    match event.get(name) {
        Some(JsonValue::String(text)) if !text.is_empty() => Ok(text),
        Some(JsonValue::String(_)) | None => Err(FieldError {
            path: name.to_owned(),
            reason: "missing_attribute",
            message: format!("the CloudEvents attribute `{name}` is required"),
        }),
        Some(_) => Err(FieldError {
            path: name.to_owned(),
            reason: "wrong_type",
            message: format!("`{name}` must be a string"),
        }),
    }
}

fn refused(path: &str, reason: &'static str, message: String) -> FieldError {
    FieldError {
        path: path.to_owned(),
        reason,
        message,
    }
}

/// The record `event` becomes, or why it cannot.
async fn record(
    gateway: &Gateway,
    key: &ProducerKey,
    event: &JsonValue,
    request_trace: Option<&str>,
    produced_at: &str,
) -> Result<Ready, FieldError> {
    let Some(event) = event.as_object() else {
        return Err(refused(
            "",
            "malformed_event",
            "an event is a JSON object".to_owned(),
        ));
    };
    let version = attribute(event, "specversion")?;
    if version != "1.0" {
        return Err(refused(
            "specversion",
            "unsupported_specversion",
            format!("{version:?}: only CloudEvents 1.0 is taken"),
        ));
    }
    let id = attribute(event, "id")?;
    let source = attribute(event, "source")?;
    let kind = attribute(event, "type")?;
    let route: &Arc<Route> = gateway.routes.get(kind).ok_or_else(|| {
        refused(
            "type",
            "unknown_type",
            format!("no contract takes events of type {kind:?}"),
        )
    })?;
    if !key.event_types.iter().any(|t| t == kind) {
        return Err(refused(
            "type",
            "type_not_allowed",
            format!("this key may not publish {kind:?}"),
        ));
    }
    if let Some(tenant) = event.get("tenantid") {
        if tenant.as_str() != Some(key.tenant.as_str()) {
            return Err(refused(
                "tenantid",
                "tenant_not_allowed",
                format!("this key publishes for tenant {:?} only", key.tenant),
            ));
        }
    }
    let time = attribute(event, "time")?;
    rfc3339_micros(time).map_err(|message| refused("time", "invalid_timestamp", message))?;
    if let Some(content_type) = event.get("datacontenttype") {
        if content_type.as_str().is_none_or(|t| !t.starts_with(PLAIN)) {
            return Err(refused(
                "datacontenttype",
                "unsupported_content_type",
                "data must be application/json".to_owned(),
            ));
        }
    }
    let data = event.get("data").ok_or_else(|| {
        refused(
            "data",
            "missing_attribute",
            "the event carries no `data`".to_owned(),
        )
    })?;
    let traceparent = event
        .get("traceparent")
        .and_then(JsonValue::as_str)
        .or(request_trace)
        .map_or_else(new_traceparent, str::to_owned);
    let metadata = json!({
        "tenant_id": key.tenant,
        "event_id": id,
        "source": source,
        "type": kind,
        "occurred_at": time,
        "produced_at": produced_at,
        "trace": {"traceparent": traceparent, "tracestate": event.get("tracestate")},
        "schema_version": null,
    });
    let value = route.converter.record(data, vec![("metadata", metadata)])?;
    let identity = data
        .get(&route.key_field)
        .and_then(JsonValue::as_str)
        .ok_or_else(|| {
            refused(
                &format!("data.{}", route.key_field),
                "missing_field",
                "the record key needs it".to_owned(),
            )
        })?;
    let schema_id = match contract_id(gateway, route).await {
        Ok(id) => id,
        Err(message) => return Ok(Ready::Unavailable(message)),
    };
    let body = encode_body(route.converter.schema(), value)
        .map_err(|e| refused("data", "contract_violation", e.to_string()))?;
    Ok(Ready::Record(Produce {
        topic: route.topic.clone(),
        key: format!("{}:{identity}", key.tenant),
        value: frame(schema_id, &body),
        traceparent,
    }))
}

/// The registry's id for the route's contract, asked once and remembered.
async fn contract_id(gateway: &Gateway, route: &Route) -> Result<u32, String> {
    let mut id = route.id.lock().await;
    if let Some(id) = *id {
        return Ok(id);
    }
    match gateway.registry.lookup(&route.subject, &route.text).await {
        Ok(Some((found, _))) => {
            *id = Some(found);
            Ok(found)
        }
        Ok(None) => Err(format!(
            "the contract of {} is not registered under {}; register the contracts first",
            route.topic, route.subject
        )),
        Err(err) => Err(format!("the registry did not answer: {err}")),
    }
}

/// A trace for an event that brought none: a fresh trace id and span id, sampled.
fn new_traceparent() -> String {
    // Without randomness, a fixed but valid trace (W3C forbids only all-zero ids).
    let hex = keys::hex(&keys::random_bytes::<24>().unwrap_or([1; 24]));
    format!("00-{}-{}-01", &hex[..32], &hex[32..])
}
