//! `replay run`: republish the selected records of a topic, each dead letter to the topic it
//! failed on (`backbone.origin.topic`), or every record to `--to`.
//!
//! A dead letter goes back to the partition it was read from (`backbone.origin.partition`,
//! when the topic still has it); with `--to`, records are partitioned by key. Keys and
//! values are sent byte for byte. Headers are kept in their order, except those the
//! dead-letter queue added (`backbone.dlq.*`, `backbone.origin.*`, `__connect.errors.*`) and
//! those of an earlier replay (`backbone.replay.*`), which are dropped; this replay's headers
//! are appended. Records get a new timestamp: they are new records of their topic.
//!
//! Sending is pipelined through the idempotent producer; every second (and before the first
//! record to a new destination, and at the end) all sends are awaited and a checkpoint is
//! written (see [`crate::checkpoint`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use backbone_core::dead_letter::headers as dlq;
use backbone_schemas::wire::widen_decimals;
use backbone_schemas::{WireCodec, WireError};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::Serialize;
use serde_json::json;

use crate::audit::{self, AuditLog, AuditRecord};
use crate::checkpoint::{self, Checkpoint, ReplaySpec, SourceProgress};
use crate::dlq::{is_dlq_header, REPLAY_HEADER_PREFIX};
use crate::error::ReplayError;
use crate::filter::{Filter, FilterArgs, TIME_BASIS};
use crate::progress::{Progress, ProgressMode};
use crate::registry::Registry;
use crate::scan::{ScanOrder, Scanned, Scanner, SourceRecord};
use crate::time::format_duration;
use crate::Context;
use backbone_calendar::{format_rfc3339_ms, now_ms};

/// Headers a replay adds to every record it sends.
pub mod headers {
    /// The replay's id; the stages count the records that carry it.
    pub const ID: &str = backbone_core::processor::REPLAY_ID;
    /// When the record was republished (RFC 3339 UTC).
    pub const AT: &str = "backbone.replay.at";
    /// Who ran the replay.
    pub const OPERATOR: &str = "backbone.replay.operator";
    /// The topic the replay read the record from (the DLQ).
    pub const SOURCE_TOPIC: &str = "backbone.replay.source.topic";
    /// Its partition there.
    pub const SOURCE_PARTITION: &str = "backbone.replay.source.partition";
    /// Its offset there.
    pub const SOURCE_OFFSET: &str = "backbone.replay.source.offset";
}

/// What `replay run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The topic to read; may be left out when resuming by `replay_id`.
    pub source: Option<String>,
    /// Send everything here instead of to each record's `backbone.origin.topic`.
    pub to: Option<String>,
    /// The filter flags.
    pub filters: FilterArgs,
    /// At most this many records per second.
    pub rate: Option<f64>,
    /// Report what would be sent and what would fail again; send nothing.
    pub dry_run: bool,
    /// Resume this replay, or start one under this id.
    pub replay_id: Option<String>,
    /// Who runs it.
    pub operator: String,
    /// Dry-run lines and the summary as JSON.
    pub json: bool,
    /// How progress is shown.
    pub progress: ProgressMode,
    /// How often sends are awaited and a checkpoint is written.
    pub checkpoint_interval: Duration,
    /// Set to stop the replay early (Ctrl-C): it awaits its sends, checkpoints and returns.
    pub stop: Option<Arc<AtomicBool>>,
}

