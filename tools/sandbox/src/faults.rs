//! Fault injection and the gateway in front of each system: authentication, outages, latency,
//! throttling, transient errors and lost responses, plus the per-status request counts, and
//! the values each system refuses as a business error.
//!
//! Faults act on delivery calls (`POST`) only. Reads (`GET`) need the token but are never
//! faulted or counted: they are the window tests look through, not a path under test.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use backbone_core::Secret;

use crate::config::FaultSettings;
use crate::http::error;
use crate::{Sandbox, System};

/// What goes wrong with one system's delivery calls. Rates are fractions of calls, in 0..=1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Calls answered 503 before anything is applied.
    pub error_rate: f64,
    /// Calls applied and then answered 504, as if the response were lost on the way back:
    /// only a retry carrying the same idempotency key or external id avoids a double apply.
    pub lost_response_rate: f64,
    /// Calls answered 429 with `Retry-After: retry_after_seconds`.
    pub throttle_rate: f64,
    /// `Retry-After` of throttled calls.
    pub retry_after_seconds: u64,
    /// Delay added to every call, before it is applied.
    pub latency_ms: u64,
    /// Delay between applying a call and answering it: a caller that crashes meanwhile never
    /// learns the call was applied.
    pub answer_delay_ms: u64,
    /// When above 0, every call is answered 503 for this long from when the faults are set.
    /// Read back, it is the time the outage still has to run.
    pub outage_seconds: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            lost_response_rate: 0.0,
            throttle_rate: 0.0,
            retry_after_seconds: 1,
            latency_ms: 0,
            answer_delay_ms: 0,
            outage_seconds: 0,
        }
    }
}

impl Faults {
    /// The name of the first rate outside 0..=1, if any.
    pub fn invalid_rate(&self) -> Option<&'static str> {
        [
            ("error_rate", self.error_rate),
            ("lost_response_rate", self.lost_response_rate),
            ("throttle_rate", self.throttle_rate),
        ]
        .into_iter()
        .find(|(_, rate)| !(0.0..=1.0).contains(rate))
        .map(|(name, _)| name)
    }
}

/// Runtime state of the gateway: the token, and per system its faults, refused values and
/// counts.
pub(crate) struct Control {
    pub(crate) token: Secret,
    systems: [SystemControl; System::ALL.len()],
}

#[derive(Default)]
struct SystemControl {
    faults: Faults,
    outage_until: Option<Instant>,
    forbidden: bool,
    /// Start of the current one-second rate-limit window and calls counted in it.
    window: Option<(Instant, u32)>,
    responses: BTreeMap<u16, u64>,
    /// Values whose presence anywhere in a request body makes the system refuse it.
    refused: BTreeSet<String>,
}

impl Control {
    pub(crate) fn new(token: &Secret, faults: &FaultSettings) -> Self {
        let mut control = Self {
            token: token.clone(),
            systems: Default::default(),
        };
        for system in System::ALL {
            control.set_faults(system, faults.get(system));
        }
        control
    }

    fn system(&mut self, system: System) -> &mut SystemControl {
        &mut self.systems[system as usize]
    }

    /// Replaces the faults of `system`; a nonzero `outage_seconds` starts an outage now.
    pub(crate) fn set_faults(&mut self, system: System, faults: Faults) {
        let state = self.system(system);
        state.faults = faults;
        state.outage_until = (faults.outage_seconds > 0)
            .then(|| Instant::now() + Duration::from_secs(faults.outage_seconds));
    }

    /// The faults of `system` with the outage time still to run.
    pub(crate) fn faults(&mut self, system: System) -> Faults {
        let state = self.system(system);
        let remaining = state
            .outage_until
            .map(|until| until.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        Faults {
            outage_seconds: remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0),
            ..state.faults
        }
    }

    pub(crate) fn set_forbidden(&mut self, system: System, forbidden: bool) {
        self.system(system).forbidden = forbidden;
    }

    /// Replaces the values `system` refuses; none lifts the refusal.
    pub(crate) fn set_refused(&mut self, system: System, values: BTreeSet<String>) {
        self.system(system).refused = values;
    }

    /// The answer of `system` to a request whose `body` holds a refused string value (keys
    /// are not looked at): a business error in a 200, as the systems an order workflow calls
    /// answer them, so a caller must read the body and not only the status. `None` when the
    /// body holds no refused value.
    pub(crate) fn business_refusal(&mut self, system: System, body: &Value) -> Option<Response> {
        let value = first_refused(body, &self.system(system).refused)?;
        tracing::debug!(%system, value, "refused value");
        let error = json!({"code": "refused", "message": format!("{value} is refused")});
        let body = json!({"status": "failed", "error": error});
        Some((StatusCode::OK, Json(body)).into_response())
    }

