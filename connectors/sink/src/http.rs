//! What HTTP sinks share: an authenticated JSON client for one destination, and the reading of
//! an answer's status as a delivery outcome.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::Value;

use backbone_core::certificates::{self, CertificateUse};
use backbone_core::ConfigError;

use backbone_core::Secret;

use crate::settings::DestinationSettings;
use crate::{DeliveryError, Outcome, RetryReason};

/// A destination's answer: status, `Retry-After`, and the body as JSON (`Null` when it is not).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The `Retry-After` header, read as seconds or as an HTTP date.
    pub retry_after: Option<Duration>,
    /// Every response header.
    pub headers: HeaderMap,
    /// The body.
    pub body: Value,
}

impl Answer {
    /// The error code the destination put in its body (`error.code`, or the first of
    /// `errors[].code`), else `http_<status>`.
    pub fn error_code(&self) -> String {
        self.body
            .pointer("/error/code")
            .or_else(|| self.body.pointer("/errors/0/code"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("http_{}", self.status.as_u16()))
    }

    /// The error message the destination put in its body, else the body itself.
    pub fn error_message(&self) -> String {
        self.body
            .pointer("/error/message")
            .or_else(|| self.body.pointer("/errors/0/message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| self.body.to_string())
    }

    /// Whether header `name` has value `value` (case-insensitive).
    pub fn header_is(&self, name: &str, value: &str) -> bool {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(value))
    }

    /// The outcome a successful answer of an API that applies a request once per idempotency
    /// key means: a business error in the body (`"status": "failed"`) is a rejection, as a 4xx
    /// would be; a replayed answer (`Idempotent-Replayed: true`) says it was delivered before;
    /// else delivered now. The reference is the body's `id`.
    pub fn applied_outcome(&self) -> Outcome {
        let body = &self.body;
        if body["status"] == "failed" {
            return Outcome::Rejected {
                code: body["error"]["code"]
                    .as_str()
                    .unwrap_or("failed")
                    .to_owned(),
                message: body["error"]["message"].as_str().unwrap_or("").to_owned(),
            };
        }
        let reference = body["id"].as_str().map(str::to_owned);
        if self.header_is("Idempotent-Replayed", "true") {
            Outcome::AlreadyDelivered { reference }
        } else {
            Outcome::Delivered { reference }
        }
    }

    /// The outcome this answer means when its status is not a success: a throttle or server
    /// failure is retried, a refused credential stops the sink, any other 4xx is a rejection.
    /// Success statuses give `None`: what they mean depends on the API.
    pub fn failure(&self) -> Option<Result<Outcome, DeliveryError>> {
        let status = self.status;
        if status.is_success() {
            return None;
        }
        let message = self.error_message();
        let retry = |reason| Outcome::Retry {
            reason,
            message: format!("HTTP {}: {message}", status.as_u16()),
            after: self.retry_after,
        };
        Some(match status {
            StatusCode::TOO_MANY_REQUESTS => Ok(retry(RetryReason::Throttled)),
            // Some APIs throttle with 403 and a Retry-After; a 403 without one is a refusal.
            StatusCode::FORBIDDEN if self.retry_after.is_some() => {
                Ok(retry(RetryReason::Throttled))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(DeliveryError::Unauthorized {
                status: status.as_u16(),
                message,
            }),
            StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => {
                Ok(retry(RetryReason::Timeout))
            }
            _ if status.is_server_error() => Ok(retry(RetryReason::Unavailable)),
            _ => Ok(Outcome::Rejected {
                code: self.error_code(),
                message,
            }),
        })
    }
}

/// A JSON client for one destination, sending its bearer token on every request.
#[derive(Debug, Clone)]
pub struct JsonApi {
    client: reqwest::Client,
    base_url: String,
    token: Secret,
}

impl JsonApi {
    /// A client for `destination`, with its timeout, credential and TLS settings. An `https://`
    /// destination is asked once whether it accepts us, so that a certificate that cannot work
    /// stops the start, not the first delivery; one that does not answer yet is an outage, which
    /// deliveries wait out.
    pub async fn connect(destination: &DestinationSettings) -> Result<Self, ConfigError> {
        let token = destination.resolve_credential()?;
        let mut client = reqwest::Client::builder().timeout(destination.timeout);
        if let Some(ca_file) = &destination.ca_file {
            client =
                client.tls_certs_merge(certificates::http_roots(ca_file, "destination.ca_file")?);
        }
        if let (Some(cert), Some(key)) =
            (&destination.client_cert_file, &destination.client_key_file)
        {
            // Read for its checks; reqwest takes the certificate and key as one PEM text.
            certificates::read(
                cert,
                CertificateUse::Present,
                "destination.client_cert_file",
            )?;
            let pem = [
                read(cert, "client_cert_file")?,
                read(key, "client_key_file")?,
            ]
            .concat();
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|err| unreadable("client_cert_file", cert, &err.to_string()))?;
            client = client.identity(identity);
        }
        let client = client.build().map_err(|err| ConfigError::Invalid {
            key: "destination".to_owned(),
            message: format!("cannot build an HTTP client: {}", causes(&err)),
        })?;
        let api = Self {
            client,
            base_url: destination.url.trim_end_matches('/').to_owned(),
            token,
        };
        if api.base_url.starts_with("https://") {
            api.check_tls().await?;
        }
        Ok(api)
    }

    async fn check_tls(&self) -> Result<(), ConfigError> {
        let Err(err) = self.client.head(&self.base_url).send().await else {
            return Ok(());
        };
        let why = causes(&err);
        if names_tls(&why) {
            // An alert from the server is its refusal of our certificate (or of none).
            let hint = if why.to_ascii_lowercase().contains("alert") {
                "the destination refused our client certificate or wants one: \
                 destination.client_cert_file and client_key_file"
            } else {
                "a private CA goes in destination.ca_file"
            };
            return Err(ConfigError::Invalid {
                key: "destination.url".to_owned(),
                message: format!("TLS with {} failed: {why} ({hint})", self.base_url),
            });
        }
        tracing::warn!(
            destination = %self.base_url,
            error = %why,
            "destination not answering at start-up; deliveries will wait for it"
        );
        Ok(())
    }

    /// POSTs `body` as JSON to `path` with extra `headers`. A transport failure is a retried
    /// error: no answer means the request may or may not have been applied.
    pub async fn post<B: Serialize + ?Sized>(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &B,
    ) -> Result<Answer, DeliveryError> {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base_url))
            .json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.answer(request).await
    }

