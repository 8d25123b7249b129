//! The entry point every sink binary shares: flags, config, logs, signals, the metrics
//! endpoint, then [`run`](crate::run).

use std::process::ExitCode;
use std::sync::Arc;

use backbone_core::app::{SchemaRegistrySettings, ServiceArgs};
use backbone_core::config::{ConfigError, Validate};
use backbone_core::endpoint::{ObservabilitySettings, RunningEndpoint};
use backbone_core::KafkaSettings;
use backbone_schemas::WireCodec;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::metrics::SinkMetrics;
use crate::runner::{run, RunContext};
use crate::settings::{DestinationSettings, SinkSettings};
use crate::Sink;

/// The config file of a sink: the shared sections and the sink's own `[sink]` section. Every
/// key has a default that suits the local stack.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig<T> {
    /// Broker connection.
    #[serde(default)]
    pub kafka: KafkaSettings,
    /// Batching, retries, circuit breaker, ledger.
    #[serde(default)]
    pub runtime: SinkSettings,
    /// Where the contracts' schemas are registered.
    #[serde(default)]
    pub schema_registry: SchemaRegistrySettings,
    /// Metrics, health and readiness endpoint.
    #[serde(default)]
    pub observability: ObservabilitySettings,
    /// The external system.
    #[serde(default)]
    pub destination: DestinationSettings,
    /// The sink's own settings.
    #[serde(default)]
    pub sink: T,
}

impl<T: Validate> Validate for SinkConfig<T> {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.runtime.validate()?;
        self.schema_registry.validate()?;
        self.observability.validate()?;
        self.destination.validate()?;
        self.sink.validate()
    }
}

/// A sink that can be deployed as its own binary.
pub trait SinkApp: Sink + Sized {
    /// Deploy name, shown in `--help`.
    const NAME: &'static str;
    /// One line on what the sink does.
    const ABOUT: &'static str;
    /// URL schemes the destination may use.
    const SCHEMES: &'static [&'static str];
    /// The sink's `[sink]` config section.
    type Settings: DeserializeOwned + Default + Validate + std::fmt::Debug;

    /// Builds the sink; may connect to the destination (a database), failing with a message
    /// that names what is wrong.
    fn build(
        settings: Self::Settings,
        destination: &DestinationSettings,
    ) -> impl std::future::Future<Output = anyhow::Result<Self>> + Send;
}

/// Parses flags, loads config, runs the sink until SIGINT or SIGTERM, and maps the outcome to
/// an exit code: 0 after a graceful stop, 2 for bad config, 1 for any other failure (a
/// refused credential among them).
pub async fn serve<A: SinkApp>() -> ExitCode {
    let args = ServiceArgs::parse_for(A::NAME, A::ABOUT);
    let config: SinkConfig<A::Settings> = match args
        .start(A::NAME, |c: &SinkConfig<A::Settings>| {
            c.destination.require_scheme(A::SCHEMES)
        }) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let stop = backbone_core::shutdown::signal();
    let registry = prometheus::Registry::new();
    let metrics = match ServiceArgs::metrics(A::NAME, &registry) {
        Ok(metrics) => metrics,
        Err(code) => return code,
    };
    let sink = match A::build(config.sink, &config.destination).await {
        Ok(sink) => sink,
        Err(err) => {
            eprintln!("{}: {err:#}", A::NAME);
            return ExitCode::from(2);
        }
    };
    let sink_metrics = match SinkMetrics::new(&registry, A::NAME, destination_name(&sink)) {
        Ok(metrics) => Arc::new(metrics),
        Err(err) => {
            eprintln!("{}: metrics: {err}", A::NAME);
            return ExitCode::FAILURE;
        }
    };
    let endpoint = match RunningEndpoint::start(
        "observability.listen",
        config.observability.listen,
        registry,
        metrics.readiness(),
    )
    .await
    {
        Ok(endpoint) => endpoint,
        Err(err) => {
            eprintln!("{}: {err}", A::NAME);
            return ExitCode::from(2);
        }
    };
    let context = RunContext {
        kafka: &config.kafka,
        settings: &config.runtime,
        observability: &config.observability,
        codec: WireCodec::new(&config.schema_registry.url),
        metrics,
        sink_metrics,
    };
    let result = run(sink, context, stop).await;
    endpoint.stop().await;
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(sink = A::NAME, error = %err, "sink stopped on error");
            ExitCode::FAILURE
        }
    }
}

fn destination_name<S: Sink>(sink: &S) -> &'static str {
    crate::runner::destination_label(sink.destination())
}
