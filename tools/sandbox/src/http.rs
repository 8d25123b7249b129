//! Request-body parsing and error replies shared by the handlers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// An `{"error":{"code","message"}}` answer, the shape of the billing, CRM, order-step,
/// gateway and admin layers' refusals.
pub(crate) struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// A [`Refusal`] rendered.
pub(crate) fn error(
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
) -> Response {
    Refusal::new(status, code, message).into_response()
}

/// The body as a JSON value, or a message saying why it is not JSON.
pub(crate) fn json_value(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|err| format!("body is not valid JSON: {err}"))
}

/// `value` as a `T`, or a message naming the offending field.
pub(crate) fn typed<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        // At the root serde already names the field ("missing field `currency`").
        if path == "." {
            err.inner().to_string()
        } else {
            format!("`{path}`: {}", err.inner())
        }
    })
}

/// The body parsed as a `T` in one step, for bodies that are not compared as values.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    typed(json_value(body)?)
}
