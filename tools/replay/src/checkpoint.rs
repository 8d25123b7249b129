//! Replay checkpoints: how far a replay got, so that an interrupted one resumes by its id
//! without sending a record twice.
//!
//! A checkpoint is a JSON record on a compacted topic (`_backbone.replay-checkpoints`), keyed
//! by replay id. It holds the replay's arguments, for each source partition the span the
//! replay covers (fixed when it starts, so a resume never picks up records that arrived
//! later) and the next offset to handle, and for each destination partition the offset from
//! which this replay's records may be found. It is written only after every record sent
//! before it is acknowledged, so everything below `next` is either sent or filtered out.
//!
//! Records sent after the last checkpoint, before an interruption, are not lost to the
//! resume: every republished record carries `backbone.replay.id` and its source position in
//! headers, and a resume reads each destination partition from the checkpointed offset to its
//! end and skips the source positions it finds there. A checkpoint is written before the
//! first record goes to a destination not yet in it, so no destination escapes that search.

use std::collections::{BTreeMap, BTreeSet};

use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};

use crate::error::ReplayError;
use crate::filter::{Filter, FilterArgs};
use crate::republish::headers as replay;
use crate::scan::{Scanner, Span};
use crate::Context;

/// What a replay was asked to do, as given: a resume must ask for the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaySpec {
    /// The topic read.
    pub source: String,
    /// `--to`; `None` sends each record to its `backbone.origin.topic`.
    pub destination: Option<String>,
    /// The filter flags.
    pub filters: FilterArgs,
}

impl ReplaySpec {
    /// The command line this spec stands for, for messages.
    pub fn describe(&self) -> String {
        let mut text = format!("`replay run {}", self.source);
        if let Some(to) = &self.destination {
            text.push_str(&format!(" --to {to}"));
        }
        let filters = self.filters.describe();
        if filters != "every record" {
            text.push(' ');
            text.push_str(&filters);
        }
        text.push('`');
        text
    }
}

/// How far a replay got in one source partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceProgress {
    /// First offset the replay covers.
    pub from: i64,
    /// One past the last offset it covers.
    pub end: i64,
    /// The next offset to handle: everything below is sent (and acknowledged) or filtered out.
    pub next: i64,
}

/// A replay's checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The replay id.
    pub replay_id: String,
    /// Its arguments.
    pub spec: ReplaySpec,
    /// Its filters, parsed when it started (a relative `--since 2h` stays what it was).
    pub filter: Filter,
    /// Who started it.
    pub operator: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When this checkpoint was written.
    pub updated_at: String,
    /// Progress by source partition.
    pub partitions: BTreeMap<i32, SourceProgress>,
    /// By destination topic and partition: where this replay's records not yet covered by the
    /// checkpoint may start.
    pub destinations: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Records that matched the filters below `next`.
    pub matched: u64,
    /// Records sent and acknowledged below `next`, over every run of this replay.
    pub sent: u64,
    /// Whether the replay finished.
    pub complete: bool,
}

impl Checkpoint {
    /// The source spans still to read.
    pub fn remaining(&self) -> Vec<Span> {
        self.partitions
            .iter()
            .map(|(&partition, progress)| Span {
                partition,
                from: progress.next,
                end: progress.end,
            })
            .collect()
    }
}

/// Reads the latest checkpoint of `replay_id`, if any.
pub async fn load(ctx: &Context, replay_id: &str) -> Result<Option<Checkpoint>, ReplayError> {
    let topic = &ctx.checkpoint_topic;
    let offsets = match ctx.describe(topic, "checkpoint").await {
        Ok(offsets) => offsets,
        Err(ReplayError::UnknownTopic { .. }) => return Ok(None),
        Err(err) => return Err(err),
    };
    let records = Scanner::start(ctx, topic, offsets.spans(None))
        .collect()
        .await?;
    let Some(latest) = records
        .iter()
        .rev()
        .find(|r| r.key.as_deref() == Some(replay_id.as_bytes()))
    else {
        return Ok(None);
    };
    let value = latest.value.as_deref().unwrap_or_default();
    serde_json::from_slice(value)
        .map(Some)
        .map_err(|e| ReplayError::Corrupt {
            what: format!(
                "checkpoint of replay `{replay_id}` (partition {} offset {} of `{topic}`)",
                latest.partition, latest.offset
            ),
            message: e.to_string(),
        })
}

/// Writes `checkpoint` and waits until the broker has it.
pub async fn save(
    ctx: &Context,
    producer: &FutureProducer,
    checkpoint: &Checkpoint,
) -> Result<(), ReplayError> {
    let value = serde_json::to_vec(checkpoint).map_err(|e| ReplayError::Other {
        what: "encoding a checkpoint".into(),
        message: e.to_string(),
    })?;
    crate::publish(
        ctx,
        producer,
        &ctx.checkpoint_topic,
        checkpoint.replay_id.as_bytes(),
        &value,
    )
    .await
}

/// Source positions of `replay_id` found in its destinations from the checkpointed offsets
/// on: records sent after the last checkpoint, which a resume must not send again.
pub async fn sent_after(
    ctx: &Context,
    checkpoint: &Checkpoint,
) -> Result<BTreeSet<(i32, i64)>, ReplayError> {
    let mut found = BTreeSet::new();
    for (topic, partitions) in &checkpoint.destinations {
        let now = ctx.describe(topic, "destination").await?;
        let spans: Vec<Span> = partitions
            .iter()
            .filter_map(|(&partition, &from)| {
                let (_, high) = now.watermarks(partition)?;
                Some(Span {
                    partition,
                    from,
                    end: high,
                })
            })
            .collect();
        for record in Scanner::start(ctx, topic, spans).collect().await? {
            if record.header(replay::ID) != Some(checkpoint.replay_id.as_str())
                || record.header(replay::SOURCE_TOPIC) != Some(checkpoint.spec.source.as_str())
            {
                continue;
            }
            let partition = record
                .header(replay::SOURCE_PARTITION)
                .and_then(|p| p.parse().ok());
            let offset = record
                .header(replay::SOURCE_OFFSET)
                .and_then(|o| o.parse().ok());
            if let (Some(partition), Some(offset)) = (partition, offset) {
                found.insert((partition, offset));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_through_json() {
        let checkpoint = Checkpoint {
            replay_id: "r-1".into(),
            spec: ReplaySpec {
                source: "billing.charges.dlq".into(),
                destination: None,
                filters: FilterArgs {
                    since: Some("2h".into()),
                    ..FilterArgs::default()
                },
            },
            filter: Filter {
                since_ms: Some(1_000),
                ..Filter::default()
            },
            operator: "oncall".into(),
            started_at: "2026-11-27T03:00:00.000Z".into(),
            updated_at: "2026-11-27T03:00:01.000Z".into(),
            partitions: [(
                0,
                SourceProgress {
                    from: 0,
                    end: 10,
                    next: 4,
                },
            )]
            .into(),
            destinations: [("billing.charges".to_owned(), [(2, 17)].into())].into(),
            matched: 4,
            sent: 3,
            complete: false,
        };
        let json = serde_json::to_string(&checkpoint).expect("encode");
        let back: Checkpoint = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, checkpoint);
        assert_eq!(
            back.remaining(),
            vec![Span {
                partition: 0,
                from: 4,
                end: 10
            }]
        );
        assert_eq!(
            back.spec.describe(),
            "`replay run billing.charges.dlq --since 2h`"
        );
    }
}