impl RunOptions {
    /// Options replaying every record of `source` to its origin topics.
    pub fn new(source: impl Into<String>, operator: impl Into<String>) -> Self {
        Self {
            source: Some(source.into()),
            to: None,
            filters: FilterArgs::default(),
            rate: None,
            dry_run: false,
            replay_id: None,
            operator: operator.into(),
            json: false,
            progress: ProgressMode::Hidden,
            checkpoint_interval: Duration::from_secs(1),
            stop: None,
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// The replay id.
    pub replay_id: String,
    /// The topic read.
    pub source: String,
    /// `--to`, or `None` for each record's origin topic.
    pub destination: Option<String>,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Whether an earlier run of this replay was resumed.
    pub resumed: bool,
    /// Records read in this run.
    pub read: u64,
    /// Records matching the filters, over every run of this replay.
    pub matched: u64,
    /// Records sent in this run (dry run: that would be sent).
    pub sent: u64,
    /// Records sent by an earlier run of this replay, skipped in this one.
    pub already_sent: u64,
    /// Records skipped for want of a `backbone.origin.topic` header.
    pub without_origin: u64,
    /// Dry run: records that would fail again.
    pub would_fail: u64,
    /// Records sent (or that would be) by destination topic.
    pub by_destination: BTreeMap<String, u64>,
    /// Dry run: records that would fail again, by reason.
    pub failures: BTreeMap<String, u64>,
    /// Whether every selected record is now sent.
    pub complete: bool,
    /// Whether the operator stopped it.
    pub interrupted: bool,
    /// Seconds this run took.
    pub seconds: f64,
}

/// A fresh replay id: `r-<UTC time>-<4 hex digits>`.
pub fn new_replay_id() -> String {
    let stamp: String = format_rfc3339_ms(now_ms())
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .take(15)
        .collect();
    format!("r-{stamp}Z-{:04x}", fastrand::u16(..))
}

/// Whether a header of the source record is sent on: all but the DLQ's and an earlier
/// replay's.
fn kept(name: &str) -> bool {
    !is_dlq_header(name) && !name.starts_with(REPLAY_HEADER_PREFIX)
}

/// The headers to send for `record`, borrowed: its own that are kept, then `added`.
fn headers_to_send<'a>(
    record: &'a SourceRecord,
    added: &'a [(&'static str, &'a str)],
) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
    record.headers.iter().filter(|(name, _)| kept(name)).chain(
        added
            .iter()
            .map(|(name, value)| (*name, Some(value.as_bytes()))),
    )
}

/// The headers to send for `record`: its own minus the DLQ's and an earlier replay's, plus
/// this replay's.
pub fn replay_headers(
    record: &SourceRecord,
    source: &str,
    replay_id: &str,
    operator: &str,
    at: &str,
) -> Vec<(String, Option<Vec<u8>>)> {
    let (partition, offset) = (record.partition.to_string(), record.offset.to_string());
    let added = added_headers(replay_id, at, operator, source, &partition, &offset);
    headers_to_send(record, &added)
        .map(|(name, value)| (name.to_owned(), value.map(<[u8]>::to_vec)))
        .collect()
}

/// This replay's headers, in the order they are appended.
fn added_headers<'a>(
    replay_id: &'a str,
    at: &'a str,
    operator: &'a str,
    source: &'a str,
    partition: &'a str,
    offset: &'a str,
) -> [(&'static str, &'a str); 6] {
    [
        (headers::ID, replay_id),
        (headers::AT, at),
        (headers::OPERATOR, operator),
        (headers::SOURCE_TOPIC, source),
        (headers::SOURCE_PARTITION, partition),
        (headers::SOURCE_OFFSET, offset),
    ]
}

/// What a dry run expects for one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// It decodes with the current contract of its destination.
    Ok {
        /// What was checked.
        detail: String,
    },
    /// It would fail again.
    WouldFail {
        /// Machine-readable reason (the runtime's dead-letter reasons).
        reason: String,
        /// Why.
        message: String,
    },
    /// There is nothing to check it against.
    NotChecked {
        /// Why.
        detail: String,
    },
}

/// Checks a record bound for `destination` against the registry, as a consumer of that topic
/// would decode it: its writer schema must exist, its body must decode, and the result must
/// resolve to the subject's current (latest) version.
pub async fn check_record(
    codec: &WireCodec,
    registry: &mut Registry,
    destination: &str,
    value: Option<&[u8]>,
) -> Result<Verdict, ReplayError> {
    let Some(bytes) = value else {
        return Ok(Verdict::WouldFail {
            reason: "missing_value".into(),
            message: "the record has no value".into(),
        });
    };
    let subject = format!("{destination}-value");
    let current = registry.current(&subject).await?;
    let decoded = match codec.decode(bytes).await {
        Ok(decoded) => decoded,
        Err(err) if err.is_transient() => {
            return Err(ReplayError::RegistryUnreachable {
                url: registry.url().to_owned(),
                timeout: "its request timeout".into(),
                message: err.to_string(),
            })
        }
        Err(err @ (WireError::WrongMagicByte { .. } | WireError::TooShort { .. }))
            if current.is_none() =>
        {
            return Ok(Verdict::NotChecked {
                detail: format!(
                    "`{subject}` has no contract and the value is not in wire format ({err})"
                ),
            })
        }
        Err(err) => {
            return Ok(Verdict::WouldFail {
                reason: err.reason().into(),
                message: err.to_string(),
            })
        }
    };
    let (id, value): (u32, Value) = decoded;
    let Some(current) = current else {
        return Ok(Verdict::NotChecked {
            detail: format!(
                "decodes with schema id {id}; `{subject}` has no contract to check it against"
            ),
        });
    };
    if current.id == id {
        return Ok(Verdict::Ok {
            detail: format!(
                "decodes with the current contract (`{subject}` version {}, id {id})",
                current.version
            ),
        });
    }
    match widen_decimals(value).resolve(&current.schema) {
        Ok(_) => Ok(Verdict::Ok {
            detail: format!(
                "schema id {id} resolves to the current contract (`{subject}` version {}, id {})",
                current.version, current.id
            ),
        }),
        Err(err) => Ok(Verdict::WouldFail {
            reason: "contract_violation".into(),
            message: format!(
                "schema id {id} does not resolve to the current contract (`{subject}` version {}, id {}): {err}",
                current.version, current.id
            ),
        }),
    }
}

