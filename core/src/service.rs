//! The one skeleton every processor and sink binary runs in: flags, the config file, logs,
//! signals, the metrics endpoint, then the component's loop, and the exit code.
//!
//! A kind of component (processors here, sinks in `backbone-sink`) implements [`Service`]; a
//! binary's `main` is `serve::<ItsService>()`. The config file has the same shape for every
//! kind ([`ServiceConfig`]): the shared `[kafka]`, `[runtime]`, `[schema_registry]` and
//! `[observability]` sections, and the kind's own ([`Sections`]).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::process::ExitCode;
use std::sync::Arc;

use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::app::ServiceArgs;
use crate::config::{ConfigError, Validate};
use crate::endpoint::{ObservabilitySettings, RunningEndpoint};
use crate::kafka::KafkaSettings;
use crate::metrics::RuntimeMetrics;
use crate::schema_registry::SchemaRegistrySettings;

/// The sections of a config file that belong to one kind of component: a processor's
/// `[processor]`, a sink's `[destination]` and `[sink]`.
pub trait Sections: Default + Validate + fmt::Debug {
    /// The top-level keys they own.
    const KEYS: &'static [&'static str];

    /// Reads the value of `key`, one of [`Sections::KEYS`], from `map`.
    fn read<'de, M: MapAccess<'de>>(&mut self, key: &str, map: &mut M) -> Result<(), M::Error>;
}

/// The config file of every processor and sink. Every key has a default that suits the local
/// stack; a key nobody owns is refused, naming it.
#[derive(Debug)]
pub struct ServiceConfig<R, S> {
    /// Broker connection.
    pub kafka: KafkaSettings,
    /// The loop's settings (`[runtime]`).
    pub runtime: R,
    /// Where the contracts' schemas are registered.
    pub schema_registry: SchemaRegistrySettings,
    /// Metrics, health and readiness endpoint.
    pub observability: ObservabilitySettings,
    /// The sections of the component's kind.
    pub own: S,
}

const SHARED_KEYS: [&str; 4] = ["kafka", "runtime", "schema_registry", "observability"];

impl<'de, R, S> Deserialize<'de> for ServiceConfig<R, S>
where
    R: Deserialize<'de> + Default,
    S: Sections,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Sectioned<R, S>(PhantomData<(R, S)>);

        impl<'de, R, S> Visitor<'de> for Sectioned<R, S>
        where
            R: Deserialize<'de> + Default,
            S: Sections,
        {
            type Value = ServiceConfig<R, S>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of config sections")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut config = ServiceConfig {
                    kafka: KafkaSettings::default(),
                    runtime: R::default(),
                    schema_registry: SchemaRegistrySettings::default(),
                    observability: ObservabilitySettings::default(),
                    own: S::default(),
                };
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "kafka" => config.kafka = map.next_value()?,
                        "runtime" => config.runtime = map.next_value()?,
                        "schema_registry" => config.schema_registry = map.next_value()?,
                        "observability" => config.observability = map.next_value()?,
                        own if S::KEYS.contains(&own) => config.own.read(own, &mut map)?,
                        unknown => {
                            let known: Vec<String> = SHARED_KEYS
                                .iter()
                                .chain(S::KEYS)
                                .map(|k| format!("`{k}`"))
                                .collect();
                            return Err(de::Error::custom(format!(
                                "unknown field `{unknown}`, expected one of {}",
                                known.join(", ")
                            )));
                        }
                    }
                }
                Ok(config)
            }
        }

        deserializer.deserialize_map(Sectioned(PhantomData))
    }
}

impl<R: Validate, S: Sections> Validate for ServiceConfig<R, S> {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.runtime.validate()?;
        self.schema_registry.validate()?;
        self.observability.validate()?;
        self.own.validate()
    }
}

