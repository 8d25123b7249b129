//! What a processor binary adds to the service skeleton ([`crate::service`]): the [`App`]
//! trait, its `[processor]` section, and the flags and registry settings every service shares.

use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser};
use serde::de::{DeserializeOwned, MapAccess};

/// What [`App::build`] is given to reach the registry.
pub use backbone_schemas::RegistryAccess;

use crate::config::{self, ConfigError, Validate};

use crate::metrics::RuntimeMetrics;
use crate::processor::Processor;
use crate::runner::{run_with, RuntimeError, RuntimeSettings};
use crate::service::{Sections, Service, ServiceConfig};
use crate::telemetry::{self, LogFormat};

/// A processor's own section of its config file, `[processor]`.
#[derive(Debug, Default)]
pub struct ProcessorSection<T> {
    /// The processor's settings.
    pub processor: T,
}

impl<T: DeserializeOwned + Default + Validate + std::fmt::Debug> Sections for ProcessorSection<T> {
    const KEYS: &'static [&'static str] = &["processor"];

    fn read<'de, M: MapAccess<'de>>(&mut self, _key: &str, map: &mut M) -> Result<(), M::Error> {
        self.processor = map.next_value()?;
        Ok(())
    }
}

impl<T: Validate> Validate for ProcessorSection<T> {
    fn validate(&self) -> Result<(), ConfigError> {
        self.processor.validate()
    }
}

/// The config file of a processor of settings `T`.
pub type ProcessorConfig<T> = ServiceConfig<RuntimeSettings, ProcessorSection<T>>;

/// A processor that can be deployed as its own binary.
pub trait App: Processor + Sized {
    /// Deploy name, shown in `--help`.
    const NAME: &'static str;
    /// One line on what the processor does.
    const ABOUT: &'static str;
    /// The processor's `[processor]` config section.
    type Settings: DeserializeOwned + Default + Validate;

    /// Builds the processor from its validated settings and the registry it reaches.
    fn build(settings: Self::Settings, registry: &RegistryAccess) -> Self;

    /// Registers the processor's own series on the registry its `/metrics` serves, beside the
    /// runtime's; none by default.
    fn register_metrics(
        &mut self,
        _registry: &prometheus::Registry,
    ) -> Result<(), prometheus::Error> {
        Ok(())
    }
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
            // Written, not println!: a reader that stops early (`| head`) closes the pipe,
            // which is no error of ours and must not be a panic.
            let mut out = std::io::stdout().lock();
            return match writeln!(out, "{config:#?}").and_then(|()| out.flush()) {
                Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("{name}: printing the config: {err}");
                    Err(ExitCode::FAILURE)
                }
                _ => Err(ExitCode::SUCCESS),
            };
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

/// Runs processor `A` as its own binary until SIGINT or SIGTERM ([`crate::service::serve`]).
/// A processor's `main` is a call to this.
pub async fn serve<A: App + Sync + 'static>() -> ExitCode
where
    A::Settings: std::fmt::Debug + Send + Sync,
{
    crate::service::serve::<Deployed<A>>().await
}

/// Processor `A` as a [`Service`].
struct Deployed<A>(A);

impl<A: App + Sync + 'static> Service for Deployed<A>
where
    A::Settings: std::fmt::Debug + Send + Sync,
{
    const NAME: &'static str = A::NAME;
    const ABOUT: &'static str = A::ABOUT;
    type Runtime = RuntimeSettings;
    type Sections = ProcessorSection<A::Settings>;
    type Error = RuntimeError;

    async fn build(
        config: &mut ProcessorConfig<A::Settings>,
        metrics: &prometheus::Registry,
    ) -> Result<Self, String> {
        let registry = config
            .schema_registry
            .access()
            .map_err(|err| err.to_string())?;
        let settings = std::mem::take(&mut config.own.processor);
        let mut app = A::build(settings, &registry);
        app.register_metrics(metrics)
            .map_err(|err| format!("metrics: {err}"))?;
        Ok(Self(app))
    }

    async fn run(
        self,
        config: ProcessorConfig<A::Settings>,
        metrics: Arc<RuntimeMetrics>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RuntimeError> {
        run_with(
            self.0,
            &config.kafka,
            &config.runtime,
            &config.observability,
            metrics,
            stop,
        )
        .await
        .map(|_| ())
    }
}