/// A send awaiting its acknowledgement.
struct InFlight {
    partition: i32,
    offset: i64,
    destination: Arc<str>,
    delivery: DeliveryFuture,
}

/// At most this many sends unacknowledged at once.
const MAX_IN_FLIGHT: usize = 100_000;

/// The state of one run.
struct Replay<'a> {
    ctx: &'a Context,
    options: &'a RunOptions,
    checkpoint: Checkpoint,
    producer: Option<FutureProducer>,
    in_flight: VecDeque<InFlight>,
    summary: RunSummary,
    /// Destination partition offsets acknowledged since the last checkpoint.
    acked: BTreeMap<Arc<str>, BTreeMap<i32, i64>>,
    started: Instant,
    /// The last `backbone.replay.at` value and its millisecond: one format per millisecond.
    at: (i64, String),
}

impl Replay<'_> {
    /// Awaits every send; records where this replay's records now end in each destination.
    async fn drain(&mut self) -> Result<(), ReplayError> {
        while let Some(sent) = self.in_flight.pop_front() {
            self.settle(sent).await?;
        }
        Ok(())
    }

    async fn settle(&mut self, sent: InFlight) -> Result<(), ReplayError> {
        let failed = |source: KafkaError| ReplayError::Delivery {
            record: format!(
                "partition {} offset {} of `{}` to `{}`",
                sent.partition, sent.offset, self.checkpoint.spec.source, sent.destination
            ),
            source,
        };
        match sent.delivery.await {
            Ok(Ok(delivery)) => {
                let next = self
                    .acked
                    .entry(sent.destination)
                    .or_default()
                    .entry(delivery.partition)
                    .or_insert(0);
                *next = (*next).max(delivery.offset + 1);
                Ok(())
            }
            Ok(Err((err, _))) => Err(failed(err)),
            Err(_) => Err(failed(KafkaError::Canceled)),
        }
    }

    /// Awaits every send, then writes the checkpoint.
    async fn checkpoint(&mut self) -> Result<(), ReplayError> {
        self.drain().await?;
        for (topic, partitions) in std::mem::take(&mut self.acked) {
            let known = self
                .checkpoint
                .destinations
                .entry(topic.to_string())
                .or_default();
            for (partition, next) in partitions {
                let from = known.entry(partition).or_insert(next);
                *from = (*from).max(next);
            }
        }
        self.checkpoint.updated_at = format_rfc3339_ms(now_ms());
        if let Some(producer) = &self.producer {
            checkpoint::save(self.ctx, producer, &self.checkpoint).await?;
        }
        Ok(())
    }

    fn handled(&mut self, partition: i32, next: i64) {
        if let Some(progress) = self.checkpoint.partitions.get_mut(&partition) {
            progress.next = progress.next.max(next);
        }
    }

    fn stopped(&self) -> bool {
        self.options
            .stop
            .as_ref()
            .is_some_and(|stop| stop.load(Ordering::Relaxed))
    }

    /// Sends one record, waiting for room in the producer's queue if needed.
    async fn send(
        &mut self,
        record: &SourceRecord,
        destination: &Arc<str>,
        partition: Option<i32>,
        producer: &FutureProducer,
    ) -> Result<(), ReplayError> {
        let now = now_ms();
        if now != self.at.0 {
            self.at = (now, format_rfc3339_ms(now));
        }
        let (partition_text, offset_text) =
            (record.partition.to_string(), record.offset.to_string());
        let owned = {
            let spec = &self.checkpoint;
            let added = added_headers(
                &spec.replay_id,
                &self.at.1,
                &spec.operator,
                &spec.spec.source,
                &partition_text,
                &offset_text,
            );
            let mut owned = OwnedHeaders::new_with_capacity(record.headers.len() + added.len());
            for (key, value) in headers_to_send(record, &added) {
                owned = owned.insert(Header { key, value });
            }
            owned
        };
        let mut future = FutureRecord::<[u8], [u8]>::to(destination).headers(owned);
        if let Some(key) = record.key.as_deref() {
            future = future.key(key);
        }
        if let Some(value) = record.value.as_deref() {
            future = future.payload(value);
        }
        if let Some(partition) = partition {
            future = future.partition(partition);
        }
        loop {
            match producer.send_result(future) {
                Ok(delivery) => {
                    self.in_flight.push_back(InFlight {
                        partition: record.partition,
                        offset: record.offset,
                        destination: Arc::clone(destination),
                        delivery,
                    });
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    future = back;
                    match self.in_flight.pop_front() {
                        Some(oldest) => self.settle(oldest).await?,
                        None => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                Err((err, _)) => {
                    return Err(ReplayError::Delivery {
                        record: format!(
                            "partition {} offset {} of `{}` to `{destination}`",
                            record.partition, record.offset, self.checkpoint.spec.source
                        ),
                        source: err,
                    })
                }
            }
        }
        while self.in_flight.len() > MAX_IN_FLIGHT {
            if let Some(oldest) = self.in_flight.pop_front() {
                self.settle(oldest).await?;
            }
        }
        Ok(())
    }
}

/// Starts, resumes or dry-runs a replay. Dry-run lines go to `out`; progress and notes to
/// stderr; the summary is returned for the caller to print.
pub async fn run(
    ctx: &Context,
    options: &RunOptions,
    out: &mut (dyn Write + Send),
) -> Result<RunSummary, ReplayError> {
    let stored = match &options.replay_id {
        Some(id) => checkpoint::load(ctx, id).await?,
        None => None,
    };
    let given = options.source.as_ref().map(|source| ReplaySpec {
        source: source.clone(),
        destination: options.to.clone(),
        filters: options.filters.clone(),
    });
    let resumed = stored.is_some();
    let mut checkpoint = match stored {
        Some(stored) => {
            if given.as_ref().is_some_and(|given| *given != stored.spec) {
                return Err(ReplayError::ReplayMismatch {
                    id: stored.replay_id,
                    stored: stored.spec.describe(),
                });
            }
            stored
        }
        None => {
            let Some(spec) = given else {
                return Err(ReplayError::invalid(
                    "--replay-id",
                    options.replay_id.as_deref().unwrap_or_default(),
                    "the id of a checkpointed replay (none is stored under it), or a source topic to start a new replay",
                ));
            };
            let filter = Filter::parse(&spec.filters, now_ms())?;
            plan(ctx, options, spec, filter).await?
        }
    };
    if resumed {
        // The topics must still be there.
        ctx.describe(&checkpoint.spec.source, "source").await?;
        // Whoever resumes it is who republishes from here on, in headers and audit.
        checkpoint.operator.clone_from(&options.operator);
    }
    if let Some(to) = &checkpoint.spec.destination {
        ctx.describe(to, "destination").await?;
    }
    let mut summary = RunSummary {
        replay_id: checkpoint.replay_id.clone(),
        source: checkpoint.spec.source.clone(),
        destination: checkpoint.spec.destination.clone(),
        dry_run: options.dry_run,
        resumed,
        matched: checkpoint.matched,
        already_sent: checkpoint.sent,
        ..RunSummary::default()
    };
    if checkpoint.complete {
        summary.complete = true;
        return Ok(summary);
    }
    let skip = if resumed {
        checkpoint::sent_after(ctx, &checkpoint).await?
    } else {
        BTreeSet::new()
    };

    let started = Instant::now();
    let (producer, audit_log) = if options.dry_run {
        (None, None)
    } else {
        ctx.ensure_topic(&ctx.checkpoint_topic, true).await?;
        let audit_log = AuditLog::open(ctx).await?;
        let producer = ctx.producer()?;
        // The first checkpoint fixes the spans before anything is sent.
        checkpoint.updated_at = format_rfc3339_ms(now_ms());
        checkpoint::save(ctx, &producer, &checkpoint).await?;
        audit_log
            .write(&audit_record(
                &checkpoint,
                audit::event::STARTED,
                &summary,
                None,
            ))
            .await?;
        (Some(producer), Some(audit_log))
    };
    let mut replay = Replay {
        ctx,
        options,
        checkpoint,
        producer,
        in_flight: VecDeque::new(),
        summary,
        acked: BTreeMap::new(),
        started,
        at: (0, String::new()),
    };
    let result = replay_records(&mut replay, &skip, out).await;
    let finished = match result {
        Ok(()) => {
            let done = if replay.options.dry_run {
                Ok(())
            } else {
                replay.checkpoint().await
            };
            done.map(|()| {
                replay.summary.complete = replay.checkpoint.complete;
            })
        }
        Err(err) => Err(err),
    };
    replay.summary.seconds = replay.started.elapsed().as_secs_f64();
    replay.summary.matched = replay.checkpoint.matched;
    if let Some(audit_log) = &audit_log {
        let event = match &finished {
            Ok(()) if replay.summary.interrupted => audit::event::INTERRUPTED,
            Ok(()) => audit::event::COMPLETED,
            Err(_) => audit::event::FAILED,
        };
        let message = finished.as_ref().err().map(ToString::to_string);
        let record = audit_record(&replay.checkpoint, event, &replay.summary, message);
        // The replay's own error matters more than a failed audit write after it.
        let audited = audit_log.write(&record).await;
        finished?;
        audited?;
    } else {
        finished?;
    }
    Ok(replay.summary)
}

/// A new replay: its id, and the spans of the source it covers, fixed now.
async fn plan(
    ctx: &Context,
    options: &RunOptions,
    spec: ReplaySpec,
    filter: Filter,
) -> Result<Checkpoint, ReplayError> {
    let source = ctx.describe(&spec.source, "source").await?;
    if let Some(partition) = filter.partition {
        if source.watermarks(partition).is_none() {
            return Err(ReplayError::malformed(
                "--partition",
                &partition.to_string(),
                source.partition_forms(),
            ));
        }
    }
    let partitions = source
        .partitions
        .iter()
        .filter(|(p, _)| filter.partition.is_none_or(|only| only == **p))
        .map(|(&partition, &(low, high))| {
            let (from, end) = filter
                .offsets
                .map_or((low, high), |range| range.clamp(low, high));
            (
                partition,
                SourceProgress {
                    from,
                    end,
                    next: from,
                },
            )
        })
        .collect();
    let now = format_rfc3339_ms(now_ms());
    Ok(Checkpoint {
        replay_id: options.replay_id.clone().unwrap_or_else(new_replay_id),
        spec,
        filter,
        operator: options.operator.clone(),
        started_at: now.clone(),
        updated_at: now,
        partitions,
        destinations: BTreeMap::new(),
        matched: 0,
        sent: 0,
        complete: false,
    })
}

fn audit_record(
    checkpoint: &Checkpoint,
    event: &str,
    summary: &RunSummary,
    message: Option<String>,
) -> AuditRecord {
    let mut record = AuditRecord::new(
        &checkpoint.replay_id,
        audit::action::REPLAY,
        event,
        &checkpoint.operator,
        json!({
            "source": checkpoint.spec.source,
            "destination": checkpoint.spec.destination,
            "resumed": summary.resumed,
        }),
    );
    record.filters = Some(checkpoint.spec.filters.clone());
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    record.counts = [
        ("matched", count(checkpoint.matched)),
        ("sent", count(summary.sent)),
        ("sent_total", count(checkpoint.sent)),
        ("already_sent", count(summary.already_sent)),
        ("without_origin", count(summary.without_origin)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    record.message = message;
    record
}

/// The read-filter-send loop.
async fn replay_records(
    replay: &mut Replay<'_>,
    skip: &BTreeSet<(i32, i64)>,
    out: &mut (dyn Write + Send),
) -> Result<(), ReplayError> {
    let ctx = replay.ctx;
    let options = replay.options;
    let filter = replay.checkpoint.filter.clone();
    let spans = replay.checkpoint.remaining();
    let total: u64 = spans.iter().map(crate::scan::Span::len).sum();
    let label = if options.dry_run {
        format!("dry run {}", replay.checkpoint.replay_id)
    } else {
        format!("replay {}", replay.checkpoint.replay_id)
    };
    let mut progress = Progress::new(options.progress, &label, total);
    // `--limit` keeps the first matching records partition by partition, so that a resume
    // selects the same ones; without it partitions are read at once.
    let order = if filter.limit.is_some() {
        ScanOrder::PartitionByPartition
    } else {
        ScanOrder::Interleaved
    };
    let mut scanner = Scanner::start_in(ctx, &replay.checkpoint.spec.source, spans, order);
    let mut checking = if options.dry_run {
        let registry = Registry::new(ctx.registry.clone(), ctx.timeout)?;
        registry.check().await?;
        Some((WireCodec::new(ctx.registry.clone()), registry))
    } else {
        None
    };
    let producer = replay.producer.clone();
    // Destinations by name, interned: whether each exists (dry run) or is checkpointed.
    let mut destinations: HashMap<Arc<str>, bool> = replay
        .checkpoint
        .destinations
        .keys()
        .map(|d| (Arc::from(d.as_str()), true))
        .collect();
    let fixed_destination: Option<Arc<str>> =
        replay.checkpoint.spec.destination.as_deref().map(Arc::from);
    let mut in_time_range: u64 = 0;
    let mut last_checkpoint = Instant::now();
    let rate_from = Instant::now();
    let mut paced: u64 = 0;
    let mut warned_origin = false;
    'read: while let Some(item) = scanner.next().await {
        let records = match item? {
            Scanned::Done { partition, end } => {
                replay.handled(partition, end);
                continue;
            }
            Scanned::Records(records) => records,
        };
        let mut read_now = 0;
        for record in &records {
            if replay.stopped() {
                replay.summary.interrupted = true;
                break 'read;
            }
            read_now += 1;
            replay.summary.read += 1;
            if filter.in_time_range(record) {
                in_time_range += 1;
            }
            if !filter.matches(record) {
                replay.handled(record.partition, record.offset + 1);
                continue;
            }
            if filter
                .limit
                .is_some_and(|limit| replay.checkpoint.matched >= limit)
            {
                // The rest of every span is outside the selection.
                for progress in replay.checkpoint.partitions.values_mut() {
                    progress.next = progress.end;
                }
                break 'read;
            }
            // `matched` counts the record once it is handled: a checkpoint written before
            // that (for a new destination) must not count it, since a resume reads it again.
            if skip.contains(&(record.partition, record.offset)) {
                replay.checkpoint.matched += 1;
                replay.summary.already_sent += 1;
                replay.checkpoint.sent += 1;
                replay.handled(record.partition, record.offset + 1);
                continue;
            }
            let destination: Arc<str> = match &fixed_destination {
                Some(to) => Arc::clone(to),
                None => match record.header(dlq::ORIGIN_TOPIC) {
                    Some(origin) => destinations
                        .get_key_value(origin)
                        .map_or_else(|| Arc::from(origin), |(name, _)| Arc::clone(name)),
                    None => {
                        replay.checkpoint.matched += 1;
                        replay.summary.without_origin += 1;
                        if !warned_origin {
                            warned_origin = true;
                            progress.note(&format!(
                                "skipping records without a {} header (first: partition {} offset {}); name a destination with --to to send them",
                                dlq::ORIGIN_TOPIC, record.partition, record.offset
                            ));
                        }
                        replay.handled(record.partition, record.offset + 1);
                        continue;
                    }
                },
            };
            if let Some((codec, registry)) = checking.as_mut() {
                replay.checkpoint.matched += 1;
                let exists = match destinations.get(&*destination) {
                    Some(&exists) => exists,
                    None => {
                        let exists = match ctx.describe(&destination, "destination").await {
                            Ok(_) => true,
                            Err(ReplayError::UnknownTopic { .. }) => false,
                            Err(err) => return Err(err),
                        };
                        destinations.insert(Arc::clone(&destination), exists);
                        exists
                    }
                };
                let verdict = if exists {
                    check_record(codec, registry, &destination, record.value.as_deref()).await?
                } else {
                    Verdict::WouldFail {
                        reason: "unknown_topic".into(),
                        message: format!("destination topic `{destination}` does not exist"),
                    }
                };
                report(out, options.json, record, &destination, &verdict)?;
                match &verdict {
                    Verdict::WouldFail { reason, .. } => {
                        replay.summary.would_fail += 1;
                        *replay.summary.failures.entry(reason.clone()).or_default() += 1;
                    }
                    Verdict::Ok { .. } | Verdict::NotChecked { .. } => {
                        replay.summary.sent += 1;
                        count(&mut replay.summary.by_destination, &destination);
                    }
                }
                replay.handled(record.partition, record.offset + 1);
                progress.update(0, replay.summary.sent);
                continue;
            }
            let Some(producer) = producer.as_ref() else {
                continue;
            };
            if !destinations.contains_key(&*destination) {
                let offsets = ctx.describe(&destination, "destination").await?;
                // Where a resume starts looking for this replay's records in it, written
                // down before the first one is sent there.
                replay.checkpoint.destinations.insert(
                    destination.to_string(),
                    offsets
                        .partitions
                        .iter()
                        .map(|(&p, &(_, high))| (p, high))
                        .collect(),
                );
                replay.checkpoint().await?;
                last_checkpoint = Instant::now();
                destinations.insert(Arc::clone(&destination), true);
            }
            replay.checkpoint.matched += 1;
            if let Some(rate) = options.rate {
                let due = rate_from + Duration::from_secs_f64(paced as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                paced += 1;
            }
            // A dead letter goes back to the partition it was read from, so that its key stays
            // where the topic's producers put it, whatever partitioner they use.
            let partition = if fixed_destination.is_none() {
                record
                    .header(dlq::ORIGIN_PARTITION)
                    .and_then(|p| p.parse::<i32>().ok())
                    .filter(|p| {
                        replay
                            .checkpoint
                            .destinations
                            .get(&*destination)
                            .is_some_and(|partitions| partitions.contains_key(p))
                    })
            } else {
                None
            };
            replay
                .send(record, &destination, partition, producer)
                .await?;
            replay.summary.sent += 1;
            replay.checkpoint.sent += 1;
            count(&mut replay.summary.by_destination, &destination);
            replay.handled(record.partition, record.offset + 1);
            if options.rate.is_some() {
                progress.update(std::mem::take(&mut read_now), replay.summary.sent);
            }
            // Looking at the clock for every record costs more than the check is worth when
            // records fly; at a set rate every record is worth it.
            if (options.rate.is_some() || replay.summary.sent % 128 == 0)
                && last_checkpoint.elapsed() >= options.checkpoint_interval
            {
                replay.checkpoint().await?;
                last_checkpoint = Instant::now();
            }
        }
        progress.update(read_now, replay.summary.sent);
        scanner.recycle(records);
    }
    drop(scanner);
    progress.finish();
    replay.checkpoint.complete = !replay.summary.interrupted;
    if replay.checkpoint.matched == 0 {
        let topic = replay.checkpoint.spec.source.clone();
        if filter.has_time_range() && in_time_range == 0 && !replay.summary.interrupted {
            return Err(ReplayError::EmptyTimeRange {
                topic,
                since: filter
                    .since_ms
                    .map_or_else(|| "the beginning".into(), format_rfc3339_ms),
                until: filter
                    .until_ms
                    .map_or_else(|| "now".into(), format_rfc3339_ms),
                basis: TIME_BASIS,
            });
        }
        if !replay.summary.interrupted {
            return Err(ReplayError::NothingMatched {
                topic,
                filters: replay.checkpoint.spec.filters.describe(),
            });
        }
    }
    // Nothing had an origin to go back to: not a dead-letter topic, most likely.
    if replay.summary.without_origin > 0
        && replay.checkpoint.sent == 0
        && replay.summary.sent == 0
        && replay.summary.would_fail == 0
    {
        return Err(ReplayError::NotDeadLetters {
            topic: replay.checkpoint.spec.source.clone(),
            count: replay.summary.without_origin,
        });
    }
    Ok(())
}

/// Adds one to `name`'s count, allocating its key only the first time.
fn count(counts: &mut BTreeMap<String, u64>, name: &str) {
    match counts.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            counts.insert(name.to_owned(), 1);
        }
    }
}

/// One dry-run line.
fn report(
    out: &mut (dyn Write + Send),
    json: bool,
    record: &SourceRecord,
    destination: &str,
    verdict: &Verdict,
) -> Result<(), ReplayError> {
    if json {
        let line = json!({
            "partition": record.partition,
            "offset": record.offset,
            "key": record.key_text(),
            "destination": destination,
            "dlq_reason": record.header(dlq::REASON),
            "failed_at": record.header(dlq::FAILED_AT),
            "check": verdict,
        });
        writeln!(out, "{line}")?;
        return Ok(());
    }
    let what = match verdict {
        Verdict::Ok { detail } => format!("would send: {detail}"),
        Verdict::NotChecked { detail } => format!("would send, not checked: {detail}"),
        Verdict::WouldFail { reason, message } => {
            format!("WOULD FAIL AGAIN: {reason}: {message}")
        }
    };
    writeln!(
        out,
        "partition {} offset {} -> {destination} key={} time={} dlq_reason={}: {what}",
        record.partition,
        record.offset,
        record.key_text().unwrap_or_else(|| "-".into()),
        crate::dlq::record_time_text(record),
        record.header(dlq::REASON).unwrap_or("-"),
    )?;
    Ok(())
}

/// The summary in words.
pub fn print_summary(summary: &RunSummary, out: &mut dyn Write) -> std::io::Result<()> {
    let destination = summary
        .destination
        .clone()
        .unwrap_or_else(|| "their origin topics".into());
    if summary.dry_run {
        writeln!(
            out,
            "dry run of replay {} from `{}` to {destination}: {} would be sent, {} would fail again, {} without an origin topic; nothing was sent",
            summary.replay_id, summary.source, summary.sent, summary.would_fail, summary.without_origin
        )?;
        for (reason, count) in &summary.failures {
            writeln!(out, "  would fail again, {reason}: {count}")?;
        }
    } else {
        let state = if summary.interrupted {
            "interrupted".to_owned()
        } else if summary.complete {
            "complete".to_owned()
        } else {
            "not complete".to_owned()
        };
        writeln!(
            out,
            "replay {} from `{}` to {destination}: {} sent in {}, {} sent before, {} matched, {} read, {} without an origin topic; {state}",
            summary.replay_id,
            summary.source,
            summary.sent,
            format_duration(Duration::from_secs_f64(summary.seconds)),
            summary.already_sent,
            summary.matched,
            summary.read,
            summary.without_origin,
        )?;
    }
    for (topic, count) in &summary.by_destination {
        writeln!(out, "  {topic}: {count}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_headers_drop_the_dlq_and_earlier_replays_and_keep_the_rest() {
        let record = SourceRecord {
            partition: 2,
            offset: 41,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: [
                ("traceparent", Some(&b"00-abc"[..])),
                (dlq::REASON, Some(b"unknown_schema_id")),
                (dlq::ORIGIN_TOPIC, Some(b"usage.events")),
                ("__connect.errors.topic", Some(b"usage.events")),
                (headers::ID, Some(b"r-old")),
                ("ce_id", None),
                ("traceparent", Some(b"second")),
            ]
            .into_iter()
            .collect(),
        };
        let sent = replay_headers(
            &record,
            "usage.events.dlq",
            "r-new",
            "ann",
            "2026-11-27T03:00:00.000Z",
        );
        let names: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "traceparent",
                "ce_id",
                "traceparent",
                headers::ID,
                headers::AT,
                headers::OPERATOR,
                headers::SOURCE_TOPIC,
                headers::SOURCE_PARTITION,
                headers::SOURCE_OFFSET,
            ]
        );
        assert_eq!(sent[1].1, None, "a null header stays null");
        assert_eq!(sent[2].1.as_deref(), Some(&b"second"[..]));
        assert_eq!(sent[3].1.as_deref(), Some(&b"r-new"[..]));
        assert_eq!(sent[7].1.as_deref(), Some(&b"2"[..]));
        assert_eq!(sent[8].1.as_deref(), Some(&b"41"[..]));
    }

    #[test]
    fn replay_ids_are_sortable_and_distinct() {
        let id = new_replay_id();
        assert!(id.starts_with("r-2"), "{id}");
        assert_eq!(id.len(), "r-20261127T030000Z-1a2b".len(), "{id}");
        assert!(
            (0..20)
                .map(|_| new_replay_id())
                .collect::<BTreeSet<_>>()
                .len()
                > 1,
            "random suffix"
        );
    }
}
