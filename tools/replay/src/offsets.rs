//! `replay reset-offsets`: move a consumer group's committed offsets on one topic to a time, an
//! offset, the earliest or the latest record, with a preview of old and new offsets per
//! partition. Nothing changes without `--execute`; a group with active members is refused
//! unless `--force` (their next commit would overwrite the reset anyway, and Apache Kafka
//! refuses commits from outside a non-empty group).
//!
//! `--to-time` asks the broker (ListOffsets by timestamp) and then checks its answer against
//! the records around it: the record before must be older than the time, the record at the
//! answer must not be. When a broker gets this wrong, the partition is read from its start to
//! find the first record at or after the time, and the preview says so.

use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::json;

use crate::audit::{self, AuditLog, AuditRecord};
use crate::error::ReplayError;
use crate::Context;
use backbone_calendar::{format_rfc3339_ms, now_ms};
use backbone_core::table::{Align, Table};

/// Where to move the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetTarget {
    /// The first record at or after this time (ms since the epoch).
    Time(i64),
    /// This offset, clamped to what each partition holds.
    Offset(i64),
    /// Each partition's first record.
    Earliest,
    /// Each partition's end: only new records will be read.
    Latest,
}

impl ResetTarget {
    /// In words, for the preview and the audit.
    pub fn describe(&self) -> String {
        match self {
            Self::Time(ms) => format_rfc3339_ms(*ms),
            Self::Offset(n) => format!("offset {n}"),
            Self::Earliest => "earliest".to_owned(),
            Self::Latest => "latest".to_owned(),
        }
    }
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionMove {
    /// Partition.
    pub partition: i32,
    /// The committed offset now, if any.
    pub current: Option<i64>,
    /// The offset it moves to.
    pub new: i64,
    /// The partition's first offset.
    pub low: i64,
    /// The partition's end offset.
    pub high: i64,
    /// Anything the operator should know (clamped, found by reading).
    pub note: Option<String>,
}

/// A consumer group member, as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Member id.
    pub id: String,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub host: String,
}

/// What a reset would do.
#[derive(Debug, Clone, Serialize)]
pub struct ResetPlan {
    /// This reset's id in the audit trail.
    pub id: String,
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// Where to, in words.
    pub target: String,
    /// The group's state as the broker reports it (`Empty`, `Stable`, `Dead`...).
    pub group_state: String,
    /// Its active members.
    pub members: Vec<Member>,
    /// One move per partition.
    pub moves: Vec<PartitionMove>,
    /// Whether the moves were applied.
    pub executed: bool,
}

/// Works out the moves of `group` on `topic` (every partition, or `only`).
pub async fn plan(
    ctx: &Context,
    group: &str,
    topic: &str,
    target: ResetTarget,
    only: Option<i32>,
) -> Result<ResetPlan, ReplayError> {
    let ctx = ctx.clone();
    let group = group.to_owned();
    let topic = topic.to_owned();
    crate::blocking(move || plan_blocking(&ctx, &group, &topic, &target, only)).await
}

fn group_consumer(ctx: &Context, group: &str) -> Result<BaseConsumer, ReplayError> {
    let mut config = ctx.kafka.admin_config();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    config
        .create()
        .map_err(|e| ReplayError::kafka(format!("a client for group `{group}`"), e))
}