    /// GETs `path` with the `query` pairs; a transport failure is a retried error.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Answer, DeliveryError> {
        let request = self
            .client
            .get(format!("{}{path}", self.base_url))
            .query(query);
        self.answer(request).await
    }

    async fn answer(&self, request: reqwest::RequestBuilder) -> Result<Answer, DeliveryError> {
        let request = request.bearer_auth(self.token.expose());
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        let retry_after = retry_after(&headers, SystemTime::now());
        let bytes = response.bytes().await.map_err(transport_error)?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            retry_after,
            headers,
            body,
        })
    }
}

/// What became of a request: a success answer for the caller to read, or an outcome already
/// known from the transport or the status.
#[derive(Debug)]
pub enum Reply {
    /// A 2xx answer; what it means depends on the API.
    Answer(Answer),
    /// Settled without reading the body: a retry (no answer, throttled, 5xx) or a rejection.
    Settled(Outcome),
}

impl JsonApi {
    /// [`post`](Self::post), then sorted: a transport failure becomes a retry, a failure status
    /// its outcome, a refused credential the error that stops the sink.
    pub async fn send<B: Serialize + ?Sized>(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &B,
    ) -> Result<Reply, DeliveryError> {
        Self::sorted(self.post(path, headers, body).await)
    }

    /// [`get`](Self::get), then sorted as [`send`](Self::send) sorts.
    pub async fn fetch(&self, path: &str, query: &[(&str, &str)]) -> Result<Reply, DeliveryError> {
        Self::sorted(self.get(path, query).await)
    }