    /// Counts of delivery calls of `system` by HTTP status.
    pub(crate) fn responses(&mut self, system: System) -> &BTreeMap<u16, u64> {
        &self.system(system).responses
    }

    /// Counts one more call in the current window; true when that exceeds `limit` per second.
    fn over_rate_limit(&mut self, system: System, limit: u32) -> bool {
        if limit == 0 {
            return false;
        }
        let now = Instant::now();
        let window = &mut self.system(system).window;
        match window {
            Some((start, count)) if now.duration_since(*start) < Duration::from_secs(1) => {
                *count += 1;
                *count > limit
            }
            _ => {
                *window = Some((now, 1));
                false
            }
        }
    }
}

/// What the gateway's first checks decided.
enum Admission {
    /// Refused before any fault was drawn.
    Refused(Response),
    /// A read, let through unfaulted.
    Read,
    /// A delivery call, to run with these faults.
    Delivery(Faults),
}

/// The gateway of one system, as middleware state.
#[derive(Clone)]
pub(crate) struct Gate {
    pub(crate) app: Arc<Sandbox>,
    pub(crate) system: System,
}

/// Middleware running the gateway's checks around a system's handlers, in the order real
/// gateways apply them: auth, outage, latency, throttling, errors, the call, a late or lost response.
pub(crate) async fn gate(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    // A search is a read, though POSTed for the length of what it asks about.
    let delivery = request.method() == Method::POST && !request.uri().path().ends_with("/search");
    let response = gate.pass(request, next, delivery).await;
    if delivery {
        let mut control = gate.app.control();
        let status = response.status().as_u16();
        *control
            .system(gate.system)
            .responses
            .entry(status)
            .or_default() += 1;
    }
    response
}

impl Gate {
    async fn pass(&self, request: Request, next: Next, delivery: bool) -> Response {
        let faults = match self.admit(request.headers(), delivery) {
            Admission::Refused(refusal) => return refusal,
            Admission::Read => return next.run(request).await,
            Admission::Delivery(faults) => faults,
        };
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        let limit = match self.system {
            System::Crm => self.app.config.crm.rate_limit_per_second,
            System::Billing | System::Erp | System::Platform | System::Sales => 0,
        };
        if self.app.control().over_rate_limit(self.system, limit) {
            return self.throttle(1, "rate limit exceeded");
        }
        if fastrand::f64() < faults.throttle_rate {
            return self.throttle(faults.retry_after_seconds, "injected throttling");
        }
        if fastrand::f64() < faults.error_rate {
            return self.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "injected error",
            );
        }
        let response = next.run(request).await;
        if faults.answer_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.answer_delay_ms)).await;
        }
        // Whatever the system answered, applied or not, the caller never hears it.
        if fastrand::f64() < faults.lost_response_rate {
            return self.refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                "injected lost response",
            );
        }
        response
    }

    /// The checks made under the lock, which must not be held across the latency sleep.
    fn admit(&self, headers: &HeaderMap, delivery: bool) -> Admission {
        let mut control = self.app.control();
        if !authorized(&control.token, headers) {
            let mut refusal = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid bearer token",
            );
            refusal
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Admission::Refused(refusal);
        }
        let state = control.system(self.system);
        if state.forbidden {
            return Admission::Refused(error(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the token may not use the {} API", self.system),
            ));
        }
        if !delivery {
            return Admission::Read;
        }
        if state
            .outage_until
            .is_some_and(|until| until > Instant::now())
        {
            return Admission::Refused(self.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "injected outage",
            ));
        }
        Admission::Delivery(state.faults)
    }

    fn refuse(&self, status: StatusCode, code: &'static str, what: &str) -> Response {
        tracing::debug!(system = %self.system, %status, what, "call refused");
        error(status, code, format!("{what} in the {} API", self.system))
    }

    fn throttle(&self, retry_after_seconds: u64, what: &str) -> Response {
        let mut response = self.refuse(StatusCode::TOO_MANY_REQUESTS, "rate_limited", what);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
        response
    }
}

/// The first string in `value`, searched depth first through arrays and object values, that
/// `refused` holds.
fn first_refused<'a>(value: &'a Value, refused: &BTreeSet<String>) -> Option<&'a str> {
    match value {
        Value::String(text) => refused.contains(text).then_some(text.as_str()),
        Value::Array(items) => items.iter().find_map(|item| first_refused(item, refused)),
        Value::Object(fields) => fields
            .values()
            .find_map(|field| first_refused(field, refused)),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

fn authorized(token: &Secret, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|presented| presented == token.expose())
}
