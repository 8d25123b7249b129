//! `pass-through`: the runtime forwarding each record unchanged (the testkit's `Forward`) as a
//! process of its own, the baseline the load benchmark measures the processors against.

use backbone_core::app::{App, RegistryAccess};
use backbone_core::config::{ConfigError, Validate};
use backbone_core::{InputRecord, OutputRecord, ProcessError, Processor, State};
use backbone_testkit::Forward;
use serde::Deserialize;

/// The `[processor]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PassThroughSettings {
    /// Topic read.
    input_topic: String,
    /// Topic written.
    output_topic: String,
}

impl Validate for PassThroughSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("input_topic", &self.input_topic),
            ("output_topic", &self.output_topic),
        ] {
            if value.is_empty() {
                return Err(ConfigError::Invalid {
                    key: format!("processor.{key}"),
                    message: "must be set".to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// [`Forward`], deployable: its `[processor]` section names the input and output topics.
struct PassThrough(Forward);

impl App for PassThrough {
    const NAME: &'static str = "pass-through";
    const ABOUT: &'static str = "Copies each record of one topic to another (benchmark baseline)";
    type Settings = PassThroughSettings;

    fn build(settings: PassThroughSettings, _registry: &RegistryAccess) -> Self {
        Self(Forward {
            input: settings.input_topic,
            output: settings.output_topic,
        })
    }
}

impl Processor for PassThrough {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn input_topics(&self) -> Vec<String> {
        self.0.input_topics()
    }

    fn output_topics(&self) -> Vec<String> {
        self.0.output_topics()
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        self.0.process(record, state)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_core::app::serve::<PassThrough>().await
}
