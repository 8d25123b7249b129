//! Errors as Confluent clients expect them: an HTTP status and a JSON body with an
//! `error_code` and a `message`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// The media type of every registry response.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// An error answer of the REST API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Confluent's error code (e.g. 40401).
    pub code: u32,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: String) -> Self {
        Self {
            status,
            code,
            message,
        }
    }

    /// 40401.
    pub fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }

    /// 40402.
    pub fn version_not_found(version: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found."),
        )
    }

    /// 40403.
    pub fn schema_not_found(detail: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {detail} not found"),
        )
    }

    /// 40404: the subject is soft-deleted.
    pub fn subject_soft_deleted(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40404,
            format!(
                "Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
            ),
        )
    }

    /// 40405: a permanent delete needs a soft delete first.
    pub fn subject_not_soft_deleted(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40405,
            format!("Subject '{subject}' was not deleted first before being permanently deleted"),
        )
    }

    /// 40406: the version is soft-deleted.
    pub fn version_soft_deleted(subject: &str, version: u32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40406,
            format!("Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"),
        )
    }

    /// 40407: a permanent delete of a version needs a soft delete first.
    pub fn version_not_soft_deleted(subject: &str, version: u32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40407,
            format!("Subject '{subject}' Version {version} was not deleted first before being permanently deleted"),
        )
    }

    /// 40408: no compatibility level set on the subject.
    pub fn subject_level_not_configured(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }

    /// 409: incompatible with an earlier version.
    pub fn incompatible(subject: &str, details: &[String]) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                details.join(", ")
            ),
        )
    }

    /// 42201.
    pub fn invalid_schema(detail: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {detail}"),
        )
    }

    /// 42202.
    pub fn invalid_version(version: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
            format!(
                "The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
            ),
        )
    }

    /// 42203.
    pub fn invalid_compatibility_level(level: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!(
                "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive; got '{level}'"
            ),
        )
    }

    /// 400 for a body that is not the JSON the endpoint takes.
    pub fn bad_request(detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            400,
            format!("Unrecognized request body: {detail}"),
        )
    }

    /// 404 for a path the API does not have.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found".to_owned())
    }

    /// 405 for a method the path does not take.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            405,
            "HTTP 405 Method Not Allowed".to_owned(),
        )
    }

    /// 40101: no credentials, or credentials no user of the users file has.
    pub fn unauthorized(detail: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            40101,
            format!("Unauthorized: {detail}"),
        )
    }

    /// 40301: the user's role does not allow the request.
    pub fn forbidden(detail: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, 40301, format!("Forbidden: {detail}"))
    }

    /// 40801: the request was not answered within `registry.request_timeout`.
    pub fn request_timeout(limit: &str) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            40801,
            format!("The request was not answered within {limit} (registry.request_timeout)"),
        )
    }

    /// 40910 (Backbone's own): a permanent delete without `force=true`. Permanently deleting
    /// frees schema ids that stored records may still carry; such records would no longer
    /// decode anywhere.
    pub fn permanent_delete_unforced(what: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            40910,
            format!(
                "Permanently deleting {what} makes records written with its schema ids \
                 unreadable; add force=true once no stored record uses them"
            ),
        )
    }

    /// 41301: the body is larger than `registry.max_request_bytes`.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            41301,
            format!("The request body is larger than {limit} bytes (registry.max_request_bytes)"),
        )
    }

    /// 42901: `registry.max_concurrent_requests` are being served already.
    pub fn busy(limit: usize) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            42901,
            format!(
                "{limit} requests are being served already (registry.max_concurrent_requests); \
                 retry later"
            ),
        )
    }

    /// 50001: the backing topic failed.
    pub fn store(detail: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            format!("Error in the backend data store: {detail}"),
        )
    }

    /// 50002: the backing topic did not answer in time.
    pub fn timeout(detail: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50002,
            format!("Operation timed out: {detail}"),
        )
    }
}

impl From<crate::log::LogError> for ApiError {
    fn from(err: crate::log::LogError) -> Self {
        match err {
            crate::log::LogError::Timeout { .. } => Self::timeout(&err.to_string()),
            other => Self::store(&other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error_code": self.code, "message": self.message });
        (
            self.status,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            body.to_string(),
        )
            .into_response()
    }
}
