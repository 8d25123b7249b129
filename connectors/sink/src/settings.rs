//! The `[runtime]` and `[destination]` config sections every sink shares.

use std::path::PathBuf;
use std::time::Duration;

use backbone_core::config::{ConfigError, Validate};
use backbone_core::dead_letter::DEFAULT_MAX_DEAD_LETTER_BYTES;
use backbone_core::tenant::DEFAULT_CONTROLS_TOPIC;
use backbone_core::Secret;
use serde::Deserialize;

/// The `[runtime]` section of a sink: batching, retries, the circuit breaker and the ledger.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkSettings {
    /// Consumer group; the sink's name when unset. Also names the ledger directory.
    pub group_id: Option<String>,
    /// Most deliveries sent in one batch.
    pub batch_max: usize,
    /// How long the first delivery of a batch waits for others before the batch is sent.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How often the sink is asked for deliveries that became due (closed windows).
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Where the delivery ledger lives: `<ledger_dir>/<group>/ledger`.
    pub ledger_dir: PathBuf,
    /// Topic every outcome is published to as a `DeliveryResult`.
    pub results_topic: String,
    /// Partitions of the dead-letter and results topics when the sink creates them.
    pub topic_partitions: i32,
    /// Longest wait for the broker to acknowledge a result or dead letter.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// Largest dead letter (an input plus headers): the producer sends records this large and
    /// the dead-letter topic, when the sink creates it, takes them. A larger one stops the
    /// sink without committing its input.
    pub max_dead_letter_bytes: usize,
    /// Backoff between attempts.
    pub retry: RetrySettings,
    /// When the destination counts as down.
    pub circuit: CircuitSettings,
    /// The control topic through which an operator pauses a tenant at this sink
    /// (`backbone_core::tenant`).
    pub tenant_controls: String,
    /// Most records held for paused tenants at once; past it the sink stops taking records
    /// (every tenant waits) until a resume lets some go.
    pub max_held: usize,
    /// Most deliveries waiting for a retry at once; past it the sink stops taking records until
    /// some settle.
    pub max_retrying: usize,
}

impl Default for SinkSettings {
    fn default() -> Self {
        Self {
            group_id: None,
            batch_max: 100,
            linger: Duration::from_millis(200),
            tick: Duration::from_secs(1),
            ledger_dir: PathBuf::from("state"),
            results_topic: "delivery.results".to_owned(),
            topic_partitions: 3,
            produce_timeout: Duration::from_secs(30),
            max_dead_letter_bytes: DEFAULT_MAX_DEAD_LETTER_BYTES,
            retry: RetrySettings::default(),
            circuit: CircuitSettings::default(),
            tenant_controls: DEFAULT_CONTROLS_TOPIC.to_owned(),
            max_held: 100_000,
            max_retrying: 10_000,
        }
    }
}

/// The `[runtime.retry]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Ceiling of the first backoff; each attempt doubles it.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Largest backoff ceiling.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured; a longer one is cut to this, so a destination cannot
    /// stall the sink for hours by mistake.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// The `[runtime.circuit]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitSettings {
    /// Consecutive failed attempts that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit waits before one probe.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

impl Validate for SinkSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: format!("runtime.{key}"),
                message: message.to_owned(),
            })
        };
        if self.batch_max == 0 {
            return invalid("batch_max", "must be at least 1");
        }
        if self.tick.is_zero() {
            return invalid("tick", "must be longer than zero");
        }
        if self.results_topic.is_empty() {
            return invalid("results_topic", "must name a topic");
        }
        if self.tenant_controls.trim().is_empty() {
            return invalid("tenant_controls", "must name the control topic");
        }
        if self.max_held == 0 {
            return invalid("max_held", "must be at least 1");
        }
        if self.max_retrying == 0 {
            return invalid("max_retrying", "must be at least 1");
        }
        if self.topic_partitions < 1 {
            return invalid("topic_partitions", "must be at least 1");
        }
        if !(1_000..=1_000_000_000).contains(&self.max_dead_letter_bytes) {
            return invalid(
                "max_dead_letter_bytes",
                "must be between 1000 and 1000000000 (librdkafka's range)",
            );
        }
        if self.retry.initial_backoff.is_zero() {
            return invalid("retry.initial_backoff", "must be longer than zero");
        }
        if self.retry.max_backoff < self.retry.initial_backoff {
            return invalid(
                "retry.max_backoff",
                "must not be shorter than retry.initial_backoff",
            );
        }
        if self.circuit.failure_threshold == 0 {
            return invalid("circuit.failure_threshold", "must be at least 1");
        }
        if self.circuit.open_for.is_zero() {
            return invalid("circuit.open_for", "must be longer than zero");
        }
        Ok(())
    }
}

