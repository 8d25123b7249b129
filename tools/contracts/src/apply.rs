//! `apply`: create the manifest's topics, and their dead-letter topics, that the broker lacks.
//!
//! Only creation: our brokers cannot add partitions, and they answer DescribeConfigs with no
//! entries, so a partition difference is reported (not changed) and configs of existing topics
//! are not compared.

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_core::admin::{ensure_topics, partition_count, TopicSpec};
use backbone_core::config::Validate as _;
use backbone_core::{KafkaSettings, Replication};
use serde::Serialize;

use super::{count, CliError, Detail, Inputs, Report};
use backbone_schemas::manifest::Manifest;

/// Longest wait for one metadata answer.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for created topics to appear.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// What `apply` found and did.
#[derive(Debug, Clone, Serialize)]
pub struct ApplySummary {
    /// The broker asked.
    pub bootstrap_servers: String,
    /// Whether `--dry-run` kept it from changing anything.
    pub dry_run: bool,
    /// Topics to create (created, unless a dry run).
    pub changes: Vec<TopicChange>,
    /// Differences left alone.
    pub warnings: Vec<PartitionMismatch>,
    /// Topics that exist as the manifest says.
    pub up_to_date: usize,
    /// Whether the changes were made.
    pub applied: bool,
}

impl ApplySummary {
    /// The diff, then the warnings.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .changes
            .iter()
            .map(|c| {
                let configs: Vec<String> =
                    c.configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(
                    "create topic {} with {} partitions ({})",
                    c.topic,
                    c.partitions,
                    configs.join(", ")
                )
            })
            .collect();
        lines.extend(
            self.warnings
                .iter()
                .map(|w| format!("warning: topic {}: {}", w.topic, w.message)),
        );
        lines
    }

    /// The summary line's middle part.
    pub fn summary(&self) -> String {
        let n = self.changes.len();
        let topics = count(n, "topic");
        match (n, self.dry_run, self.applied) {
            (0, _, _) => format!(
                "nothing to do, {} up to date at {}",
                count(self.up_to_date, "topic"),
                self.bootstrap_servers
            ),
            (_, true, _) => format!("dry run, {topics} to create, nothing changed"),
            (_, false, true) => format!("created {topics} at {}", self.bootstrap_servers),
            (_, false, false) => format!("{topics} to create"),
        }
    }
}

/// A topic to create.
#[derive(Debug, Clone, Serialize)]
pub struct TopicChange {
    /// Topic name.
    pub topic: String,
    /// Partition count.
    pub partitions: i32,
    /// Topic configs.
    pub configs: BTreeMap<String, String>,
}

/// A topic whose partition count differs from the manifest's.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionMismatch {
    /// Topic name.
    pub topic: String,
    /// Partitions on the broker.
    pub broker_partitions: usize,
    /// Partitions in the manifest.
    pub manifest_partitions: i32,
    /// For people.
    pub message: String,
}

/// Every topic the manifest asks for: each topic, then its dead-letter topic (same partitions
/// and replication, cleanup by deletion).
pub fn wanted_topics(manifest: &Manifest) -> Vec<TopicSpec> {
    manifest
        .topic
        .iter()
        .flat_map(|t| {
            let main = t
                .topic_configs()
                .iter()
                .fold(TopicSpec::new(&t.name, t.partitions), |spec, (k, v)| {
                    spec.with_config(k, v)
                });
            let dlq = TopicSpec::new(&t.dlq, t.partitions).with_config("cleanup.policy", "delete");
            [main, dlq].map(|spec| match t.replication() {
                Some((replication_factor, min_insync_replicas)) => {
                    spec.with_replication(Replication {
                        replication_factor,
                        min_insync_replicas,
                    })
                }
                None => spec,
            })
        })
        .collect()
}

/// Compares the manifest's topics with the broker, hands the diff to `on_plan` (which prints
/// it), then creates the missing topics unless `dry_run`.
pub async fn apply(
    inputs: &Inputs,
    settings: &KafkaSettings,
    dry_run: bool,
    on_plan: impl FnOnce(&ApplySummary),
) -> Result<Report, CliError> {
    let mut summary = ApplySummary {
        bootstrap_servers: settings.bootstrap_servers.clone(),
        dry_run,
        changes: Vec::new(),
        warnings: Vec::new(),
        up_to_date: 0,
        applied: false,
    };
    settings
        .validate()
        .map_err(|e| CliError::Usage(format!("--bootstrap-servers: {e}")))?;
    let manifest = match inputs.contracts_and_manifest() {
        Ok((_, manifest)) => manifest,
        Err(violations) => return Ok(Report::new(violations, Detail::Apply(summary))),
    };
    let wanted = wanted_topics(&manifest);
    let names: Vec<String> = wanted.iter().map(|t| t.name.clone()).collect();
    let lookup_settings = settings.clone();
    let counts = tokio::task::spawn_blocking(move || {
        names
            .iter()
            .map(|name| partition_count(&lookup_settings, name, METADATA_TIMEOUT))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| CliError::Usage(format!("metadata lookup task failed: {e}")))?
    .map_err(CliError::Broker)?;

    let mut missing = Vec::new();
    for (spec, count) in wanted.into_iter().zip(counts) {
        match count {
            None => {
                summary.changes.push(TopicChange {
                    topic: spec.name.clone(),
                    partitions: spec.partitions,
                    configs: spec.config.iter().cloned().collect(),
                });
                missing.push(spec);
            }
            Some(broker) if i32::try_from(broker).ok() != Some(spec.partitions) => {
                summary.warnings.push(PartitionMismatch {
                    message: format!(
                        "partitions differ (broker {broker}, manifest {}); not changed: our brokers cannot add partitions",
                        spec.partitions
                    ),
                    topic: spec.name,
                    broker_partitions: broker,
                    manifest_partitions: spec.partitions,
                });
            }
            Some(_) => summary.up_to_date += 1,
        }
    }
    on_plan(&summary);
    if !dry_run && !missing.is_empty() {
        ensure_topics(settings, &missing, CREATE_TIMEOUT)
            .await
            .map_err(CliError::Broker)?;
        summary.applied = true;
    }
    Ok(Report::new(Vec::new(), Detail::Apply(summary)))
}