fn plan_blocking(
    ctx: &Context,
    group: &str,
    topic: &str,
    target: &ResetTarget,
    only: Option<i32>,
) -> Result<ResetPlan, ReplayError> {
    let offsets = ctx.describe_blocking(topic, "group's")?;
    if let Some(partition) = only {
        if offsets.watermarks(partition).is_none() {
            return Err(ReplayError::invalid(
                "--partition",
                &partition.to_string(),
                offsets.partition_forms(),
            ));
        }
    }
    let consumer = group_consumer(ctx, group)?;
    let (group_state, members) = describe_group(ctx, &consumer, group)?;
    let mut wanted = TopicPartitionList::new();
    for &partition in offsets.partitions.keys() {
        if only.is_none_or(|o| o == partition) {
            wanted.add_partition(topic, partition);
        }
    }
    let committed = consumer
        .committed_offsets(wanted.clone(), ctx.timeout)
        .map_err(|e| ReplayError::kafka(format!("committed offsets of group `{group}`"), e))?;
    let by_time = match target {
        ResetTarget::Time(ms) => {
            let mut times = TopicPartitionList::new();
            for element in wanted.elements() {
                times
                    .add_partition_offset(topic, element.partition(), Offset::Offset(*ms))
                    .map_err(|e| ReplayError::kafka("offsets for times", e))?;
            }
            Some(
                consumer
                    .offsets_for_times(times, ctx.timeout)
                    .map_err(|e| ReplayError::kafka(format!("offsets of `{topic}` by time"), e))?,
            )
        }
        _ => None,
    };
    let mut moves = Vec::new();
    for element in wanted.elements() {
        let partition = element.partition();
        let (low, high) = offsets.watermarks(partition).unwrap_or((0, 0));
        let current = committed
            .find_partition(topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        let (new, note) = match target {
            ResetTarget::Earliest => (low, None),
            ResetTarget::Latest => (high, None),
            ResetTarget::Offset(n) if *n < low => {
                (low, Some(format!("{n} is below the first offset")))
            }
            ResetTarget::Offset(n) if *n > high => (high, Some(format!("{n} is beyond the end"))),
            ResetTarget::Offset(n) => (*n, None),
            ResetTarget::Time(ms) => {
                let answer = by_time
                    .as_ref()
                    .and_then(|list| list.find_partition(topic, partition))
                    .map(|e| e.offset());
                let broker = match answer {
                    Some(Offset::Offset(o)) => o.clamp(low, high),
                    // No record at or after the time.
                    _ => high,
                };
                offset_for_time(ctx, &consumer, topic, partition, (low, high), *ms, broker)?
            }
        };
        moves.push(PartitionMove {
            partition,
            current,
            new,
            low,
            high,
            note,
        });
    }
    Ok(ResetPlan {
        id: format!(
            "reset-{}",
            crate::republish::new_replay_id().trim_start_matches("r-")
        ),
        group: group.to_owned(),
        topic: topic.to_owned(),
        target: target.describe(),
        group_state,
        members,
        moves,
        executed: false,
    })
}

fn describe_group(
    ctx: &Context,
    consumer: &BaseConsumer,
    group: &str,
) -> Result<(String, Vec<Member>), ReplayError> {
    let list = consumer
        .fetch_group_list(Some(group), ctx.timeout)
        .map_err(|e| ReplayError::BrokerUnreachable {
            servers: ctx.kafka.bootstrap_servers.clone(),
            timeout: crate::time::format_duration(ctx.timeout),
            message: format!("describing group `{group}`: {e}"),
        })?;
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
        return Ok(("Dead".to_owned(), Vec::new()));
    };
    let members = info
        .members()
        .iter()
        .map(|m| Member {
            id: m.id().to_owned(),
            client_id: m.client_id().to_owned(),
            host: m.client_host().to_owned(),
        })
        .collect();
    Ok((info.state().to_owned(), members))
}

/// Hands the offset and timestamp of each record of `partition` from `from` on to
/// `keep_going`, until it returns false or the partition ends.
fn timestamps_from(
    ctx: &Context,
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    mut keep_going: impl FnMut(i64, Option<i64>) -> bool,
) -> Result<(), ReplayError> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(|e| ReplayError::kafka("reading timestamps", e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| ReplayError::kafka("reading timestamps", e))?;
    let deadline = Instant::now() + ctx.timeout;
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message))
                if message.partition() == partition
                    && !keep_going(message.offset(), message.timestamp().to_millis()) =>
            {
                return Ok(());
            }
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => return Ok(()),
            Some(Err(KafkaError::PartitionEOF(_))) | Some(Ok(_)) => {}
            Some(Err(err)) => {
                return Err(ReplayError::kafka(
                    format!("reading partition {partition} of `{topic}`"),
                    err,
                ))
            }
            None if Instant::now() >= deadline => {
                return Err(ReplayError::BrokerUnreachable {
                    servers: ctx.kafka.bootstrap_servers.clone(),
                    timeout: crate::time::format_duration(ctx.timeout),
                    message: format!(
                        "no records from partition {partition} of `{topic}` at offset {from}"
                    ),
                })
            }
            None => {}
        }
    }
}

