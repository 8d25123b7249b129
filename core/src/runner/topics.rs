//! Start-up: the topics a processor needs, checked or created, and its global tables loaded.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use backbone_state::changelog_topic;

use crate::admin::{self, TopicSpec};
use crate::dead_letter::{dlq_topic, dlq_topic_spec};
use crate::global::GlobalTables;
use crate::hold::CONTROLS_TABLE;
use crate::kafka::KafkaSettings;
use crate::metrics::RuntimeMetrics;
use crate::processor::Processor;
use crate::state::{StateFailure, StateSpec};
use crate::tenant::controls_topic_spec;

use super::{RuntimeError, RuntimeSettings};

/// Loads the processor's global tables before it joins its group; not ready until then.
pub(super) async fn load_globals(
    spec: &StateSpec,
    group: &str,
    kafka: &KafkaSettings,
    settings: &RuntimeSettings,
    metrics: &RuntimeMetrics,
) -> Result<Option<GlobalTables>, RuntimeError> {
    if spec.globals().is_empty() {
        return Ok(None);
    }
    metrics.readiness().set_ready(false);
    let dir = settings.state.dir.join(group).join("global");
    let tables = spec.globals().to_vec();
    let kafka = kafka.clone();
    let group = group.to_owned();
    let timeout = settings.state.restore_timeout;
    let globals = tokio::task::spawn_blocking(move || {
        GlobalTables::start(&dir, &tables, &kafka, &group, timeout)
    })
    .await
    .map_err(|e| StateFailure::Restore(format!("loading global tables: {e}")))??;
    Ok(Some(globals))
}

pub(super) async fn ensure_topics<P: Processor>(
    processor: &P,
    group: &str,
    spec: &StateSpec,
    kafka: &KafkaSettings,
    settings: &RuntimeSettings,
) -> Result<(), RuntimeError> {
    let inputs = processor.input_topics();
    let outputs: BTreeSet<String> = processor.output_topics().into_iter().collect();
    // An output the processor also reads is a repartition topic: records re-keyed so that
    // state keyed differently from the inputs is whole on one partition. It is created with
    // the other inputs' partition count, as the changelog is.
    let (repartition, sources): (Vec<String>, Vec<String>) =
        inputs.iter().cloned().partition(|t| outputs.contains(t));
    let partitions = if spec.is_stateless() {
        None
    } else {
        Some(input_partitions(&sources, kafka)?)
    };
    let mut specs: Vec<TopicSpec> = outputs
        .iter()
        .map(|name| {
            let count = partitions
                .filter(|_| repartition.contains(name))
                .unwrap_or(settings.topic_partitions);
            TopicSpec::new(name.clone(), count)
        })
        .collect();
    let dlqs: BTreeSet<String> = inputs
        .iter()
        .map(|t| dlq_topic(t))
        .filter(|t| !outputs.contains(t))
        .collect();
    specs.extend(dlqs.into_iter().map(|name| {
        dlq_topic_spec(
            name,
            settings.topic_partitions,
            settings.max_dead_letter_bytes,
        )
    }));
    if let Some(controls) = spec.globals().iter().find(|g| g.name == CONTROLS_TABLE) {
        specs.push(controls_topic_spec(&controls.topic));
    }
    if let Some(partitions) = partitions {
        specs.push(
            TopicSpec::new(changelog_topic(group), partitions)
                .with_config("cleanup.policy", "compact"),
        );
    }
    admin::ensure_topics(kafka, &specs, Duration::from_secs(30)).await?;
    if partitions.is_some() && !repartition.is_empty() {
        // A repartition topic left by an earlier deployment may be sized differently.
        input_partitions(&inputs, kafka)?;
    }
    Ok(())
}

/// The partition count all inputs of a stateful processor share: state of partition n covers
/// partition n of every input, so they must be co-partitioned.
pub(super) fn input_partitions(
    inputs: &[String],
    kafka: &KafkaSettings,
) -> Result<i32, RuntimeError> {
    let mut counts = BTreeMap::new();
    for topic in inputs {
        let count = admin::partition_count(kafka, topic, Duration::from_secs(10))?.ok_or_else(
            || RuntimeError::Inputs(format!("input topic `{topic}` does not exist; a stateful processor sizes its changelogs from its inputs")),
        )?;
        counts.insert(topic.clone(), count);
    }
    let distinct: BTreeSet<usize> = counts.values().copied().collect();
    match distinct.len() {
        1 => Ok(i32::try_from(counts.values().copied().next().unwrap_or(1)).unwrap_or(i32::MAX)),
        0 => Err(RuntimeError::Inputs("a stateful processor needs at least one input topic".to_owned())),
        _ => Err(RuntimeError::Inputs(format!(
            "input topics of a stateful processor must have the same partition count, found {counts:?}"
        ))),
    }
}
