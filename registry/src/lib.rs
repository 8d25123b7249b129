//! A Confluent-compatible schema registry for development, tests and the embedded stack.
//!
//! It answers the subset of Confluent Schema Registry's REST API that serializers and tools
//! use, with the same paths, status codes, `error_code`s and media type, so client code works
//! unchanged against Confluent's registry in production. Schemas live in a compacted Kafka
//! topic (`_schemas` by default); every instance rebuilds its index from that topic at start,
//! so ids survive restarts and several instances on one broker serve the same ids.
//! Compatibility is decided by [`backbone_compat`] from Avro's resolution rules.

pub mod error;
pub mod gate;
pub mod http;
pub mod index;
pub mod log;
pub mod request;
pub mod service;
pub mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use backbone_core::config::{ConfigError, Validate};
use backbone_core::https::{self, TlsFiles};
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
    /// Users allowed in, with their roles and password hashes (see [`users`]). Without it the
    /// registry answers anyone, and only starts so with `anonymous = true`.
    pub users_file: Option<PathBuf>,
    /// Serve without authentication: anyone who reaches the port may change or delete
    /// schemas. For a laptop, never a shared network.
    pub anonymous: bool,
    /// Longest a request may take, reading its body included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest request body taken.
    pub max_request_bytes: u64,
    /// Requests served at once; more are refused with 429.
    pub max_concurrent_requests: usize,
    /// Serve HTTPS with these files (`[registry.tls]`); plain HTTP without.
    pub tls: Option<TlsFiles>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            topic: "_schemas".to_owned(),
            timeout: Duration::from_secs(10),
            users_file: None,
            anonymous: false,
            request_timeout: Duration::from_secs(30),
            // Bundled contracts are tens of kilobytes; a megabyte leaves room and still bounds
            // what one request can make the registry hold.
            max_request_bytes: 1 << 20,
            max_concurrent_requests: 64,
            tls: None,
        }
    }
}

impl RegistrySettings {
    /// The TLS acceptor of `[registry.tls]`, its files read now; `None` for plain HTTP.
    pub fn tls(&self) -> Result<Option<https::TlsAcceptor>, ConfigError> {
        self.tls
            .as_ref()
            .map(|files| files.acceptor("registry.tls"))
            .transpose()
    }

    /// The gate every request passes, with the users file read now.
    pub fn gate(&self) -> Result<gate::Gate, ConfigError> {
        let users = self
            .users_file
            .as_deref()
            .map(|path| users::Users::load(path, "registry.users_file"))
            .transpose()?;
        Ok(gate::Gate::new(
            users,
            self.max_concurrent_requests,
            self.request_timeout,
            self.max_request_bytes,
        ))
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
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: format!("registry.{key}"),
            message: message.to_owned(),
        };
        for (key, zero) in [
            ("timeout", self.timeout.is_zero()),
            ("request_timeout", self.request_timeout.is_zero()),
            ("max_request_bytes", self.max_request_bytes == 0),
            ("max_concurrent_requests", self.max_concurrent_requests == 0),
        ] {
            if zero {
                return Err(invalid(key, "must be more than 0"));
            }
        }
        match (&self.users_file, self.anonymous) {
            (Some(_), true) => Err(invalid(
                "anonymous",
                "cannot be true with a users_file; choose one",
            )),
            (None, false) => Err(invalid(
                "users_file",
                "required: the users allowed in (see docs/security.md), or anonymous = true \
                 to let anyone who reaches the port change and delete schemas",
            )),
            _ => self.gate().and_then(|_| self.tls()).map(|_| ()),
        }
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
                anonymous: true,
                ..RegistrySettings::default()
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
    /// A setting cannot work (the users file changed since validation).
    #[error(transparent)]
    Config(#[from] ConfigError),
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
    serve_opened(registry, &config.registry, listener, shutdown).await
}

async fn serve_opened(
    registry: Registry,
    settings: &RegistrySettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RegistryError> {
    let gate = Arc::new(settings.gate()?);
    let body_limit = usize::try_from(gate.max_request_bytes()).unwrap_or(usize::MAX);
    let router = http::router(Arc::new(registry))
        // Bodies sent without a length are cut here; announced ones at the gate.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(gate, gate::admit));
    let tls = settings.tls()?;
    let address = listener.local_addr()?;
    let access = match &settings.users_file {
        Some(file) => format!("users from {}", file.display()),
        None => "anonymous: anyone reaching the port may change schemas".to_owned(),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%address, scheme, topic = settings.topic, access, "schema registry serving");
    match tls {
        Some(acceptor) => https::serve(listener, acceptor, router, shutdown).await?,
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
    }
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
        let scheme = if config.registry.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let settings = config.registry.clone();
        let task = tokio::spawn(async move {
            serve_opened(registry, &settings, listener, async {
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

    /// Base URL, like `http://127.0.0.1:40123` (`https://` when serving TLS).
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
