//! What a sink binary adds to the service skeleton (`backbone_core::service`): the
//! [`SinkApp`] trait and the sink's own sections, `[destination]` and `[sink]`.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;

use backbone_core::config::{ConfigError, Validate};
use backbone_core::metrics::RuntimeMetrics;
use backbone_core::service::{Sections, Service, ServiceConfig};
use backbone_schemas::{RegistryAccess, WireCodec};
use serde::de::{DeserializeOwned, MapAccess};

use crate::metrics::SinkMetrics;
use crate::runner::{run, RunContext, SinkError};
use crate::settings::{DestinationSettings, SinkSettings};
use crate::Sink;

/// A sink's own sections of its config file: where it delivers and its own settings.
#[derive(Debug, Default)]
pub struct SinkSections<T> {
    /// The external system (`[destination]`).
    pub destination: DestinationSettings,
    /// The sink's own settings (`[sink]`).
    pub sink: T,
}

impl<T: DeserializeOwned + Default + Validate + std::fmt::Debug> Sections for SinkSections<T> {
    const KEYS: &'static [&'static str] = &["destination", "sink"];

    fn read<'de, M: MapAccess<'de>>(&mut self, key: &str, map: &mut M) -> Result<(), M::Error> {
        if key == "destination" {
            self.destination = map.next_value()?;
        } else {
            self.sink = map.next_value()?;
        }
        Ok(())
    }
}

impl<T: Validate> Validate for SinkSections<T> {
    fn validate(&self) -> Result<(), ConfigError> {
        self.destination.validate()?;
        self.sink.validate()
    }
}

/// The config file of a sink of settings `T`.
pub type SinkConfig<T> = ServiceConfig<SinkSettings, SinkSections<T>>;

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
    ) -> impl Future<Output = anyhow::Result<Self>> + Send;
}

/// Runs sink `A` as its own binary until SIGINT or SIGTERM (`backbone_core::service::serve`):
/// exit 0 after a graceful stop, 2 for bad config or a destination that refuses the start, 1
/// when the loop stopped on its own (a refused credential among them).
pub async fn serve<A: SinkApp + Send + 'static>() -> ExitCode
where
    A::Settings: Send + Sync,
{
    backbone_core::service::serve::<Deployed<A>>().await
}

/// Sink `A` as a [`Service`], with its own metrics.
struct Deployed<A> {
    sink: A,
    sink_metrics: Arc<SinkMetrics>,
    registry: RegistryAccess,
}

impl<A: SinkApp + Send + 'static> Service for Deployed<A>
where
    A::Settings: Send + Sync,
{
    const NAME: &'static str = A::NAME;
    const ABOUT: &'static str = A::ABOUT;
    type Runtime = SinkSettings;
    type Sections = SinkSections<A::Settings>;
    type Error = SinkError;

    fn check(config: &SinkConfig<A::Settings>) -> Result<(), ConfigError> {
        config.own.destination.require_scheme(A::SCHEMES)
    }

    async fn build(
        config: &mut SinkConfig<A::Settings>,
        registry: &prometheus::Registry,
    ) -> Result<Self, String> {
        let registry_access = config
            .schema_registry
            .access()
            .map_err(|err| err.to_string())?;
        let settings = std::mem::take(&mut config.own.sink);
        let sink = A::build(settings, &config.own.destination)
            .await
            .map_err(|err| format!("{err:#}"))?;
        let destination = crate::runner::destination_label(sink.destination());
        let sink_metrics = SinkMetrics::new(registry, A::NAME, destination)
            .map_err(|err| format!("metrics: {err}"))?;
        Ok(Self {
            sink,
            sink_metrics: Arc::new(sink_metrics),
            registry: registry_access,
        })
    }

    async fn run(
        self,
        config: SinkConfig<A::Settings>,
        metrics: Arc<RuntimeMetrics>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), SinkError> {
        let context = RunContext {
            kafka: &config.kafka,
            settings: &config.runtime,
            observability: &config.observability,
            codec: WireCodec::new(self.registry),
            metrics,
            sink_metrics: self.sink_metrics,
        };
        run(self.sink, context, stop).await.map(|_| ())
    }
}
