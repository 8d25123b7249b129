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
pub mod request;
pub mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backbone_core::config::{ConfigError, Validate};
use backbone_core::KafkaSettings;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

impl RegistryConfig {
    /// A registry for tests and tools: `topic` on the broker of `kafka`, on a free
    /// 127.0.0.1 port.
    pub fn ephemeral(kafka: KafkaSettings, topic: &str) -> Self {
        Self {
            kafka,
            registry: RegistrySettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                topic: topic.to_owned(),
                timeout: Duration::from_secs(20),
            },
        }
    }
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
    serve_opened(registry, &config.registry.topic, listener, shutdown).await
}

async fn serve_opened(
    registry: Registry,
    topic: &str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RegistryError> {
    let address = listener.local_addr()?;
    tracing::info!(%address, topic, "schema registry serving");
    axum::serve(listener, http::router(Arc::new(registry)))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// A registry running inside this process (tests, tools), stopped by [`LocalRegistry::stop`]
/// or when dropped.
pub struct LocalRegistry {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RegistryError>>>,
}

impl LocalRegistry {
    /// Replays the topic, binds `config.registry.listen` (port 0 picks a free port) and
    /// serves in the background; returns once it answers.
    pub async fn start(config: &RegistryConfig) -> Result<Self, RegistryError> {
        let registry = Registry::open(
            &config.kafka,
            &config.registry.topic,
            config.registry.timeout,
        )
        .await?;
        let listener = TcpListener::bind(config.registry.listen).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let topic = config.registry.topic.clone();
        let task = tokio::spawn(async move {
            serve_opened(registry, &topic, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        Ok(Self {
            url,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Base URL, like `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops serving and waits until it has.
    pub async fn stop(mut self) -> Result<(), RegistryError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
