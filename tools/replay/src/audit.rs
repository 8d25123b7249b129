//! The audit trail: a JSON record on `_backbone.audit` when a replay or an offset reset
//! starts and when it ends (completed, failed, interrupted, refused), saying who did what,
//! with which filters, and what came of it. `replay audit` lists them, one line per action.
//!
//! Dry runs and previews change nothing and are not audited.

use std::collections::BTreeMap;
use std::io::Write;

use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::ReplayError;
use crate::filter::FilterArgs;
use crate::scan::Scanner;
use crate::Context;
use backbone_calendar::format_rfc3339_ms;
use backbone_core::table::{Align, Table};

/// The audited actions (`replay tenant` adds its own, `crate::tenant::action`).
pub mod action {
    /// `replay run`.
    pub const REPLAY: &str = "replay";
    /// `replay reset-offsets --execute`.
    pub const RESET_OFFSETS: &str = "reset-offsets";
}

/// What happened to an action.
pub mod event {
    /// It began.
    pub const STARTED: &str = "started";
    /// It finished as asked.
    pub const COMPLETED: &str = "completed";
    /// It stopped on an error.
    pub const FAILED: &str = "failed";
    /// It was stopped by the operator (Ctrl-C) and can be resumed.
    pub const INTERRUPTED: &str = "interrupted";
    /// It was refused before changing anything.
    pub const REFUSED: &str = "refused";
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The action's id: a replay id, or a reset id.
    pub id: String,
    /// `replay` or `reset-offsets`.
    pub action: String,
    /// `started`, `completed`, `failed`, `interrupted` or `refused`.
    pub event: String,
    /// When (RFC 3339).
    pub at: String,
    /// Who: `--operator`, else `$USER`.
    pub operator: String,
    /// The machine it ran on.
    #[serde(default)]
    pub host: Option<String>,
    /// What it acts on: source and destination, or group, topic and target.
    pub target: Json,
    /// The filter flags of a replay.
    #[serde(default)]
    pub filters: Option<FilterArgs>,
    /// Counts so far (matched, sent, partitions moved...).
    #[serde(default)]
    pub counts: BTreeMap<String, i64>,
    /// The error or refusal, in words.
    #[serde(default)]
    pub message: Option<String>,
}