/// The offset `--to-time` moves `partition` to, given the broker's answer `broker` for `time`:
/// the answer when the records around it agree, else the first record at or after `time`
/// found by reading the partition, with a note saying so. Blocking.
pub fn checked_offset_for_time(
    ctx: &Context,
    topic: &str,
    partition: i32,
    time: i64,
    broker: i64,
) -> Result<(i64, Option<String>), ReplayError> {
    let offsets = ctx.describe_blocking(topic, "group's")?;
    let marks = offsets.watermarks(partition).ok_or_else(|| {
        ReplayError::invalid(
            "--partition",
            &partition.to_string(),
            offsets.partition_forms(),
        )
    })?;
    let consumer = group_consumer(ctx, "_backbone.replay.reader")?;
    offset_for_time(ctx, &consumer, topic, partition, marks, time, broker)
}

/// Checks the broker's answer for `time` against the records around it; reads the partition
/// from the start when it does not hold.
fn offset_for_time(
    ctx: &Context,
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    (low, high): (i64, i64),
    time: i64,
    broker: i64,
) -> Result<(i64, Option<String>), ReplayError> {
    if low >= high {
        return Ok((high, None));
    }
    let before_ok = broker <= low || {
        let mut older = false;
        timestamps_from(ctx, consumer, topic, partition, broker - 1, |offset, ts| {
            if offset == broker - 1 {
                older = ts.is_none_or(|ts| ts < time);
            }
            offset < broker - 1
        })?;
        older
    };
    let at_ok = broker >= high || {
        let mut newer = false;
        timestamps_from(ctx, consumer, topic, partition, broker, |offset, ts| {
            if offset >= broker {
                newer = ts.is_some_and(|ts| ts >= time);
                return false;
            }
            true
        })?;
        newer
    };
    if before_ok && at_ok {
        return Ok((broker, None));
    }
    let mut found = high;
    timestamps_from(ctx, consumer, topic, partition, low, |offset, ts| {
        if ts.is_some_and(|ts| ts >= time) {
            found = offset;
            return false;
        }
        offset + 1 < high
    })?;
    Ok((
        found,
        Some(format!(
            "the broker answered {broker}; {found} found by reading the partition"
        )),
    ))
}

/// Applies `plan`: refuses while the group has members unless `force`, commits the new
/// offsets, reads them back, and audits the outcome.
pub async fn execute(
    ctx: &Context,
    plan: &mut ResetPlan,
    force: bool,
    operator: &str,
) -> Result<(), ReplayError> {
    let audit_log = AuditLog::open(ctx).await?;
    let mut record = AuditRecord::new(
        &plan.id,
        audit::action::RESET_OFFSETS,
        audit::event::COMPLETED,
        operator,
        json!({
            "group": plan.group,
            "topic": plan.topic,
            "to": plan.target,
            "forced": force,
            "moves": plan.moves,
        }),
    );
    record.counts = [
        (
            "partitions".to_owned(),
            i64::try_from(plan.moves.len()).unwrap_or(0),
        ),
        (
            "active_members".to_owned(),
            i64::try_from(plan.members.len()).unwrap_or(0),
        ),
    ]
    .into();
    if !plan.members.is_empty() && !force {
        let err = ReplayError::GroupActive {
            group: plan.group.clone(),
            count: plan.members.len(),
            members: plan
                .members
                .iter()
                .map(|m| format!("{} on {}", m.client_id, m.host))
                .collect::<Vec<_>>()
                .join(", "),
        };
        record.event = audit::event::REFUSED.into();
        record.message = Some(err.to_string());
        audit_log.write(&record).await?;
        return Err(err);
    }
    let applied = {
        let ctx = ctx.clone();
        let plan = plan.clone();
        crate::blocking(move || commit_blocking(&ctx, &plan)).await
    };
    match applied {
        Ok(()) => {
            plan.executed = true;
            audit_log.write(&record).await
        }
        Err(err) => {
            record.event = audit::event::FAILED.into();
            record.message = Some(err.to_string());
            let audited = audit_log.write(&record).await;
            Err(audited.err().unwrap_or(err))
        }
    }
}

