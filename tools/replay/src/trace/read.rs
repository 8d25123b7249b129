//! Reading a topic between two instants: the broker's time index turns the instants into
//! offsets (`offsets_for_times`), so a trace reads only the records of its time window however
//! long the topic is, and keeps only those a cheap byte test (key prefix, header) picks before
//! anything is decoded.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::ReplayError;
use crate::scan::{ScanOrder, Scanned, Scanner, SourceRecord, Span};
use crate::{blocking, Context};

/// Milliseconds since the epoch: records stamped at or after `since`, before `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Inclusive.
    pub since_ms: i64,
    /// Exclusive.
    pub until_ms: i64,
}

/// What reading one topic found.
#[derive(Debug, Default)]
pub struct Reading {
    /// The records kept, each partition's in offset order.
    pub records: Vec<SourceRecord>,
    /// How many records were read to find them.
    pub read: u64,
    /// The topic does not exist (a stage that never ran, a DLQ nothing was sent to).
    pub missing: bool,
}

/// Reads the records of `topic` stamped within `window` and keeps those `keep` accepts.
pub async fn read(
    ctx: &Context,
    topic: &str,
    window: Window,
    keep: impl Fn(&SourceRecord) -> bool,
) -> Result<Reading, ReplayError> {
    let offsets = match ctx.describe(topic, "traced").await {
        Ok(offsets) => offsets,
        Err(ReplayError::UnknownTopic { .. }) => {
            return Ok(Reading {
                missing: true,
                ..Reading::default()
            })
        }
        Err(err) => return Err(err),
    };
    let spans = {
        let ctx = ctx.clone();
        let topic = topic.to_owned();
        let partitions: Vec<(i32, (i64, i64))> =
            offsets.partitions.iter().map(|(p, m)| (*p, *m)).collect();
        blocking(move || spans_within(&ctx, &topic, &partitions, window)).await?
    };
    let mut reading = Reading::default();
    if spans.is_empty() {
        return Ok(reading);
    }
    let mut scanner = Scanner::start_in(ctx, topic, spans, ScanOrder::Interleaved);
    while let Some(item) = scanner.next().await {
        if let Scanned::Records(batch) = item? {
            reading.read += batch.len() as u64;
            reading
                .records
                .extend(batch.iter().filter(|r| keep(r)).cloned());
            scanner.recycle(batch);
        }
    }
    Ok(reading)
}

/// Each partition's offsets stamped within `window`: from the first record at or after
/// `since` to the first at or after `until` (or the end).
fn spans_within(
    ctx: &Context,
    topic: &str,
    partitions: &[(i32, (i64, i64))],
    window: Window,
) -> Result<Vec<Span>, ReplayError> {
    let consumer: BaseConsumer = ctx
        .kafka
        .admin_config()
        .create()
        .map_err(|e| ReplayError::kafka("creating a consumer", e))?;
    let at = |ms: i64| -> Result<TopicPartitionList, ReplayError> {
        let mut times = TopicPartitionList::new();
        for (partition, _) in partitions {
            times
                .add_partition_offset(topic, *partition, Offset::Offset(ms))
                .map_err(|e| ReplayError::kafka("offsets for times", e))?;
        }
        consumer
            .offsets_for_times(times, ctx.timeout)
            .map_err(|e| ReplayError::kafka(format!("offsets of `{topic}` by time"), e))
    };
    let (from, to) = (at(window.since_ms)?, at(window.until_ms)?);
    let offset_in = |list: &TopicPartitionList, partition: i32, none: i64| match list
        .find_partition(topic, partition)
        .map(|e| e.offset())
    {
        Some(Offset::Offset(o)) => o,
        // No record at or after the time.
        _ => none,
    };
    Ok(partitions
        .iter()
        .map(|&(partition, (low, high))| Span {
            partition,
            from: offset_in(&from, partition, high).clamp(low, high),
            end: offset_in(&to, partition, high).clamp(low, high),
        })
        .filter(|span| !span.is_empty())
        .collect())
}
