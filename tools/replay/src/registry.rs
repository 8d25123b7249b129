//! The schema registry as the tool needs it: is it there, and what is a subject's current
//! contract. Writer schemas by id come from [`backbone_schemas::WireCodec`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use serde::Deserialize;

use crate::error::ReplayError;
use crate::time::format_duration;

/// A subject's latest registered version.
#[derive(Debug, Clone)]
pub struct CurrentContract {
    /// The subject.
    pub subject: String,
    /// Its schema id.
    pub id: u32,
    /// Its version number.
    pub version: i64,
    /// The schema.
    pub schema: Arc<Schema>,
}

#[derive(Deserialize)]
struct LatestVersion {
    id: u32,
    version: i64,
    schema: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: i64,
    #[serde(default)]
    message: String,
}

/// A registry client with a short timeout and a cache of current contracts.
#[derive(Debug, Clone)]
pub struct Registry {
    url: String,
    timeout: Duration,
    client: reqwest::Client,
    current: HashMap<String, Option<CurrentContract>>,
}

impl Registry {
    /// A client of the registry at `url`, giving up on a request after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, ReplayError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ReplayError::Registry {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            timeout,
            client,
            current: HashMap::new(),
        })
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn unreachable(&self, err: &reqwest::Error) -> ReplayError {
        ReplayError::RegistryUnreachable {
            url: self.url.clone(),
            timeout: format_duration(self.timeout),
            message: error_chain(err),
        }
    }

    /// Fails unless the registry answers a subject listing.
    pub async fn check(&self) -> Result<(), ReplayError> {
        let response = self
            .client
            .get(format!("{}/subjects", self.url))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(ReplayError::Registry {
                url: self.url.clone(),
                message: format!("GET /subjects answered {}", response.status()),
            })
        }
    }

    /// The latest version of `subject`, or `None` when the registry has no such subject.
    pub async fn current(&mut self, subject: &str) -> Result<Option<CurrentContract>, ReplayError> {
        if let Some(known) = self.current.get(subject) {
            return Ok(known.clone());
        }
        let found = self.fetch_current(subject).await?;
        self.current.insert(subject.to_owned(), found.clone());
        Ok(found)
    }

    async fn fetch_current(&self, subject: &str) -> Result<Option<CurrentContract>, ReplayError> {
        let response = self
            .client
            .get(format!("{}/subjects/{subject}/versions/latest", self.url))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        let registry_error = |message: String| ReplayError::Registry {
            url: self.url.clone(),
            message,
        };
        if status.as_u16() == 404 {
            return match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) if e.error_code == 40401 => Ok(None),
                Ok(e) => Err(registry_error(format!(
                    "subject `{subject}`: error {}: {}",
                    e.error_code, e.message
                ))),
                Err(_) => Err(registry_error(format!("subject `{subject}`: {status}"))),
            };
        }
        if !status.is_success() {
            return Err(registry_error(format!(
                "subject `{subject}`: {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let latest: LatestVersion = serde_json::from_slice(&body)
            .map_err(|e| registry_error(format!("subject `{subject}`: unexpected answer: {e}")))?;
        let schema = Schema::parse_str(&latest.schema).map_err(|e| {
            registry_error(format!(
                "subject `{subject}` version {}: not valid Avro: {e}",
                latest.version
            ))
        })?;
        Ok(Some(CurrentContract {
            subject: subject.to_owned(),
            id: latest.id,
            version: latest.version,
            schema: Arc::new(schema),
        }))
    }
}

/// An error with its causes, which say what really failed (connection refused, timed out).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
