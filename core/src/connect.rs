//! The first thing every binary does with Kafka: reach the cluster over the configured
//! protocol with the configured credentials, or stop with one line that says why.
//!
//! librdkafka treats a refused password or a failed TLS handshake like a broker that is down:
//! it reports the error to the client's context and tries again, forever. A component that
//! started anyway would sit in that loop with nothing consumed and nothing said but log lines.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::config::{load_from, ConfigError, Validate, ENV_PREFIX};
use crate::kafka::KafkaSettings;

/// Why a component could not reach its cluster at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A command-line tool's `[kafka]` settings from the environment are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The client could not be made from the settings (an unknown property or mechanism, a
    /// CA or key file that cannot be read): librdkafka's message names the property.
    #[error("Kafka client settings for {servers}: {refusal}{files}")]
    Settings {
        /// The bootstrap servers.
        servers: String,
        /// librdkafka's refusal.
        refusal: String,
        /// The files of the properties librdkafka's refusal names, which it leaves out.
        files: String,
    },
    /// The cluster answered and refused us: wrong credentials, or a TLS handshake that failed
    /// (an untrusted or expired certificate). Trying again cannot help.
    #[error("Kafka at {servers} refused the connection ({how}): {reason}")]
    Refused {
        /// The bootstrap servers.
        servers: String,
        /// The protocol and SASL mechanism used, as configured.
        how: String,
        /// librdkafka's reason, which names the broker and listener.
        reason: String,
    },
    /// No broker answered in time.
    #[error("Kafka at {servers} did not answer within {waited:?} ({how}){}", last_reason(.reason))]
    Unreachable {
        /// The bootstrap servers.
        servers: String,
        /// The protocol and SASL mechanism used, as configured.
        how: String,
        /// How long we tried.
        waited: Duration,
        /// The last problem librdkafka reported, if any.
        reason: Option<String>,
    },
}

fn last_reason(reason: &Option<String>) -> String {
    reason
        .as_ref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default()
}

/// How long a component waits at start-up for its cluster, like its topic set-up does.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// [`check_connection`] with [`START_TIMEOUT`], off the async runtime's threads.
pub async fn await_cluster(settings: &KafkaSettings) -> Result<(), ConnectError> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || check_connection(&settings, START_TIMEOUT))
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
}

/// The one section a command-line tool reads from the environment.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolSettings {
    #[serde(default)]
    kafka: KafkaSettings,
}

impl Validate for ToolSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()
    }
}

/// Client settings for a command-line tool (loadgen, contracts, demo), its cluster reached:
/// `[kafka]` from the `BACKBONE__KAFKA__*` environment, as a component reads it (security
/// properties among them), with `bootstrap_servers` from the tool's flag.
pub async fn tool_cluster(bootstrap_servers: &str) -> Result<KafkaSettings, ConnectError> {
    let section = format!("{ENV_PREFIX}KAFKA__");
    let env = std::env::vars().filter(|(var, _)| var.starts_with(&section));
    let mut settings = load_from::<ToolSettings, _>(None, env)?.kafka;
    settings.bootstrap_servers = bootstrap_servers.to_owned();
    settings.validate()?;
    await_cluster(&settings).await?;
    Ok(settings)
}

/// Asks the cluster for its brokers until it answers, refuses us, or `timeout` passes.
pub fn check_connection(settings: &KafkaSettings, timeout: Duration) -> Result<(), ConnectError> {
    let servers = settings.bootstrap_servers.clone();
    let context = Problems::default();
    // A producer, because its `poll` serves the error reports to the context; a consumer would
    // route them to a queue nobody reads here.
    let client: BaseProducer<Problems> = settings
        .admin_config()
        .create_with_context(context.clone())
        .map_err(|source: KafkaError| {
            let refusal = source.to_string();
            let files = settings
                .file_properties()
                .filter(|(_, key, _)| refusal.contains(key))
                .map(|(_, key, path)| format!(" ({key} = {path})"))
                .collect();
            ConnectError::Settings {
                servers: servers.clone(),
                refusal,
                files,
            }
        })?;
    let how = settings.security_summary();
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = client
            .client()
            .fetch_metadata(None, left.min(Duration::from_secs(1)));
        if answer.is_ok() {
            return Ok(());
        }
        client.poll(Duration::ZERO);
        if let Some(reason) = context.refusal() {
            return Err(ConnectError::Refused {
                servers,
                how,
                reason,
            });
        }
        if Instant::now() >= deadline {
            return Err(ConnectError::Unreachable {
                servers,
                how,
                waited: timeout,
                reason: context.last(),
            });
        }
    }
}

/// One report of librdkafka's: its code, if any, and its reason.
type Report = (Option<RDKafkaErrorCode>, String);

/// What librdkafka reported while connecting.
#[derive(Clone, Default)]
struct Problems(Arc<Mutex<Vec<Report>>>);

impl Problems {
    /// The first report that says the cluster refused us.
    fn refusal(&self) -> Option<String> {
        let seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        seen.iter()
            .find(|(code, reason)| refuses(*code, reason))
            .map(|(_, reason)| reason.clone())
    }

    fn last(&self) -> Option<String> {
        let seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        seen.last().map(|(_, reason)| reason.clone())
    }
}

/// Whether a report means the cluster refused us rather than could not be reached: a SASL
/// failure, or a TLS handshake that failed (librdkafka reports those as transport failures).
fn refuses(code: Option<RDKafkaErrorCode>, reason: &str) -> bool {
    matches!(
        code,
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
    ) || reason.contains("SSL handshake failed")
}

impl ClientContext for Problems {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, "Kafka: {reason}");
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // The same failure repeats every retry; the first few say all there is.
        if seen.len() < 16 {
            seen.push((error.rdkafka_error_code(), reason.to_owned()));
        }
    }
}

impl ProducerContext for Problems {
    type DeliveryOpaque = ();

    // Nothing is sent.
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_credentials_and_failed_handshakes_are_refusals_and_a_dead_broker_is_not() {
        assert!(refuses(
            Some(RDKafkaErrorCode::Authentication),
            "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: Authentication failed"
        ));
        assert!(refuses(
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: certificate verify failed"
        ));
        assert!(!refuses(
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused"
        ));
        assert!(!refuses(
            Some(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down"
        ));
    }
}
