//! Reading dead-letter topics: what failed, grouped (`dlq list`), and each record decoded
//! with every header (`dlq show`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use backbone_core::dead_letter::headers as dlq;
use backbone_schemas::{WireCodec, WireError};
use serde::Serialize;
use serde_json::{json, Map, Value as Json};

use crate::error::ReplayError;
use crate::filter::{Filter, OffsetRange};
use crate::registry::Registry;
use crate::render::{hex, to_json};
use crate::scan::{ScanOrder, Scanned, Scanner, SourceRecord, Span};
use crate::Context;
use backbone_calendar::{format_rfc3339_ms, parse_rfc3339_ms};
use backbone_core::table::{Align, Table};

/// Prefixes of the headers a dead-letter queue adds; a replay strips them.
pub const DLQ_HEADER_PREFIXES: [&str; 3] =
    ["backbone.dlq.", "backbone.origin.", "__connect.errors."];

/// Prefix of the headers a replay adds; a later replay replaces them.
pub const REPLAY_HEADER_PREFIX: &str = "backbone.replay.";

/// Whether `name` is a header the DLQ added.
pub fn is_dlq_header(name: &str) -> bool {
    DLQ_HEADER_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Failed records sharing an error class and a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureGroup {
    /// `backbone.dlq.error_class`, `-` when absent.
    pub error_class: String,
    /// `backbone.dlq.reason`, `-` when absent.
    pub reason: String,
    /// How many records.
    pub count: u64,
    /// Earliest `backbone.dlq.failed_at` (RFC 3339), when any record had one.
    pub first_failure: Option<String>,
    /// Latest `backbone.dlq.failed_at`.
    pub last_failure: Option<String>,
    /// Distinct `backbone.origin.topic` values.
    pub source_topics: BTreeSet<String>,
    /// Distinct `backbone.dlq.processor` values.
    pub processors: BTreeSet<String>,
    #[serde(skip)]
    first_ms: Option<i64>,
    #[serde(skip)]
    last_ms: Option<i64>,
}

/// What `dlq list` reports.
#[derive(Debug, Clone, Serialize)]
pub struct DlqSummary {
    /// The topic read.
    pub topic: String,
    /// Records read.
    pub records: u64,
    /// Groups, largest first.
    pub groups: Vec<FailureGroup>,
}

/// Groups records by error class and reason as they are read.
#[derive(Debug, Default)]
pub struct Grouping {
    groups: BTreeMap<(String, String), FailureGroup>,
    records: u64,
}

impl Grouping {
    /// Counts `record` in its group.
    pub fn add(&mut self, record: &SourceRecord) {
        self.records += 1;
        let class = record.header(dlq::ERROR_CLASS).unwrap_or("-").to_owned();
        let reason = record.header(dlq::REASON).unwrap_or("-").to_owned();
        let group = self
            .groups
            .entry((class.clone(), reason.clone()))
            .or_insert_with(|| FailureGroup {
                error_class: class,
                reason,
                count: 0,
                first_failure: None,
                last_failure: None,
                source_topics: BTreeSet::new(),
                processors: BTreeSet::new(),
                first_ms: None,
                last_ms: None,
            });
        group.count += 1;
        if let Some(topic) = record.header(dlq::ORIGIN_TOPIC) {
            group.source_topics.insert(topic.to_owned());
        }
        if let Some(processor) = record.header(dlq::PROCESSOR) {
            group.processors.insert(processor.to_owned());
        }
        if let Some(at) = record.header(dlq::FAILED_AT).and_then(parse_rfc3339_ms) {
            if group.first_ms.is_none_or(|first| at < first) {
                group.first_ms = Some(at);
                group.first_failure = Some(format_rfc3339_ms(at));
            }
            if group.last_ms.is_none_or(|last| at > last) {
                group.last_ms = Some(at);
                group.last_failure = Some(format_rfc3339_ms(at));
            }
        }
    }

    /// The groups, largest first, then by class and reason.
    pub fn finish(self, topic: &str) -> DlqSummary {
        let mut groups: Vec<FailureGroup> = self.groups.into_values().collect();
        groups.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| (&a.error_class, &a.reason).cmp(&(&b.error_class, &b.reason)))
        });
        DlqSummary {
            topic: topic.to_owned(),
            records: self.records,
            groups,
        }
    }
}

/// Reads all of `topic` and groups its records, of `tenants` only when any are given.
pub async fn list(
    ctx: &Context,
    topic: &str,
    tenants: &[String],
) -> Result<DlqSummary, ReplayError> {
    let filter = Filter {
        tenants: tenants.to_vec(),
        ..Filter::default()
    };
    let described = ctx.describe(topic, "dead-letter").await?;
    let spans = described.spans(None);
    let mut scanner = Scanner::start_in(ctx, topic, spans, ScanOrder::Interleaved);
    let mut grouping = Grouping::default();
    while let Some(item) = scanner.next().await {
        if let Scanned::Records(records) = item? {
            records
                .iter()
                .filter(|r| filter.matches(r))
                .for_each(|r| grouping.add(r));
        }
    }
    Ok(grouping.finish(topic))
}

