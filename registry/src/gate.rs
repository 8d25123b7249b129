//! What every request passes before a handler sees it: the concurrency limit, the request
//! timeout, the body limit, and, when a users file is set, basic authentication and the role
//! the request needs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::users::{Role, Users};

/// The limits and the users, shared by every request.
pub struct Gate {
    users: Option<Arc<Users>>,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    request_timeout: Duration,
    max_request_bytes: u64,
}

impl Gate {
    /// A gate with these limits; `users` `None` lets anyone do anything.
    pub fn new(
        users: Option<Users>,
        max_concurrent: usize,
        request_timeout: Duration,
        max_request_bytes: u64,
    ) -> Self {
        Self {
            users: users.map(Arc::new),
            permits: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            request_timeout,
            max_request_bytes,
        }
    }

    /// The body limit, for the router's own limit on bodies of unannounced length.
    pub fn max_request_bytes(&self) -> u64 {
        self.max_request_bytes
    }
}

/// The middleware: admits `request` to `next` or answers in its place.
pub async fn admit(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    // Refused at once rather than queued: a queue would hold sockets and memory for clients
    // that are going to time out anyway.
    let Ok(_permit) = Arc::clone(&gate.permits).try_acquire_owned() else {
        return ApiError::busy(gate.max_concurrent).into_response();
    };
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|length| length > gate.max_request_bytes) {
        return ApiError::too_large(gate.max_request_bytes).into_response();
    }
    let limit = gate.request_timeout;
    let asked = Asked {
        method: request.method().clone(),
        path: request.uri().path().to_owned(),
        authorization: request.headers().get(header::AUTHORIZATION).cloned(),
    };
    let answer = async {
        if let Err(refusal) = authorize(&gate, asked).await {
            return refusal;
        }
        next.run(request).await
    };
    match tokio::time::timeout(limit, answer).await {
        Ok(response) => response,
        Err(_) => ApiError::request_timeout(&format!("{limit:?}")).into_response(),
    }
}

/// What authorization looks at; the request itself (its body is not `Sync`) stays out of
/// the awaits.
struct Asked {
    method: Method,
    path: String,
    authorization: Option<HeaderValue>,
}

async fn authorize(gate: &Gate, asked: Asked) -> Result<(), Response> {
    let Some(users) = &gate.users else {
        return Ok(());
    };
    let (method, path) = (&asked.method, asked.path.as_str());
    // Liveness probes carry no credentials.
    if method == Method::GET && path == "/health" {
        return Ok(());
    }
    let Some((name, password)) = credentials(asked.authorization.as_ref()) else {
        return Err(challenge(
            "send HTTP basic credentials (basic.auth.user.info)",
        ));
    };
    let users = Arc::clone(users);
    let checked_name = name.clone();
    // Argon2 is CPU work of tens of milliseconds: not on the async threads.
    let role = tokio::task::spawn_blocking(move || users.verify(&checked_name, &password))
        .await
        .ok()
        .flatten();
    let Some(role) = role else {
        tracing::info!(user = %name, %method, path, "registry credentials refused");
        return Err(challenge(&format!(
            "user `{name}` is unknown or the password is wrong"
        )));
    };
    let needed = required_role(method, path);
    if role < needed {
        tracing::info!(user = %name, %role, %needed, %method, path, "registry request forbidden");
        return Err(ApiError::forbidden(&format!(
            "user `{name}` has role {role}; {method} {path} needs {needed}"
        ))
        .into_response());
    }
    Ok(())
}

/// The role a request needs: reads and lookups `read`, registering and compatibility tests
/// `write`, everything that changes settings or deletes `admin`.
pub fn required_role(method: &Method, path: &str) -> Role {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match *method {
        Method::GET | Method::HEAD => Role::Read,
        // POST /subjects/{subject} looks a schema up; it changes nothing.
        Method::POST if segments.len() == 2 && segments[0] == "subjects" => Role::Read,
        Method::POST => Role::Write,
        _ => Role::Admin,
    }
}

fn credentials(header: Option<&HeaderValue>) -> Option<(String, String)> {
    let encoded = header?.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

fn challenge(detail: &str) -> Response {
    let mut response = ApiError::unauthorized(detail).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"schema-registry\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_endpoint_needs_the_role_of_what_it_does() {
        let cases = [
            (Method::GET, "/subjects/a-value/versions/latest", Role::Read),
            (Method::POST, "/subjects/a-value", Role::Read),
            (Method::POST, "/subjects/a-value/versions", Role::Write),
            (
                Method::POST,
                "/compatibility/subjects/a-value/versions/latest",
                Role::Write,
            ),
            (Method::PUT, "/config", Role::Admin),
            (Method::PUT, "/config/a-value", Role::Admin),
            (Method::PUT, "/mode", Role::Admin),
            (Method::DELETE, "/subjects/a-value", Role::Admin),
            (Method::DELETE, "/config/a-value", Role::Admin),
        ];
        for (method, path, role) in cases {
            assert_eq!(required_role(&method, path), role, "{method} {path}");
        }
    }

    #[test]
    fn basic_credentials_are_read_with_colons_in_the_password() {
        let header = HeaderValue::from_static("Basic Y2k6YTpi"); // ci:a:b
        assert_eq!(
            credentials(Some(&header)),
            Some(("ci".to_owned(), "a:b".to_owned()))
        );
        assert_eq!(
            credentials(Some(&HeaderValue::from_static("Bearer x"))),
            None
        );
        assert_eq!(credentials(None), None);
    }
}
