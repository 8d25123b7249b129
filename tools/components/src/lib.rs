//! The backbone's components as `components.toml` at the repository root lists them: the one
//! list that the Dockerfile, docker-compose.yml, the Prometheus targets and deploy/config are
//! checked against, and that the test deployment and the demo start from.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

/// The list as built into this crate.
pub const COMPONENTS_TOML: &str = include_str!("../../../components.toml");

/// What a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A stage of the pipeline on the processor runtime.
    Processor,
    /// A stage delivering to an external system on the sink runtime.
    Sink,
    /// A long-running part of the backbone that is not a stage (the schema registry).
    Service,
    /// Operations and development around the backbone: CLIs, the lag monitor, the drift
    /// reconciler, the load generator, the sandbox.
    Tool,
}

/// What a sink delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    /// An HTTP API (the sandbox stands in for the SaaS systems).
    Http,
    /// A PostgreSQL database.
    Postgres,
}

/// Config key (dotted, like `processor.input_topic`) to topic name.
pub type Topics = BTreeMap<String, String>;

/// One entry of the list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Binary, compose service, consumer group, and the stem of its deploy/config file.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// The crate's folder, from the repository root.
    pub path: String,
    /// The port of its `/metrics` endpoint in compose, if it has one.
    #[serde(default)]
    pub metrics: Option<u16>,
    /// Configured by flags and environment alone: no deploy/config file.
    #[serde(default)]
    pub env_only: bool,
    /// The streams its consumer group reads.
    #[serde(default)]
    pub inputs: Topics,
    /// Master data it reads whole.
    #[serde(default)]
    pub tables: Topics,
    /// Topics it writes and reads back itself.
    #[serde(default)]
    pub internal: Topics,
    /// What it writes, dead letters aside.
    #[serde(default)]
    pub outputs: Topics,
    /// What a sink delivers to.
    #[serde(default)]
    pub destination: Option<Destination>,
    /// The key of a processor's switch for dropping inputs it has seen.
    #[serde(default)]
    pub dedup: Option<String>,
    /// Settings a short local run (tests, the demo) sets otherwise than deployed.
    #[serde(default)]
    pub local: BTreeMap<String, String>,
}

impl Component {
    /// Every topic setting: inputs, tables, internal, outputs.
    pub fn topic_settings(&self) -> impl Iterator<Item = (&str, &str)> {
        [&self.inputs, &self.tables, &self.internal, &self.outputs]
            .into_iter()
            .flatten()
            .map(|(key, topic)| (key.as_str(), topic.as_str()))
    }

    /// Whether it is a stage of the pipeline.
    pub fn is_stage(&self) -> bool {
        matches!(self.kind, Kind::Processor | Kind::Sink)
    }
}

/// The environment variable that sets config key `key` (`processor.routes.crm` is
/// `BACKBONE__PROCESSOR__ROUTES__CRM`).
pub fn env_var(key: &str) -> String {
    format!("BACKBONE__{}", key.replace('.', "__").to_uppercase())
}

/// Why the list cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ComponentsError {
    /// Not valid TOML, or a key or value the list does not know.
    #[error("components.toml: {0}")]
    Syntax(String),
    /// An entry that breaks a rule of the list.
    #[error("components.toml, `{name}`: {message}")]
    Invalid {
        /// The entry.
        name: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct List {
    component: Vec<Component>,
}

/// Parses and checks a list.
pub fn parse(text: &str) -> Result<Vec<Component>, ComponentsError> {
    let list: List = toml::from_str(text).map_err(|e| ComponentsError::Syntax(e.to_string()))?;
    let mut seen = std::collections::BTreeSet::new();
    for c in &list.component {
        let invalid = |message: &str| ComponentsError::Invalid {
            name: c.name.clone(),
            message: message.to_owned(),
        };
        if !seen.insert(c.name.as_str()) {
            return Err(invalid("listed twice"));
        }
        if c.is_stage() && c.inputs.is_empty() {
            return Err(invalid("a processor or sink reads at least one input"));
        }
        if c.is_stage() && c.metrics.is_none() {
            return Err(invalid("a processor or sink exports metrics"));
        }
        if (c.kind == Kind::Sink) != c.destination.is_some() {
            return Err(invalid("a sink, and only a sink, has a destination"));
        }
        if c.kind == Kind::Sink && c.inputs.len() != 1 {
            return Err(invalid("a sink reads exactly one topic"));
        }
        if c.dedup.is_some() && c.kind != Kind::Processor {
            return Err(invalid("only a processor has a dedup switch"));
        }
    }
    Ok(list.component)
}

/// The list built into this crate; panics if it is broken (this crate's tests catch that
/// first).
pub fn all() -> &'static [Component] {
    static LIST: OnceLock<Vec<Component>> = OnceLock::new();
    LIST.get_or_init(|| parse(COMPONENTS_TOML).unwrap_or_else(|err| panic!("{err}")))
}

/// The processors, in start order.
pub fn processors() -> impl Iterator<Item = &'static Component> {
    all().iter().filter(|c| c.kind == Kind::Processor)
}

/// The sinks, in start order.
pub fn sinks() -> impl Iterator<Item = &'static Component> {
    all().iter().filter(|c| c.kind == Kind::Sink)
}

/// The processors, then the sinks.
pub fn stages() -> impl Iterator<Item = &'static Component> {
    processors().chain(sinks())
}

/// The entry named `name`.
pub fn named(name: &str) -> Option<&'static Component> {
    all().iter().find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_parses_and_keeps_its_rules() {
        assert!(stages().count() >= 8);
        assert_eq!(
            env_var("processor.routes.crm"),
            "BACKBONE__PROCESSOR__ROUTES__CRM"
        );
        let sink_without_destination = r#"
            [[component]]
            name = "x-sink"
            kind = "sink"
            path = "connectors/x-sink"
            metrics = 9464
            inputs = { "sink.topic" = "x" }
        "#;
        let err = parse(sink_without_destination).expect_err("refused");
        assert!(err.to_string().contains("`x-sink`"), "{err}");
        let twice = format!(
            "{0}\ndestination = \"http\"\n{0}\ndestination = \"http\"",
            sink_without_destination
        );
        assert!(parse(&twice)
            .expect_err("refused")
            .to_string()
            .contains("listed twice"));
        assert!(parse("[[component]]\nname = 1")
            .expect_err("refused")
            .to_string()
            .starts_with("components.toml:"));
    }
}
