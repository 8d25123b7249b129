//! The entry point every processor binary shares: flags, config, logs, signals, then [`run`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::config::{self, ConfigError, Validate};
use crate::endpoint::{ObservabilitySettings, RunningEndpoint};
use crate::kafka::KafkaSettings;
use crate::metrics::RuntimeMetrics;
use crate::processor::Processor;
use crate::runner::{run_with, RuntimeSettings};
use crate::telemetry::{self, LogFormat};

/// The config file of a processor: the shared `[kafka]` and `[runtime]` sections and the
/// processor's own `[processor]` section. Every key has a default that suits the local stack.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig<T> {
    /// Broker connection.
    #[serde(default)]
    pub kafka: KafkaSettings,
    /// Loop behaviour.
    #[serde(default)]
    pub runtime: RuntimeSettings,
    /// Where the contracts' schemas are registered.
    #[serde(default)]
    pub schema_registry: SchemaRegistrySettings,
    /// Metrics, health and readiness endpoint.
    #[serde(default)]
    pub observability: ObservabilitySettings,
    /// The processor's own settings.
    #[serde(default)]
    pub processor: T,
}

impl<T: Validate> Validate for ProcessorConfig<T> {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.runtime.validate()?;
        self.schema_registry.validate()?;
        self.observability.validate()?;
        self.processor.validate()
    }
}

/// The `[schema_registry]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistrySettings {
    /// Base URL of a Confluent-compatible schema registry.
    pub url: String,
}

impl Default for SchemaRegistrySettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081".to_owned(),
        }
    }
}

impl Validate for SchemaRegistrySettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                key: "schema_registry.url".to_owned(),
                message: format!("expected an http:// or https:// URL, got \"{}\"", self.url),
            });
        }
        Ok(())
    }
}

/// A processor that can be deployed as its own binary.
pub trait App: Processor + Sized {
    /// Deploy name, shown in `--help`.
    const NAME: &'static str;
    /// One line on what the processor does.
    const ABOUT: &'static str;
    /// The processor's `[processor]` config section.
    type Settings: DeserializeOwned + Default + Validate;

    /// Builds the processor from its validated settings and the shared registry settings.
    fn build(settings: Self::Settings, registry: &SchemaRegistrySettings) -> Self;
}

/// The flags every Backbone service binary takes.
#[derive(Debug, Parser)]
pub struct ServiceArgs {
    /// TOML config file; every key may also be set as BACKBONE__<SECTION>__<KEY>.
    #[arg(long, env = "BACKBONE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log line format: text or json.
    #[arg(long, default_value = "text")]
    pub log_format: LogFormat,
    /// Load and validate the config, print the effective config (secrets hidden), and exit.
    #[arg(long, alias = "check-config")]
    pub print_config: bool,
}

impl ServiceArgs {
    /// The process's flags, with `name` and `about` in `--help`; exits on bad flags.
    pub fn parse_for(name: &'static str, about: &'static str) -> Self {
        let command = Self::command().name(name).about(about);
        match Self::from_arg_matches(&command.get_matches()) {
            Ok(args) => args,
            Err(err) => err.exit(),
        }
    }

    /// Loads and validates the config of service `name` and, unless `--print-config` asked
    /// for the config to be printed only, installs logging. `Err` is the exit code to leave
    /// with: 2 for bad config (the message names the key), 0 after printing.
    pub fn start<T>(
        &self,
        name: &str,
        check: impl FnOnce(&T) -> Result<(), ConfigError>,
    ) -> Result<T, ExitCode>
    where
        T: DeserializeOwned + Validate + std::fmt::Debug,
    {
        let config: T =
            match config::load(self.config.as_deref()).and_then(|c| check(&c).map(|()| c)) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("{name}: {err}");
                    return Err(ExitCode::from(2));
                }
            };
        if self.print_config {
            println!("{config:#?}");
            return Err(ExitCode::SUCCESS);
        }
        telemetry::init(self.log_format);
        Ok(config)
    }

    /// The runtime's metrics for service `name` on `registry`; `Err` is the exit code.
    pub fn metrics(
        name: &str,
        registry: &prometheus::Registry,
    ) -> Result<Arc<RuntimeMetrics>, ExitCode> {
        RuntimeMetrics::new(registry, name)
            .map(Arc::new)
            .map_err(|err| {
                eprintln!("{name}: metrics: {err}");
                ExitCode::FAILURE
            })
    }
}

/// Parses flags, loads config, runs the processor until SIGINT or SIGTERM, and maps the
/// outcome to an exit code. A processor's `main` is a call to this.
pub async fn serve<A: App>() -> ExitCode
where
    A::Settings: std::fmt::Debug,
{
    let args = ServiceArgs::parse_for(A::NAME, A::ABOUT);
    let config: ProcessorConfig<A::Settings> = match args.start(A::NAME, |_| Ok(())) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Installed before anything slow, so that a SIGTERM during start-up stops gracefully.
    let stop = crate::shutdown::signal();
    let registry = prometheus::Registry::new();
    let metrics = match ServiceArgs::metrics(A::NAME, &registry) {
        Ok(metrics) => metrics,
        Err(code) => return code,
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
    let processor = A::build(config.processor, &config.schema_registry);
    let result = run_with(
        processor,
        &config.kafka,
        &config.runtime,
        &config.observability,
        metrics,
        stop,
    )
    .await;
    endpoint.stop().await;
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(processor = A::NAME, error = %err, "processor stopped on error");
            ExitCode::FAILURE
        }
    }
}