/// Prints `summary` as a table.
pub fn print_table(summary: &DlqSummary, out: &mut dyn Write) -> std::io::Result<()> {
    if summary.records == 0 {
        return writeln!(out, "`{}` holds no records", summary.topic);
    }
    let rows: Vec<[String; 6]> = summary
        .groups
        .iter()
        .map(|g| {
            [
                g.error_class.clone(),
                g.reason.clone(),
                g.count.to_string(),
                g.first_failure.clone().unwrap_or_else(|| "-".into()),
                g.last_failure.clone().unwrap_or_else(|| "-".into()),
                if g.source_topics.is_empty() {
                    "-".to_owned()
                } else {
                    g.source_topics
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(",")
                },
            ]
        })
        .collect();
    let table = Table::new(
        [
            "ERROR CLASS",
            "REASON",
            "COUNT",
            "FIRST FAILURE",
            "LAST FAILURE",
            "SOURCE TOPICS",
        ],
        [Align::Left; 6],
    )
    .with_rows(rows);
    write!(out, "{}", table.render())?;
    writeln!(
        out,
        "{} records in `{}`, {} groups",
        summary.records,
        summary.topic,
        summary.groups.len()
    )
}

/// Which records `dlq show` prints.
#[derive(Debug, Clone)]
pub struct ShowOptions {
    /// Only this partition.
    pub partition: Option<i32>,
    /// Only these offsets of it.
    pub offsets: Option<OffsetRange>,
    /// At most this many records.
    pub limit: u64,
    /// One line per record instead of indented JSON.
    pub compact: bool,
}

/// Prints the selected records of `topic` as JSON, values decoded through the registry.
/// Returns how many were printed.
pub async fn show(
    ctx: &Context,
    topic: &str,
    options: &ShowOptions,
    out: &mut (dyn Write + Send),
) -> Result<u64, ReplayError> {
    let described = ctx.describe(topic, "dead-letter").await?;
    let registry = Registry::new(ctx.registry.clone(), ctx.timeout)?;
    registry.check().await?;
    let codec = WireCodec::new(ctx.registry.clone());
    let spans = match options.partition {
        Some(partition) => {
            let (low, high) = described.watermarks(partition).ok_or_else(|| {
                ReplayError::invalid(
                    "--partition",
                    &partition.to_string(),
                    described.partition_forms(),
                )
            })?;
            let (from, end) = options
                .offsets
                .map_or((low, high), |range| range.clamp(low, high));
            if from >= end {
                return Err(ReplayError::NoSuchRecord {
                    topic: topic.to_owned(),
                    partition,
                    offsets: options
                        .offsets
                        .map(describe_range)
                        .unwrap_or_else(|| "(all)".into()),
                    low,
                    high,
                });
            }
            vec![Span {
                partition,
                from,
                end,
            }]
        }
        None => described.spans(None),
    };
    let mut scanner = Scanner::start(ctx, topic, spans);
    let mut shown = 0;
    'scan: while let Some(item) = scanner.next().await {
        let Scanned::Records(records) = item? else {
            continue;
        };
        for record in records {
            if shown >= options.limit {
                break 'scan;
            }
            let json = record_json(&codec, ctx.registry.url(), topic, &record).await?;
            if options.compact {
                writeln!(out, "{json}")?;
            } else {
                let pretty = serde_json::to_string_pretty(&json).unwrap_or_default();
                writeln!(out, "{pretty}")?;
            }
            shown += 1;
        }
    }
    Ok(shown)
}

fn describe_range(range: OffsetRange) -> String {
    match (range.first, range.last) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (a, b) => format!(
            "{}..{}",
            a.map(|a| a.to_string()).unwrap_or_default(),
            b.map(|b| b.to_string()).unwrap_or_default()
        ),
    }
}

/// One record as JSON: where it is, its key, every header, and its value decoded (or why not).
pub async fn record_json(
    codec: &WireCodec,
    registry_url: &str,
    topic: &str,
    record: &SourceRecord,
) -> Result<Json, ReplayError> {
    let mut object = Map::new();
    object.insert("topic".into(), json!(topic));
    object.insert("partition".into(), json!(record.partition));
    object.insert("offset".into(), json!(record.offset));
    object.insert(
        "timestamp".into(),
        record
            .timestamp_ms
            .map(format_rfc3339_ms)
            .map_or(Json::Null, Json::String),
    );
    object.insert("key".into(), bytes_json(record.key.as_deref()));
    let mut headers = Map::new();
    for (name, value) in record.headers.iter() {
        let value = bytes_json(value);
        match headers.get_mut(name) {
            Some(Json::Array(values)) => values.push(value),
            Some(first) => *first = Json::Array(vec![first.take(), value]),
            None => {
                headers.insert(name.to_owned(), value);
            }
        }
    }
    object.insert("headers".into(), Json::Object(headers));
    match record.value.as_deref() {
        None => {
            object.insert("value".into(), Json::Null);
        }
        Some(bytes) => match decode(codec, registry_url, bytes).await? {
            Ok((id, value)) => {
                object.insert("schema_id".into(), json!(id));
                object.insert("value".into(), value);
            }
            Err(err) => {
                object.insert(
                    "value_error".into(),
                    json!({"reason": err.reason(), "message": err.to_string()}),
                );
                object.insert("value_raw".into(), bytes_json(Some(bytes)));
            }
        },
    }
    Ok(Json::Object(object))
}