impl AuditRecord {
    /// A record of `event` for action `id`, timed now, on this host.
    pub fn new(id: &str, action: &str, event: &str, operator: &str, target: Json) -> Self {
        Self {
            id: id.to_owned(),
            action: action.to_owned(),
            event: event.to_owned(),
            at: format_rfc3339_ms(backbone_calendar::now_ms()),
            operator: operator.to_owned(),
            host: hostname(),
            target,
            filters: None,
            counts: BTreeMap::new(),
            message: None,
        }
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

/// Writes audit records.
pub struct AuditLog {
    ctx: Context,
    producer: FutureProducer,
}

impl AuditLog {
    /// Creates the audit topic if needed and a producer for it.
    pub async fn open(ctx: &Context) -> Result<Self, ReplayError> {
        ctx.ensure_topic(&ctx.audit_topic, false).await?;
        Ok(Self {
            ctx: ctx.clone(),
            producer: ctx.producer()?,
        })
    }

    /// Writes `record` and waits until the broker has it.
    pub async fn write(&self, record: &AuditRecord) -> Result<(), ReplayError> {
        let value = serde_json::to_vec(record).map_err(|e| ReplayError::Other {
            what: "encoding an audit record".into(),
            message: e.to_string(),
        })?;
        crate::publish(
            &self.ctx,
            &self.producer,
            &self.ctx.audit_topic,
            record.id.as_bytes(),
            &value,
        )
        .await
    }
}

/// One action as `replay audit` lists it: its first and last record merged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// The action's id.
    pub id: String,
    /// `replay` or `reset-offsets`.
    pub action: String,
    /// Who.
    pub operator: String,
    /// Where.
    pub host: Option<String>,
    /// When it started.
    pub started_at: String,
    /// When it ended, if an end was recorded.
    pub ended_at: Option<String>,
    /// The last event: `completed`, `failed`, `interrupted`, `refused`, or `started` when no
    /// end was recorded (still running, or killed: resume it by its id).
    pub status: String,
    /// What it acted on.
    pub target: Json,
    /// Its filters.
    pub filters: Option<FilterArgs>,
    /// Its last counts.
    pub counts: BTreeMap<String, i64>,
    /// Its error or refusal.
    pub message: Option<String>,
    /// Every record of the action, in order.
    pub events: Vec<String>,
}

/// Merges records into one entry per action id, in order of first appearance.
pub fn merge(records: Vec<AuditRecord>) -> Vec<AuditEntry> {
    let mut order: Vec<String> = Vec::new();
    let mut entries: BTreeMap<String, AuditEntry> = BTreeMap::new();
    for record in records {
        match entries.get_mut(&record.id) {
            Some(entry) => {
                entry.events.push(record.event.clone());
                if record.event != event::STARTED {
                    entry.ended_at = Some(record.at);
                }
                entry.status = record.event;
                if !record.counts.is_empty() {
                    entry.counts = record.counts;
                }
                if record.message.is_some() {
                    entry.message = record.message;
                }
                // A resumed replay may run under another operator: the latest is shown.
                entry.operator = record.operator;
            }
            None => {
                order.push(record.id.clone());
                let ended = record.event != event::STARTED;
                entries.insert(
                    record.id.clone(),
                    AuditEntry {
                        id: record.id,
                        action: record.action,
                        operator: record.operator,
                        host: record.host,
                        started_at: record.at.clone(),
                        ended_at: ended.then_some(record.at),
                        events: vec![record.event.clone()],
                        status: record.event,
                        target: record.target,
                        filters: record.filters,
                        counts: record.counts,
                        message: record.message,
                    },
                );
            }
        }
    }
    order
        .into_iter()
        .filter_map(|id| entries.remove(&id))
        .collect()
}

/// Reads every audit record and merges them per action.
pub async fn list(ctx: &Context) -> Result<Vec<AuditEntry>, ReplayError> {
    let topic = &ctx.audit_topic;
    let offsets = match ctx.describe(topic, "audit").await {
        Ok(offsets) => offsets,
        Err(ReplayError::UnknownTopic { .. }) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut records = Vec::new();
    for record in Scanner::start(ctx, topic, offsets.spans(None))
        .collect()
        .await?
    {
        let value = record.value.as_deref().unwrap_or_default();
        let parsed: AuditRecord =
            serde_json::from_slice(value).map_err(|e| ReplayError::Corrupt {
                what: format!(
                    "audit record at partition {} offset {} of `{topic}`",
                    record.partition, record.offset
                ),
                message: e.to_string(),
            })?;
        records.push(parsed);
    }
    Ok(merge(records))
}

/// The target in a few words.
pub fn describe_target(target: &Json) -> String {
    let text = |key: &str| target.get(key).and_then(Json::as_str).unwrap_or("-");
    if let Some(stages) = target.get("stages").and_then(Json::as_array) {
        let stages: Vec<&str> = stages.iter().filter_map(Json::as_str).collect();
        format!("tenant {} at {}", text("tenant"), stages.join(", "))
    } else if target.get("group").is_some() {
        format!(
            "group {} on {} to {}",
            text("group"),
            text("topic"),
            text("to")
        )
    } else {
        let destination = target
            .get("destination")
            .and_then(Json::as_str)
            .unwrap_or("origin topics");
        format!("{} -> {destination}", text("source"))
    }
}

/// Prints entries as a table.
pub fn print_table(entries: &[AuditEntry], out: &mut dyn Write) -> std::io::Result<()> {
    if entries.is_empty() {
        return writeln!(out, "no audit records");
    }
    let rows: Vec<[String; 7]> = entries
        .iter()
        .map(|e| {
            let status = if e.status == event::STARTED {
                "started, no end recorded".to_owned()
            } else {
                e.status.clone()
            };
            [
                e.started_at.clone(),
                e.action.clone(),
                e.id.clone(),
                e.operator.clone(),
                describe_target(&e.target),
                status,
                e.counts
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    let table = Table::new(
        [
            "STARTED", "ACTION", "ID", "OPERATOR", "TARGET", "STATUS", "COUNTS",
        ],
        [Align::Left; 7],
    )
    .with_rows(rows);
    write!(out, "{}", table.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_action_is_listed_once_with_its_last_state() {
        let target = json!({"source": "x.dlq"});
        let mut started = AuditRecord::new("r-1", action::REPLAY, event::STARTED, "ann", target);
        started.at = "2026-11-27T03:00:00.000Z".into();
        let mut done = started.clone();
        done.event = event::COMPLETED.into();
        done.at = "2026-11-27T03:01:00.000Z".into();
        done.counts = [("sent".to_owned(), 12)].into();
        let mut other = AuditRecord::new(
            "reset-1",
            action::RESET_OFFSETS,
            event::REFUSED,
            "bob",
            json!({"group": "g", "topic": "t", "to": "2026-11-27T00:00:00Z"}),
        );
        other.message = Some("consumer group `g` has 1 active member(s)".into());
        let killed = AuditRecord::new(
            "r-2",
            action::REPLAY,
            event::STARTED,
            "ann",
            json!({"source": "y.dlq", "destination": "y"}),
        );
        let entries = merge(vec![started, other, done, killed]);
        assert_eq!(
            entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            vec!["r-1", "reset-1", "r-2"]
        );
        assert_eq!(entries[0].status, event::COMPLETED);
        assert_eq!(entries[0].started_at, "2026-11-27T03:00:00.000Z");
        assert_eq!(
            entries[0].ended_at.as_deref(),
            Some("2026-11-27T03:01:00.000Z")
        );
        assert_eq!(entries[0].counts.get("sent"), Some(&12));
        assert_eq!(entries[1].status, event::REFUSED);
        assert_eq!(entries[2].ended_at, None);
        let mut table = Vec::new();
        print_table(&entries, &mut table).expect("table");
        let table = String::from_utf8(table).expect("utf-8");
        assert!(table.contains("x.dlq -> origin topics"), "{table}");
        assert!(
            table.contains("group g on t to 2026-11-27T00:00:00Z"),
            "{table}"
        );
        assert!(table.contains("started, no end recorded"), "{table}");
    }
}