/// A kind of component run as its own binary by [`serve`].
pub trait Service: Sized {
    /// Deploy name, shown in `--help` and logs, and the metrics' `processor` label.
    const NAME: &'static str;
    /// One line on what the component does.
    const ABOUT: &'static str;
    /// The loop's `[runtime]` section.
    type Runtime: DeserializeOwned + Default + Validate + fmt::Debug;
    /// The kind's own sections.
    type Sections: Sections;
    /// Why the loop stopped on its own.
    type Error: fmt::Display;

    /// Checks that span sections, after each section's own validation.
    fn check(config: &ServiceConfig<Self::Runtime, Self::Sections>) -> Result<(), ConfigError> {
        let _ = config;
        Ok(())
    }

    /// Builds the component before its endpoint answers; may take its own settings out of
    /// `config`. An error (a database refusing the connection) ends the start with exit 2.
    fn build(
        config: &mut ServiceConfig<Self::Runtime, Self::Sections>,
        registry: &prometheus::Registry,
    ) -> impl Future<Output = Result<Self, String>> + Send;

    /// Runs the loop until `stop` completes or it fails.
    fn run(
        self,
        config: ServiceConfig<Self::Runtime, Self::Sections>,
        metrics: Arc<RuntimeMetrics>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Parses flags, loads and checks the config, runs the component until SIGINT or SIGTERM,
/// and maps the outcome to an exit code: 0 after a graceful stop (or `--check-config`), 2
/// for bad config or a failed start, 1 when the loop stopped on its own.
pub async fn serve<S: Service>() -> ExitCode {
    let args = ServiceArgs::parse_for(S::NAME, S::ABOUT);
    let mut config: ServiceConfig<S::Runtime, S::Sections> = match args.start(S::NAME, S::check) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Installed before anything slow, so that a SIGTERM during start-up stops gracefully.
    let stop = crate::shutdown::signal();
    let registry = prometheus::Registry::new();
    let metrics = match ServiceArgs::metrics(S::NAME, &registry) {
        Ok(metrics) => metrics,
        Err(code) => return code,
    };
    if let Err(err) = crate::connect::await_cluster(&config.kafka).await {
        eprintln!("{}: {err}", S::NAME);
        return ExitCode::from(2);
    }
    let service = match S::build(&mut config, &registry).await {
        Ok(service) => service,
        Err(err) => {
            eprintln!("{}: {err}", S::NAME);
            return ExitCode::from(2);
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
            eprintln!("{}: {err}", S::NAME);
            return ExitCode::from(2);
        }
    };
    let result = service.run(config, metrics, stop).await;
    endpoint.stop().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(service = S::NAME, error = %err, "stopped on error");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::ProcessorConfig;
    use crate::config::load_from;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Settings {
        topic: String,
    }

    impl Validate for Settings {
        fn validate(&self) -> Result<(), ConfigError> {
            Ok(())
        }
    }

    fn load(env: &[(&str, &str)]) -> Result<ProcessorConfig<Settings>, ConfigError> {
        load_from(
            None,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    #[test]
    fn shared_and_own_sections_load_and_every_other_key_is_refused_by_name() {
        let config = load(&[
            ("BACKBONE__PROCESSOR__TOPIC", "usage.events"),
            ("BACKBONE__KAFKA__BOOTSTRAP_SERVERS", "broker:9092"),
        ])
        .expect("loads");
        assert_eq!(config.own.processor.topic, "usage.events");
        assert_eq!(config.kafka.bootstrap_servers, "broker:9092");

        let err = load(&[("BACKBONE__SINK__TOPIC", "x")]).expect_err("no [sink] here");
        assert!(
            err.to_string()
                .starts_with("config key `sink`: unknown field `sink`")
                && err.to_string().contains("`processor`"),
            "{err}"
        );
        let err = load(&[("BACKBONE__PROCESSOR__TOPICS", "x")]).expect_err("a typo");
        assert!(err.to_string().contains("processor.topics"), "{err}");
    }
}