/// Decodes a framed value to readable JSON with its writer schema. The outer error is the
/// registry being unreachable (the command fails); the inner one is the record's own fault.
async fn decode(
    codec: &WireCodec,
    registry_url: &str,
    bytes: &[u8],
) -> Result<Result<(u32, Json), WireError>, ReplayError> {
    match codec.decode(bytes).await {
        Ok((id, value)) => {
            let schema = codec
                .schema(id)
                .await
                .map_err(|e| registry_down(registry_url, &e))?;
            Ok(Ok((id, to_json(&value, &schema))))
        }
        Err(err) if err.is_transient() => Err(registry_down(registry_url, &err)),
        Err(err) => Ok(Err(err)),
    }
}

/// A transient wire error: the registry could not be asked.
pub(crate) fn registry_down(url: &str, err: &WireError) -> ReplayError {
    ReplayError::Registry {
        url: url.to_owned(),
        message: err.to_string(),
    }
}

/// Text when the bytes are UTF-8, else hex; null for none.
fn bytes_json(bytes: Option<&[u8]>) -> Json {
    match bytes {
        None => Json::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(text)
                if !text
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t') =>
            {
                Json::String(text.to_owned())
            }
            _ => Json::String(hex(b)),
        },
    }
}

/// The time `--since`/`--until` would compare for a record, for printing.
pub fn record_time_text(record: &SourceRecord) -> String {
    Filter::record_time(record).map_or_else(|| "-".into(), format_rfc3339_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(class: &str, reason: &str, origin: &str, failed_at: &str) -> SourceRecord {
        let headers = [
            (dlq::ERROR_CLASS, class),
            (dlq::REASON, reason),
            (dlq::ORIGIN_TOPIC, origin),
            (dlq::FAILED_AT, failed_at),
            (dlq::PROCESSOR, "billing-sink"),
        ];
        SourceRecord {
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: headers.iter().map(|(n, v)| (n, Some(v))).collect(),
        }
    }

    #[test]
    fn groups_count_and_span_their_failures() {
        let mut grouping = Grouping::default();
        for record in [
            dead(
                "permanent",
                "unknown_schema_id",
                "a",
                "2026-01-01T00:00:02.000Z",
            ),
            dead(
                "permanent",
                "unknown_schema_id",
                "b",
                "2026-01-01T00:00:01.000Z",
            ),
            dead(
                "permanent",
                "unknown_schema_id",
                "a",
                "2026-01-01T00:00:03.000Z",
            ),
            dead(
                "transient",
                "retries_exhausted",
                "a",
                "2026-01-01T00:00:00.000Z",
            ),
        ] {
            grouping.add(&record);
        }
        grouping.add(&SourceRecord {
            partition: 0,
            offset: 9,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: Default::default(),
        });
        let summary = grouping.finish("x.dlq");
        assert_eq!(summary.records, 5);
        let first = &summary.groups[0];
        assert_eq!(
            (
                first.error_class.as_str(),
                first.reason.as_str(),
                first.count
            ),
            ("permanent", "unknown_schema_id", 3)
        );
        assert_eq!(
            first.first_failure.as_deref(),
            Some("2026-01-01T00:00:01.000Z")
        );
        assert_eq!(
            first.last_failure.as_deref(),
            Some("2026-01-01T00:00:03.000Z")
        );
        assert_eq!(
            first.source_topics.iter().collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        let unlabelled = summary
            .groups
            .iter()
            .find(|g| g.reason == "-")
            .expect("records without DLQ headers form their own group");
        assert_eq!(unlabelled.count, 1);
        assert_eq!(unlabelled.first_failure, None);
        let mut table = Vec::new();
        print_table(&summary, &mut table).expect("table");
        let table = String::from_utf8(table).expect("utf-8");
        assert!(table.starts_with("ERROR CLASS"), "{table}");
        assert!(table.contains("retries_exhausted"), "{table}");
        assert!(table.contains("5 records in `x.dlq`, 3 groups"), "{table}");
    }

    #[test]
    fn dlq_headers_are_recognised_by_prefix() {
        assert!(is_dlq_header("backbone.dlq.reason"));
        assert!(is_dlq_header("backbone.origin.offset"));
        assert!(is_dlq_header("__connect.errors.topic"));
        assert!(!is_dlq_header("traceparent"));
        assert!(!is_dlq_header("backbone.replay.id"));
    }

    #[test]
    fn bytes_show_as_text_or_hex() {
        assert_eq!(bytes_json(Some(b"acme:s-1")), json!("acme:s-1"));
        assert_eq!(bytes_json(Some(&[0, 0, 0, 0, 7])), json!("0x0000000007"));
        assert_eq!(bytes_json(None), Json::Null);
    }
}
