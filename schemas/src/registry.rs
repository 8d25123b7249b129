//! The one client of the Confluent Schema Registry REST API in the workspace: the wire codec,
//! the contracts CLI and the replay tool all ask the registry through it, and read its errors
//! one way (HTTP status, Confluent `error_code`, message).
//!
//! Hand-written on reqwest rather than taken from `schema_registry_converter`: the codec used
//! two of that crate's calls, the CLI and replay need six more it does not have (versions,
//! version schemas, compatibility modes, lookups), and reqwest was in the build either way.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::access::{BasicAuth, RegistryAccess};

/// The registry's media type.
const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Confluent's error code for a subject that does not exist.
pub const SUBJECT_NOT_FOUND: u64 = 40401;
/// Confluent's error code for a schema (id, or text under a subject) the registry lacks.
pub const SCHEMA_NOT_FOUND: u64 = 40403;

/// Why a request to the registry failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be asked, or its answer not read (refused connection, timeout).
    #[error("registry at {url}: {what}: {message}")]
    Unreachable {
        /// The registry's URL.
        url: String,
        /// The request.
        what: String,
        /// The transport's error with its causes.
        message: String,
    },
    /// The registry answered with an error.
    #[error("registry at {url}: {what}: {status} (error code {}): {message}",
        .code.map_or("none".to_owned(), |c| c.to_string()))]
    Refused {
        /// The registry's URL.
        url: String,
        /// The request.
        what: String,
        /// The HTTP status.
        status: u16,
        /// Confluent's `error_code`, when the body had one.
        code: Option<u64>,
        /// The registry's message, or its body.
        message: String,
    },
    /// The registry answered something this client cannot read.
    #[error("registry at {url}: {what}: unexpected answer: {message}")]
    Unexpected {
        /// The registry's URL.
        url: String,
        /// The request.
        what: String,
        /// What is wrong with the answer.
        message: String,
    },
}

impl RegistryError {
    /// Whether asking again later may succeed: the registry was unreachable or failed itself
    /// (5xx), as opposed to refusing the request.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Refused { status, .. } => *status >= 500,
            Self::Unexpected { .. } => false,
        }
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The registry's own message of a refusal (a compatibility error's explanation).
    pub fn refusal_message(&self) -> Option<&str> {
        match self {
            Self::Refused { message, .. } => Some(message),
            _ => None,
        }
    }

    fn code(&self) -> Option<u64> {
        match self {
            Self::Refused { code, .. } => *code,
            _ => None,
        }
    }
}

/// A subject's version as the registry holds it.
#[derive(Debug, Clone, Deserialize)]
pub struct RegisteredVersion {
    /// Schema id.
    pub id: u32,
    /// Version number within the subject.
    pub version: u32,
    /// The schema's text.
    pub schema: String,
}

/// One subject version a schema id is registered as.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Registration {
    /// The subject.
    pub subject: String,
    /// Version number within the subject.
    pub version: u32,
}

/// A client of one registry.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    url: String,
    auth: Option<BasicAuth>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<u64>,
    message: Option<String>,
}