    fn sorted(answer: Result<Answer, DeliveryError>) -> Result<Reply, DeliveryError> {
        let answer = match answer {
            Ok(answer) => answer,
            Err(DeliveryError::Transient {
                reason,
                message,
                after,
            }) => {
                return Ok(Reply::Settled(Outcome::Retry {
                    reason,
                    message,
                    after,
                }))
            }
            Err(err) => return Err(err),
        };
        match answer.failure() {
            Some(failure) => failure.map(Reply::Settled),
            None => Ok(Reply::Answer(answer)),
        }
    }
}

fn read(path: &std::path::Path, key: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|err| unreadable(key, path, &err.to_string()))
}

fn unreadable(key: &str, path: &std::path::Path, why: &str) -> ConfigError {
    ConfigError::Invalid {
        key: format!("destination.{key}"),
        message: format!("`{}`: {why}", path.display()),
    }
}

/// Whether an error's text (with its causes) says TLS failed: a certificate not trusted or not
/// for this host, a failed handshake, the server's TLS alert (how a server that wants a client
/// certificate refuses ours, or none). Clients' errors have no kind for it.
pub fn names_tls(causes: &str) -> bool {
    let lower = causes.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "alert"]
        .iter()
        .any(|word| lower.contains(word))
}

/// An error and its causes on one line: clients' own messages often say only "error sending
/// request"; the TLS reason is further down.
pub fn causes(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    line
}

fn transport_error(err: reqwest::Error) -> DeliveryError {
    let reason = if err.is_timeout() {
        RetryReason::Timeout
    } else {
        RetryReason::Unavailable
    };
    DeliveryError::Transient {
        reason,
        message: err.to_string(),
        after: None,
    }
}

/// `Retry-After` as a wait from `now`: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn answer(status: u16, retry_after: Option<u64>, body: Value) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).expect("status"),
            retry_after: retry_after.map(Duration::from_secs),
            headers: HeaderMap::new(),
            body,
        }
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert!(answer(201, None, Value::Null).failure().is_none());
        assert!(matches!(
            answer(429, Some(2), Value::Null).failure(),
            Some(Ok(Outcome::Retry { reason: RetryReason::Throttled, after: Some(d), .. })) if d == Duration::from_secs(2)
        ));
        assert!(matches!(
            answer(503, None, Value::Null).failure(),
            Some(Ok(Outcome::Retry {
                reason: RetryReason::Unavailable,
                ..
            }))
        ));
        assert!(matches!(
            answer(504, None, Value::Null).failure(),
            Some(Ok(Outcome::Retry {
                reason: RetryReason::Timeout,
                ..
            }))
        ));
        assert!(matches!(
            answer(401, None, Value::Null).failure(),
            Some(Err(DeliveryError::Unauthorized { status: 401, .. }))
        ));
        assert!(matches!(
            answer(403, None, Value::Null).failure(),
            Some(Err(DeliveryError::Unauthorized { status: 403, .. }))
        ));
        assert!(matches!(
            answer(403, Some(5), Value::Null).failure(),
            Some(Ok(Outcome::Retry {
                reason: RetryReason::Throttled,
                ..
            }))
        ));
        let rejected = answer(
            400,
            None,
            serde_json::json!({"error": {"code": "unsupported_currency", "message": "XXX"}}),
        );
        assert_eq!(
            rejected.failure(),
            Some(Ok(Outcome::Rejected {
                code: "unsupported_currency".into(),
                message: "XXX".into()
            }))
        );
        assert_eq!(answer(422, None, Value::Null).error_code(), "http_422");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).expect("header"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }
}