fn commit_blocking(ctx: &Context, plan: &ResetPlan) -> Result<(), ReplayError> {
    let consumer = group_consumer(ctx, &plan.group)?;
    let mut list = TopicPartitionList::new();
    for m in &plan.moves {
        list.add_partition_offset(&plan.topic, m.partition, Offset::Offset(m.new))
            .map_err(|e| ReplayError::kafka("building the commit", e))?;
    }
    let context = || {
        format!(
            "committing offsets of group `{}` on `{}`",
            plan.group, plan.topic
        )
    };
    consumer
        .commit(&list, CommitMode::Sync)
        .map_err(|e| match e {
            KafkaError::ConsumerCommit(RDKafkaErrorCode::UnknownMemberId) => ReplayError::Other {
                what: context(),
                message: "the broker refused the commit because the group has members \
                          (UNKNOWN_MEMBER_ID); stop its consumers, or wait for their sessions \
                          to time out, and try again"
                    .into(),
            },
            other => ReplayError::kafka(context(), other),
        })?;
    let committed = consumer
        .committed_offsets(list.clone(), ctx.timeout)
        .map_err(|e| ReplayError::kafka(context(), e))?;
    for m in &plan.moves {
        let now = committed
            .find_partition(&plan.topic, m.partition)
            .map(|e| e.offset());
        if now != Some(Offset::Offset(m.new)) {
            return Err(ReplayError::Other {
                what: context(),
                message: format!(
                    "partition {} reads back as {now:?} after committing {}; the group's members may have committed over it",
                    m.partition, m.new
                ),
            });
        }
    }
    Ok(())
}

/// Prints the preview (or the result) as a table, with the group's members.
pub fn print_plan(plan: &ResetPlan, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "group `{}` on `{}` to {} (group state: {}, {} active member(s))",
        plan.group,
        plan.topic,
        plan.target,
        plan.group_state,
        plan.members.len()
    )?;
    for m in &plan.members {
        let mut line = format!("  member {}", m.id);
        if !m.client_id.is_empty() {
            line.push_str(&format!(", client {}", m.client_id));
        }
        if !m.host.is_empty() {
            line.push_str(&format!(" on {}", m.host));
        }
        writeln!(out, "{line}")?;
    }
    let rows: Vec<[String; 6]> = plan
        .moves
        .iter()
        .map(|m| {
            let change = m
                .current
                .map_or_else(|| "-".into(), |c| format!("{:+}", m.new - c));
            [
                m.partition.to_string(),
                m.current.map_or_else(|| "-".into(), |c| c.to_string()),
                m.new.to_string(),
                change,
                format!("{}..{}", m.low, m.high),
                m.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let table = Table::new(
        ["PARTITION", "CURRENT", "NEW", "CHANGE", "HOLDS", "NOTE"],
        [Align::Left; 6],
    )
    .with_rows(rows);
    write!(out, "{}", table.render())?;
    if plan.executed {
        writeln!(out, "applied (audit id {})", plan.id)
    } else {
        writeln!(out, "preview only: nothing changed; add --execute to apply")
    }
}

/// Parses a `--to-time` value.
pub fn parse_target_time(text: &str) -> Result<ResetTarget, ReplayError> {
    crate::time::parse_instant(text, now_ms())
        .map(ResetTarget::Time)
        .ok_or_else(|| ReplayError::invalid("--to-time", text, crate::time::INSTANT_FORMS))
}
