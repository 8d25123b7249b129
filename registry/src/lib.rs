//! A Confluent-compatible schema registry for development, tests and the embedded stack.
//!
//! It answers the subset of Confluent Schema Registry's REST API that serializers and tools
//! use, with the same paths, status codes, `error_code`s and media type, so client code works
//! unchanged against Confluent's registry in production. Schemas live in a compacted Kafka
//! topic (`_schemas` by default); every instance rebuilds its index from that topic at start,
//! so ids survive restarts and several instances on one broker serve the same ids.
//! Compatibility is decided by [`backbone_compat`] from Avro's resolution rules.

pub mod error;
pub mod http;
pub mod index;
pub mod log;
pub mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backbone_core::config::{ConfigError, Validate};
use backbone_core::KafkaSettings;
use serde::Deserialize;
use tokio::net::TcpListener;

pub use service::Registry;

/// The `[registry]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySettings {
    /// Address to serve the REST API on.
    pub listen: SocketAddr,
    /// Topic holding the schemas.
    pub topic: String,
    /// Longest wait for the topic on any request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            topic: "_schemas".to_owned(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Validate for RegistrySettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.topic.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "registry.topic".into(),
                message: "must not be empty".into(),
            });
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "registry.timeout".into(),
                message: "must be more than 0s".into(),
            });
        }
        Ok(())
    }
}

/// The registry's config file: `[kafka]` and `[registry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Broker holding the schemas topic.
    #[serde(default)]
    pub kafka: KafkaSettings,
    /// The registry itself.
    #[serde(default)]
    pub registry: RegistrySettings,
}

impl Validate for RegistryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.registry.validate()
    }
}

/// Why the registry could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The schemas topic could not be opened.
    #[error(transparent)]
    Log(#[from] log::LogError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
}

/// Replays the schemas topic, then serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    config: &RegistryConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RegistryError> {
    let registry = Registry::open(
        &config.kafka,
        &config.registry.topic,
        config.registry.timeout,
    )
    .await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, topic = %config.registry.topic, "schema registry serving");
    axum::serve(listener, http::router(Arc::new(registry)))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
