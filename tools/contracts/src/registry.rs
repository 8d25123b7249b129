//! The few Confluent Schema Registry REST calls `check` and `register` need, and `register`.

use std::time::Duration;

use backbone_compat::CompatibilityMode;
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{CliError, Detail, Inputs, Report};
use backbone_schemas::lint::{Rule, Violation};

/// The registry's media type.
const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// Longest wait for any one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A client of one schema registry.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: Url,
    url: String,
    http: reqwest::Client,
}

/// A non-success answer: HTTP status, Confluent `error_code` and `message`.
#[derive(Debug, Clone)]
struct Refusal {
    status: StatusCode,
    code: Option<u64>,
    message: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error_code: Option<u64>,
    message: Option<String>,
}

impl RegistryClient {
    /// A client of the registry at `url` (like `http://127.0.0.1:8081`; plain HTTP only).
    pub fn new(url: &str) -> Result<Self, CliError> {
        let usage = |message: String| CliError::Usage(format!("--registry-url `{url}`: {message}"));
        let base = Url::parse(url).map_err(|e| usage(e.to_string()))?;
        if base.scheme() != "http" || base.cannot_be_a_base() {
            return Err(usage(
                "expected an http:// URL (this build does not support https)".to_owned(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| usage(e.to_string()))?;
        Ok(Self {
            base,
            url: url.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// The registry URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn error(&self, message: String) -> CliError {
        CliError::Registry {
            url: self.url.clone(),
            message,
        }
    }

    /// Sends one request to the path made of `segments`; the body on success, the refusal
    /// otherwise. Transport failures are errors.
    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> Result<Result<String, Refusal>, CliError> {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if let Some((key, value)) = query {
            url.query_pairs_mut().append_pair(key, value);
        }
        let mut request = self
            .http
            .request(method.clone(), url)
            .header("accept", MEDIA_TYPE);
        if let Some(body) = body {
            request = request
                .header("content-type", MEDIA_TYPE)
                .body(body.to_string());
        }
        let what = format!("{method} /{}", segments.join("/"));
        let response = request
            .send()
            .await
            .map_err(|e| self.error(format!("{what}: {}", describe(&e))))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| self.error(format!("{what}: reading the answer: {}", describe(&e))))?;
        if status.is_success() {
            return Ok(Ok(text));
        }
        let body: Option<ErrorBody> = serde_json::from_str(&text).ok();
        Ok(Err(Refusal {
            status,
            code: body.as_ref().and_then(|b| b.error_code),
            message: body
                .and_then(|b| b.message)
                .unwrap_or_else(|| text.trim().to_owned()),
        }))
    }

    fn unexpected(&self, what: &str, refusal: &Refusal) -> CliError {
        self.error(format!(
            "{what}: {} (error code {}): {}",
            refusal.status,
            refusal.code.map_or("none".to_owned(), |c| c.to_string()),
            refusal.message
        ))
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, what: &str, text: &str) -> Result<T, CliError> {
        serde_json::from_str(text)
            .map_err(|e| self.error(format!("{what}: unexpected answer {text:?}: {e}")))
    }

    /// Version numbers of `subject`, oldest first; `None` when the subject does not exist.
    pub async fn versions(&self, subject: &str) -> Result<Option<Vec<u32>>, CliError> {
        let what = format!("versions of subject `{subject}`");
        match self
            .call(Method::GET, &["subjects", subject, "versions"], None, None)
            .await?
        {
            Ok(text) => {
                let mut versions: Vec<u32> = self.parse(&what, &text)?;
                versions.sort_unstable();
                Ok(Some(versions))
            }
            Err(refusal) if refusal.code == Some(40401) => Ok(None),
            Err(refusal) => Err(self.unexpected(&what, &refusal)),
        }
    }

    /// The schema text of one version.
    pub async fn version_schema(&self, subject: &str, version: u32) -> Result<String, CliError> {
        let number = version.to_string();
        self.call(
            Method::GET,
            &["subjects", subject, "versions", &number, "schema"],
            None,
            None,
        )
        .await?
        .map_err(|refusal| {
            self.unexpected(&format!("subject `{subject}` version {version}"), &refusal)
        })
    }

    /// The subject's compatibility mode; with `default_to_global`, the global mode when the
    /// subject has none. `None` when the registry has no mode for it.
    pub async fn subject_mode(
        &self,
        subject: &str,
        default_to_global: bool,
    ) -> Result<Option<CompatibilityMode>, CliError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Config {
            compatibility_level: String,
        }
        let what = format!("compatibility of subject `{subject}`");
        let query = default_to_global.then_some(("defaultToGlobal", "true"));
        match self
            .call(Method::GET, &["config", subject], query, None)
            .await?
        {
            Ok(text) => {
                let config: Config = self.parse(&what, &text)?;
                config
                    .compatibility_level
                    .parse()
                    .map(Some)
                    .map_err(|e| self.error(format!("{what}: {e}")))
            }
            Err(refusal) if refusal.status == StatusCode::NOT_FOUND => Ok(None),
            Err(refusal) => Err(self.unexpected(&what, &refusal)),
        }
    }

    /// Sets the subject's compatibility mode.
    pub async fn set_subject_mode(
        &self,
        subject: &str,
        mode: CompatibilityMode,
    ) -> Result<(), CliError> {
        let body = json!({ "compatibility": mode.as_str() });
        self.call(Method::PUT, &["config", subject], None, Some(body))
            .await?
            .map(drop)
            .map_err(|refusal| {
                self.unexpected(
                    &format!("setting compatibility of subject `{subject}` to {mode}"),
                    &refusal,
                )
            })
    }

    /// The (id, version) under which `subject` holds `schema`, if it does.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Option<(u32, u32)>, CliError> {
        #[derive(Deserialize)]
        struct Found {
            id: u32,
            version: u32,
        }
        let what = format!("looking up the schema in subject `{subject}`");
        let body = json!({ "schema": schema });
        match self
            .call(Method::POST, &["subjects", subject], None, Some(body))
            .await?
        {
            Ok(text) => {
                let found: Found = self.parse(&what, &text)?;
                Ok(Some((found.id, found.version)))
            }
            // 40401: no such subject; 40403: the subject does not hold this schema.
            Err(refusal) if matches!(refusal.code, Some(40401 | 40403)) => Ok(None),
            Err(refusal) => Err(self.unexpected(&what, &refusal)),
        }
    }

    /// Registers `schema` under `subject`: its id, or the registry's refusal as a violation
    /// rule (compatibility for 409, registry-rejected for 422) and message.
    async fn register(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Result<u32, (Rule, String)>, CliError> {
        #[derive(Deserialize)]
        struct Registered {
            id: u32,
        }
        let what = format!("registering in subject `{subject}`");
        let body = json!({ "schema": schema });
        match self
            .call(
                Method::POST,
                &["subjects", subject, "versions"],
                None,
                Some(body),
            )
            .await?
        {
            Ok(text) => Ok(Ok(self.parse::<Registered>(&what, &text)?.id)),
            Err(refusal) if refusal.status == StatusCode::CONFLICT => {
                Ok(Err((Rule::Compatibility, refusal.message)))
            }
            Err(refusal) if refusal.status == StatusCode::UNPROCESSABLE_ENTITY => {
                Ok(Err((Rule::RegistryRejected, refusal.message)))
            }
            Err(refusal) => Err(self.unexpected(&what, &refusal)),
        }
    }
}

/// A transport error with its causes (reqwest's own message omits them).
fn describe(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// What `register` did.
#[derive(Debug, Clone, Serialize)]
pub struct RegisterSummary {
    /// The registry URL.
    pub registry: String,
    /// One entry per manifest topic.
    pub subjects: Vec<Registration>,
}

impl RegisterSummary {
    /// One line per subject.
    pub fn lines(&self) -> Vec<String> {
        self.subjects
            .iter()
            .map(|r| {
                let outcome = match (r.status, r.id, r.version) {
                    (RegistrationStatus::Registered, Some(id), Some(version)) => {
                        format!("id {id} (registered as version {version})")
                    }
                    (RegistrationStatus::Registered, Some(id), None) => {
                        format!("id {id} (registered)")
                    }
                    (RegistrationStatus::AlreadyRegistered, Some(id), Some(version)) => {
                        format!("id {id} (already registered as version {version})")
                    }
                    _ => "refused".to_owned(),
                };
                let mode = if r.mode_changed {
                    format!("{}, set now", r.mode)
                } else {
                    r.mode.to_string()
                };
                format!("{}: {outcome}, compatibility {mode}", r.subject)
            })
            .collect()
    }
}

/// The result for one subject.
#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    /// Manifest topic.
    pub topic: String,
    /// Registry subject.
    pub subject: String,
    /// Contract file, relative to the contracts directory.
    pub schema: String,
    /// Schema id, unless refused.
    pub id: Option<u32>,
    /// Version within the subject, when known.
    pub version: Option<u32>,
    /// The subject's compatibility mode, from the manifest.
    pub mode: CompatibilityMode,
    /// Whether this run changed the subject's mode.
    pub mode_changed: bool,
    /// Outcome.
    pub status: RegistrationStatus,
}

/// Outcome for one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistrationStatus {
    /// A new version was registered.
    Registered,
    /// The subject held the schema already.
    AlreadyRegistered,
    /// The registry refused it; see the violations.
    Refused,
}

/// Registers every manifest topic's bundled contract under its value subject, setting the
/// subject's compatibility to the manifest's mode first. Idempotent: a schema the subject
/// holds already keeps its id.
pub async fn register(inputs: &Inputs, client: &RegistryClient) -> Result<Report, CliError> {
    let mut summary = RegisterSummary {
        registry: client.url().to_owned(),
        subjects: Vec::new(),
    };
    let (set, manifest) = match inputs.contracts_and_manifest() {
        Ok(loaded) => loaded,
        Err(violations) => return Ok(Report::new(violations, Detail::Register(summary))),
    };
    let mut violations = Vec::new();
    for topic in &manifest.topic {
        let subject = &topic.value_subject;
        let Some(file) = set.by_path(&topic.value_schema) else {
            continue;
        };
        // Bundle and parse first: only valid Avro goes to the registry.
        let schema = match set.schema(&file.name).and_then(|_| set.bundled(&file.name)) {
            Ok(json) => json.to_string(),
            Err(e) => {
                violations.push(
                    Violation::new(&file.path, Rule::Bundle, e.to_string())
                        .in_topic(&topic.name)
                        .in_record(&file.name),
                );
                continue;
            }
        };
        let mode = topic.compatibility;
        let mode_changed = client.subject_mode(subject, false).await? != Some(mode);
        if mode_changed {
            client.set_subject_mode(subject, mode).await?;
        }
        let mut registration = Registration {
            topic: topic.name.clone(),
            subject: subject.clone(),
            schema: file.path.clone(),
            id: None,
            version: None,
            mode,
            mode_changed,
            status: RegistrationStatus::Refused,
        };
        if let Some((id, version)) = client.lookup(subject, &schema).await? {
            registration.id = Some(id);
            registration.version = Some(version);
            registration.status = RegistrationStatus::AlreadyRegistered;
        } else {
            match client.register(subject, &schema).await? {
                Ok(id) => {
                    registration.id = Some(id);
                    registration.status = RegistrationStatus::Registered;
                    registration.version = client.lookup(subject, &schema).await?.map(|(_, v)| v);
                }
                Err((rule, message)) => violations.push(
                    Violation::new(
                        &file.path,
                        rule,
                        format!("subject `{subject}`: the registry refused the schema: {message}"),
                    )
                    .in_topic(&topic.name)
                    .in_record(&file.name),
                ),
            }
        }
        summary.subjects.push(registration);
    }
    Ok(Report::new(violations, Detail::Register(summary)))
}