impl RegistryClient {
    /// A client of the registry `access` names (a URL converts: `"http://127.0.0.1:8081"`)
    /// that gives up on a request after `timeout`. A URL that does not parse fails each
    /// request, naming it.
    pub fn new(access: impl Into<RegistryAccess>, timeout: Duration) -> Self {
        let access = access.into();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout);
        if !access.ca().is_empty() {
            builder = builder.tls_certs_merge(access.ca().to_vec());
        }
        Self {
            url: access.url().to_owned(),
            auth: access.auth().cloned(),
            // Building fails only when the TLS backend cannot start; every request then
            // names the cause.
            http: builder.build().unwrap_or_default(),
        }
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one request to the path made of `segments` (each percent-encoded); the body on
    /// success.
    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> Result<String, RegistryError> {
        let what = format!("{method} /{}", segments.join("/"));
        let unreachable = |message: String| RegistryError::Unreachable {
            url: self.url.clone(),
            what: what.clone(),
            message,
        };
        let mut url = Url::parse(&self.url)
            .map_err(|e| unreachable(format!("`{}` is not a URL: {e}", self.url)))?;
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if let Some((key, value)) = query {
            url.query_pairs_mut().append_pair(key, value);
        }
        let mut request = self.http.request(method, url).header("accept", MEDIA_TYPE);
        if let Some(auth) = &self.auth {
            request = request.basic_auth(&auth.username, Some(&auth.password));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", MEDIA_TYPE)
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|e| unreachable(causes(&e)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| unreachable(format!("reading the answer: {}", causes(&e))))?;
        if status.is_success() {
            return Ok(text);
        }
        let body: Option<ErrorBody> = serde_json::from_str(&text).ok();
        Err(RegistryError::Refused {
            url: self.url.clone(),
            what,
            status: status.as_u16(),
            code: body.as_ref().and_then(|b| b.error_code),
            message: body
                .and_then(|b| b.message)
                .unwrap_or_else(|| text.trim().to_owned()),
        })
    }

    fn parse<T: DeserializeOwned>(&self, what: &str, text: &str) -> Result<T, RegistryError> {
        serde_json::from_str(text).map_err(|e| RegistryError::Unexpected {
            url: self.url.clone(),
            what: what.to_owned(),
            message: format!("{text:?}: {e}"),
        })
    }

    /// The text of schema `id`; `None` when the registry has no such id.
    pub async fn schema_by_id(&self, id: u32) -> Result<Option<String>, RegistryError> {
        #[derive(Deserialize)]
        struct Found {
            schema: String,
        }
        let number = id.to_string();
        match self
            .call(Method::GET, &["schemas", "ids", &number], None, None)
            .await
        {
            Ok(text) => Ok(Some(self.parse::<Found>("schema by id", &text)?.schema)),
            Err(err) if err.code() == Some(SCHEMA_NOT_FOUND) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Every subject and version schema `id` is registered under; `None` when the registry
    /// has no such id.
    pub async fn registrations(&self, id: u32) -> Result<Option<Vec<Registration>>, RegistryError> {
        let number = id.to_string();
        match self
            .call(
                Method::GET,
                &["schemas", "ids", &number, "versions"],
                None,
                None,
            )
            .await
        {
            Ok(text) => self.parse("registrations of an id", &text).map(Some),
            Err(err) if err.code() == Some(SCHEMA_NOT_FOUND) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Every subject.
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let text = self.call(Method::GET, &["subjects"], None, None).await?;
        self.parse("subjects", &text)
    }

    /// Version numbers of `subject`, oldest first; `None` when the subject does not exist.
    pub async fn versions(&self, subject: &str) -> Result<Option<Vec<u32>>, RegistryError> {
        match self
            .call(Method::GET, &["subjects", subject, "versions"], None, None)
            .await
        {
            Ok(text) => {
                let mut versions: Vec<u32> = self.parse("versions", &text)?;
                versions.sort_unstable();
                Ok(Some(versions))
            }
            Err(err) if err.code() == Some(SUBJECT_NOT_FOUND) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The schema text of one version of `subject`.
    pub async fn version_schema(
        &self,
        subject: &str,
        version: u32,
    ) -> Result<String, RegistryError> {
        let number = version.to_string();
        self.call(
            Method::GET,
            &["subjects", subject, "versions", &number, "schema"],
            None,
            None,
        )
        .await
    }

    /// The latest version of `subject`; `None` when the subject does not exist.
    pub async fn latest(&self, subject: &str) -> Result<Option<RegisteredVersion>, RegistryError> {
        match self
            .call(
                Method::GET,
                &["subjects", subject, "versions", "latest"],
                None,
                None,
            )
            .await
        {
            Ok(text) => self.parse("latest version", &text).map(Some),
            Err(err) if err.code() == Some(SUBJECT_NOT_FOUND) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The compatibility mode of `subject` as the registry names it (`BACKWARD`, ...); with
    /// `default_to_global`, the global mode when the subject has none. `None` when the
    /// registry has no mode for it.
    pub async fn compatibility(
        &self,
        subject: &str,
        default_to_global: bool,
    ) -> Result<Option<String>, RegistryError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Config {
            compatibility_level: String,
        }
        let query = default_to_global.then_some(("defaultToGlobal", "true"));
        match self
            .call(Method::GET, &["config", subject], query, None)
            .await
        {
            Ok(text) => Ok(Some(
                self.parse::<Config>("compatibility", &text)?
                    .compatibility_level,
            )),
            Err(err) if err.status() == Some(StatusCode::NOT_FOUND.as_u16()) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Sets the compatibility mode of `subject` (`BACKWARD`, ...).
    pub async fn set_compatibility(&self, subject: &str, mode: &str) -> Result<(), RegistryError> {
        let body = json!({ "compatibility": mode });
        self.call(Method::PUT, &["config", subject], None, Some(body))
            .await
            .map(drop)
    }

    /// The (id, version) under which `subject` holds `schema`, if it does.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Option<(u32, u32)>, RegistryError> {
        #[derive(Deserialize)]
        struct Found {
            id: u32,
            version: u32,
        }
        let body = json!({ "schema": schema });
        match self
            .call(Method::POST, &["subjects", subject], None, Some(body))
            .await
        {
            Ok(text) => {
                let found: Found = self.parse("lookup", &text)?;
                Ok(Some((found.id, found.version)))
            }
            Err(err) if matches!(err.code(), Some(SUBJECT_NOT_FOUND | SCHEMA_NOT_FOUND)) => {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// Registers `schema` (Avro) under `subject`; its id. A schema the subject holds already
    /// keeps its id. The registry refuses an incompatible schema with 409 and an invalid one
    /// with 422.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        #[derive(Deserialize)]
        struct Registered {
            id: u32,
        }
        let body = json!({ "schema": schema });
        let text = self
            .call(
                Method::POST,
                &["subjects", subject, "versions"],
                None,
                Some(body),
            )
            .await?;
        Ok(self.parse::<Registered>("registration", &text)?.id)
    }
}

/// A transport error with its causes (reqwest's own message leaves out what really failed:
/// connection refused, timed out).
fn causes(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