/// Checks the `[sink] topic` key names a topic.
pub fn require_topic(topic: &str) -> Result<(), ConfigError> {
    if topic.is_empty() {
        return Err(ConfigError::Invalid {
            key: "sink.topic".to_owned(),
            message: "must name a topic".to_owned(),
        });
    }
    Ok(())
}

/// The `[destination]` section: where the sink delivers, and with which credential.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DestinationSettings {
    /// Base URL: `http(s)://` for an API, `postgres://` for the analytics store. Keep
    /// passwords out of it; use `credential`.
    pub url: String,
    /// Bearer token for an API, password for PostgreSQL. Prefer `credential_file` or the
    /// `BACKBONE__DESTINATION__CREDENTIAL` environment variable to a value in a file.
    pub credential: Secret,
    /// File holding the credential (a mounted secret); wins over `credential`. One trailing
    /// newline is ignored.
    pub credential_file: Option<PathBuf>,
    /// Longest wait for one request's answer; no answer in time is a retried timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM file of CA certificates an `https://` destination's certificate may chain to,
    /// trusted besides the system's roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// PEM file of the certificate this sink presents, for a destination that wants mutual TLS;
    /// needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM file of that certificate's private key.
    pub client_key_file: Option<PathBuf>,
}

impl Default for DestinationSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8090".to_owned(),
            credential: Secret::default(),
            credential_file: None,
            timeout: Duration::from_secs(10),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

impl std::fmt::Debug for DestinationSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationSettings")
            .field("url", &backbone_core::secret::redact_url(&self.url))
            .field("credential", &self.credential)
            .field("credential_file", &self.credential_file)
            .field("timeout", &self.timeout)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .finish()
    }
}

impl DestinationSettings {
    /// The credential, read from `credential_file` when one is set.
    pub fn resolve_credential(&self) -> Result<Secret, ConfigError> {
        Secret::resolve(
            &self.credential,
            self.credential_file.as_deref(),
            "destination.credential_file",
        )
    }

    /// Checks that the URL uses one of `schemes`, naming the key when it does not.
    pub fn require_scheme(&self, schemes: &[&str]) -> Result<(), ConfigError> {
        if schemes
            .iter()
            .any(|scheme| self.url.starts_with(&format!("{scheme}://")))
        {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            key: "destination.url".to_owned(),
            message: format!(
                "expected a {} URL, got \"{}\"",
                schemes.join(" or "),
                self.url
            ),
        })
    }
}

/// Splits a URL's password out (`scheme://user:password@host/...` gives
/// `scheme://user@host/...` and the password), so it can travel as a credential rather than
/// in a URL that ends up in logs.
pub fn split_password(url: &str) -> (String, Option<Secret>) {
    let split = url.split_once("://").and_then(|(scheme, rest)| {
        let (userinfo, host) = rest.split_once('@')?;
        let (user, password) = userinfo.split_once(':')?;
        Some((
            format!("{scheme}://{user}@{host}"),
            Secret::new(password.to_owned()),
        ))
    });
    match split {
        Some((url, password)) => (url, Some(password)),
        None => (url.to_owned(), None),
    }
}

impl Validate for DestinationSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.url.is_empty() {
            return Err(ConfigError::Invalid {
                key: "destination.url".to_owned(),
                message: "must be set".to_owned(),
            });
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "destination.timeout".to_owned(),
                message: "must be longer than zero".to_owned(),
            });
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "destination.client_cert_file".to_owned(),
                    message: "needs destination.client_key_file, and the other way round"
                        .to_owned(),
                })
            }
            _ => {}
        }
        self.resolve_credential().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_leaves_the_url() {
        let (url, password) = split_password("postgres://app:pa55@127.0.0.1:5432/db");
        assert_eq!(url, "postgres://app@127.0.0.1:5432/db");
        assert_eq!(password.expect("a password").expose(), "pa55");
        let (url, password) = split_password("http://127.0.0.1:8090");
        assert_eq!(url, "http://127.0.0.1:8090");
        assert!(password.is_none());
    }

    #[test]
    fn bad_sink_settings_name_their_key() {
        let settings = SinkSettings {
            batch_max: 0,
            ..SinkSettings::default()
        };
        let err = settings.validate().expect_err("zero batch");
        assert!(err.to_string().contains("runtime.batch_max"), "{err}");
        let settings = SinkSettings {
            max_dead_letter_bytes: 999,
            ..SinkSettings::default()
        };
        let err = settings.validate().expect_err("below librdkafka's range");
        assert!(
            err.to_string().contains("runtime.max_dead_letter_bytes"),
            "{err}"
        );
    }
}
