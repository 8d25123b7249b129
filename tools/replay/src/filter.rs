//! Which records a replay selects: the filter flags as given, their parsed form, and the
//! test applied to each record.
//!
//! A record's time is its `backbone.dlq.failed_at` header when it has one (a dead letter: the
//! time it failed is what an incident is about), otherwise its Kafka timestamp. `--since` is
//! inclusive, `--until` exclusive. `--offsets A..B` is inclusive at both ends. Repeated
//! `--key`, `--tenant`, `--error-class` and `--reason` flags select any of their values; repeated
//! `--header` flags must all match. A record's tenant is its key's part before the first `:`
//! (every topic's key is `<tenant_id>:<id>`; dead letters keep their input's key). `--limit` keeps the first N matching records in partition order.

use backbone_core::dead_letter::{headers as dlq, tenant_of_key};
use serde::{Deserialize, Serialize};

use crate::error::ReplayError;
use crate::scan::SourceRecord;
use crate::time::{parse_instant, INSTANT_FORMS};
use backbone_calendar::{format_rfc3339_ms, parse_rfc3339_ms};

/// The filter flags exactly as given, kept so that a resumed replay can be checked against
/// the one it continues.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterArgs {
    /// `--since`.
    pub since: Option<String>,
    /// `--until`.
    pub until: Option<String>,
    /// `--partition`.
    pub partition: Option<i32>,
    /// `--offsets`.
    pub offsets: Option<String>,
    /// `--key`, any of.
    #[serde(default)]
    pub keys: Vec<String>,
    /// `--tenant`, any of.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// `--error-class`, any of.
    #[serde(default)]
    pub error_classes: Vec<String>,
    /// `--reason`, any of.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// `--header name=value`, all of.
    #[serde(default)]
    pub headers: Vec<String>,
    /// `--limit`.
    pub limit: Option<u64>,
}

impl FilterArgs {
    /// The flags as they would be typed, or `every record` when there are none.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut add = |flag: &str, value: &str| parts.push(format!("{flag} {value}"));
        if let Some(v) = &self.since {
            add("--since", v);
        }
        if let Some(v) = &self.until {
            add("--until", v);
        }
        if let Some(v) = self.partition {
            add("--partition", &v.to_string());
        }
        if let Some(v) = &self.offsets {
            add("--offsets", v);
        }
        for v in &self.keys {
            add("--key", v);
        }
        for v in &self.tenants {
            add("--tenant", v);
        }
        for v in &self.error_classes {
            add("--error-class", v);
        }
        for v in &self.reasons {
            add("--reason", v);
        }
        for v in &self.headers {
            add("--header", v);
        }
        if let Some(v) = self.limit {
            add("--limit", &v.to_string());
        }
        if parts.is_empty() {
            "every record".to_owned()
        } else {
            parts.join(" ")
        }
    }

    /// Whether a time range is among the filters.
    pub fn has_time_range(&self) -> bool {
        self.since.is_some() || self.until.is_some()
    }
}

/// Offsets `first..=last` of one partition; either end may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    /// First offset selected.
    pub first: Option<i64>,
    /// Last offset selected (inclusive).
    pub last: Option<i64>,
}

impl OffsetRange {
    /// What `--offsets` accepts, for messages.
    pub const FORMS: &'static str =
        "offsets A..B, inclusive at both ends (10..12 selects 10, 11 and 12), or A.. or ..B or N";

    /// Parses `A..B`, `A..`, `..B` or `N`.
    pub fn parse(flag: &'static str, text: &str) -> Result<Self, ReplayError> {
        let bad = || ReplayError::malformed(flag, text, Self::FORMS);
        let offset = |part: &str| -> Result<Option<i64>, ReplayError> {
            let part = part.trim();
            if part.is_empty() {
                return Ok(None);
            }
            match part.parse::<i64>() {
                Ok(n) if n >= 0 => Ok(Some(n)),
                _ => Err(bad()),
            }
        };
        let range = match text.split_once("..") {
            Some((first, last)) => Self {
                first: offset(first)?,
                last: offset(last.strip_prefix('=').unwrap_or(last))?,
            },
            None => {
                let n = offset(text)?.ok_or_else(bad)?;
                Self {
                    first: Some(n),
                    last: Some(n),
                }
            }
        };
        if let (Some(first), Some(last)) = (range.first, range.last) {
            if first > last {
                return Err(ReplayError::malformed(
                    flag,
                    text,
                    "a range whose first offset is not after its last",
                ));
            }
        }
        Ok(range)
    }

    /// The span `[from, end)` of this range inside a partition holding `low..high`.
    pub fn clamp(&self, low: i64, high: i64) -> (i64, i64) {
        let from = self.first.unwrap_or(low).max(low);
        let end = self
            .last
            .map_or(high, |last| last.saturating_add(1))
            .min(high);
        (from, end.max(from))
    }

    /// Whether `offset` is in the range.
    pub fn contains(&self, offset: i64) -> bool {
        self.first.is_none_or(|first| offset >= first)
            && self.last.is_none_or(|last| offset <= last)
    }
}

/// The filters, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Records at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Records before this time.
    pub until_ms: Option<i64>,
    /// Only this partition of the source.
    pub partition: Option<i32>,
    /// Only these offsets of that partition.
    pub offsets: Option<OffsetRange>,
    /// Keys, any of.
    pub keys: Vec<String>,
    /// Tenants, any of.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Error classes, any of.
    pub error_classes: Vec<String>,
    /// Reasons, any of.
    pub reasons: Vec<String>,
    /// Headers that must all be present with these values.
    pub headers: Vec<(String, String)>,
    /// At most this many records.
    pub limit: Option<u64>,
}

/// Which time `--since`/`--until` compare, for messages.
pub const TIME_BASIS: &str =
    "by backbone.dlq.failed_at for dead letters, the record timestamp otherwise";

impl Filter {
    /// Parses `args`; relative times (`2h`) count back from `now_ms`.
    pub fn parse(args: &FilterArgs, now_ms: i64) -> Result<Self, ReplayError> {
        let instant = |flag: &'static str, text: &Option<String>| -> Result<_, ReplayError> {
            text.as_deref()
                .map(|t| {
                    parse_instant(t, now_ms)
                        .ok_or_else(|| ReplayError::malformed(flag, t, INSTANT_FORMS))
                })
                .transpose()
        };
        let since_ms = instant("--since", &args.since)?;
        let until_ms = instant("--until", &args.until)?;
        if let (Some(since), Some(until)) = (since_ms, until_ms) {
            if until <= since {
                return Err(ReplayError::malformed(
                    "--until",
                    args.until.as_deref().unwrap_or_default(),
                    format!("a time after --since ({})", format_rfc3339_ms(since)),
                ));
            }
        }
        if let Some(partition) = args.partition {
            if partition < 0 {
                return Err(ReplayError::malformed(
                    "--partition",
                    &partition.to_string(),
                    "a partition number, 0 or more",
                ));
            }
        }
        let offsets = match &args.offsets {
            Some(text) => {
                if args.partition.is_none() {
                    return Err(ReplayError::malformed(
                        "--offsets",
                        text,
                        "--partition N alongside it: offsets belong to one partition",
                    ));
                }
                Some(OffsetRange::parse("--offsets", text)?)
            }
            None => None,
        };
        let headers = args
            .headers
            .iter()
            .map(|h| match h.split_once('=') {
                Some((name, value)) if !name.trim().is_empty() => {
                    Ok((name.trim().to_owned(), value.to_owned()))
                }
                _ => Err(ReplayError::malformed(
                    "--header",
                    h,
                    "name=value, like traceparent=00-abc or backbone.dlq.processor=billing-sink",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let non_empty = |flag: &'static str, values: &[String]| match values
            .iter()
            .find(|v| v.trim().is_empty())
        {
            Some(v) => Err(ReplayError::malformed(flag, v, "a value that is not empty")),
            None => Ok(values.to_vec()),
        };
        if args.limit == Some(0) {
            return Err(ReplayError::malformed(
                "--limit",
                "0",
                "a number of records, 1 or more",
            ));
        }
        Ok(Self {
            since_ms,
            until_ms,
            partition: args.partition,
            offsets,
            keys: args.keys.clone(),
            tenants: non_empty("--tenant", &args.tenants)?,
            error_classes: non_empty("--error-class", &args.error_classes)?,
            reasons: non_empty("--reason", &args.reasons)?,
            headers,
            limit: args.limit,
        })
    }

    /// Whether a time range is set.
    pub fn has_time_range(&self) -> bool {
        self.since_ms.is_some() || self.until_ms.is_some()
    }

    /// The time `--since`/`--until` compare for `record`: its `backbone.dlq.failed_at` header
    /// when it has one, else its timestamp.
    pub fn record_time(record: &SourceRecord) -> Option<i64> {
        record
            .header(dlq::FAILED_AT)
            .and_then(parse_rfc3339_ms)
            .or(record.timestamp_ms)
    }

    /// Whether `record` is inside the time range (always, without one).
    pub fn in_time_range(&self, record: &SourceRecord) -> bool {
        if !self.has_time_range() {
            return true;
        }
        let Some(time) = Self::record_time(record) else {
            return false;
        };
        self.since_ms.is_none_or(|since| time >= since)
            && self.until_ms.is_none_or(|until| time < until)
    }

    /// Whether `record` passes every filter but `--limit`.
    pub fn matches(&self, record: &SourceRecord) -> bool {
        if self.partition.is_some_and(|p| p != record.partition) {
            return false;
        }
        if self.offsets.is_some_and(|o| !o.contains(record.offset)) {
            return false;
        }
        if !self.keys.is_empty() {
            let key = record.key.as_deref().unwrap_or_default();
            if !self.keys.iter().any(|k| k.as_bytes() == key) {
                return false;
            }
        }
        if !self.tenants.is_empty() {
            let tenant = tenant_of_key(record.key.as_deref());
            if !tenant.is_some_and(|t| self.tenants.iter().any(|w| w == t)) {
                return false;
            }
        }
        let any_of = |wanted: &[String], header: &str| {
            wanted.is_empty()
                || record
                    .header(header)
                    .is_some_and(|v| wanted.iter().any(|w| w == v))
        };
        if !any_of(&self.error_classes, dlq::ERROR_CLASS) || !any_of(&self.reasons, dlq::REASON) {
            return false;
        }
        let headers_match = self.headers.iter().all(|(name, value)| {
            record
                .headers
                .iter()
                .any(|(n, v)| n == name && v.unwrap_or_default() == value.as_bytes())
        });
        headers_match && self.in_time_range(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64, headers: &[(&str, &str)]) -> SourceRecord {
        SourceRecord {
            partition,
            offset,
            timestamp_ms: Some(1_000_000),
            key: Some(b"acme:s-1".to_vec()),
            value: Some(b"v".to_vec()),
            headers: headers.iter().map(|(n, v)| (n, Some(v))).collect(),
        }
    }

    fn parse(args: FilterArgs) -> Result<Filter, ReplayError> {
        Filter::parse(&args, 1_709_210_096_789)
    }

    #[test]
    fn tenants_are_the_keys_part_before_the_first_colon() {
        let filter = parse(FilterArgs {
            tenants: vec!["acme".into(), "initech".into()],
            ..FilterArgs::default()
        })
        .expect("filter");
        let keyed = |key: Option<&[u8]>| SourceRecord {
            key: key.map(<[u8]>::to_vec),
            ..record(0, 1, &[])
        };
        assert!(filter.matches(&keyed(Some(b"acme:s-1"))));
        assert!(filter.matches(&keyed(Some(b"initech:c-9"))));
        assert!(!filter.matches(&keyed(Some(b"globex:s-1"))));
        assert!(
            !filter.matches(&keyed(Some(b"acmecorp:s-1"))),
            "the whole part, not a prefix"
        );
        assert!(!filter.matches(&keyed(Some(b"acme"))), "no tenant part");
        assert!(!filter.matches(&keyed(None)));
        assert!(parse(FilterArgs::default())
            .expect("none")
            .matches(&keyed(None)));
        let blank = parse(FilterArgs {
            tenants: vec![" ".into()],
            ..FilterArgs::default()
        })
        .expect_err("blank tenant");
        assert!(
            blank.to_string().starts_with("malformed filter --tenant"),
            "{blank}"
        );
    }

    #[test]
    fn offsets_parse_inclusive_and_open_ended() {
        let r = OffsetRange::parse("--offsets", "10..12").expect("range");
        assert!(!r.contains(9) && r.contains(10) && r.contains(12) && !r.contains(13));
        assert_eq!(r.clamp(0, 100), (10, 13));
        assert_eq!(r.clamp(11, 12), (11, 12));
        assert_eq!(
            OffsetRange::parse("--offsets", "5..").expect("open end"),
            OffsetRange {
                first: Some(5),
                last: None
            }
        );
        assert_eq!(
            OffsetRange::parse("--offsets", "..=7").expect("open start"),
            OffsetRange {
                first: None,
                last: Some(7)
            }
        );
        assert_eq!(
            OffsetRange::parse("--offsets", "4").expect("one"),
            OffsetRange {
                first: Some(4),
                last: Some(4)
            }
        );
        assert_eq!(
            OffsetRange::parse("--offsets", "..")
                .expect("all")
                .clamp(3, 9),
            (3, 9)
        );
        assert_eq!(
            OffsetRange::parse("--offsets", "50..60")
                .expect("beyond")
                .clamp(0, 10),
            (50, 50)
        );
        for bad in ["5..2", "a..b", "-1..3", "", "1...3", "x"] {
            let err = OffsetRange::parse("--offsets", bad).expect_err(bad);
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("malformed filter --offsets \"{bad}\"")),
                "{text}"
            );
        }
    }

    #[test]
    fn malformed_flags_are_named_with_their_value() {
        let cases: Vec<(FilterArgs, &str)> = vec![
            (
                FilterArgs {
                    since: Some("yesterday".into()),
                    ..FilterArgs::default()
                },
                "malformed filter --since \"yesterday\"",
            ),
            (
                FilterArgs {
                    until: Some("2024-13-01T00:00:00Z".into()),
                    ..FilterArgs::default()
                },
                "malformed filter --until \"2024-13-01T00:00:00Z\"",
            ),
            (
                FilterArgs {
                    since: Some("2024-02-02T00:00:00Z".into()),
                    until: Some("2024-02-01T00:00:00Z".into()),
                    ..FilterArgs::default()
                },
                "malformed filter --until \"2024-02-01T00:00:00Z\": expected a time after --since",
            ),
            (
                FilterArgs {
                    offsets: Some("1..2".into()),
                    ..FilterArgs::default()
                },
                "malformed filter --offsets \"1..2\": expected --partition N",
            ),
            (
                FilterArgs {
                    headers: vec!["traceparent".into()],
                    ..FilterArgs::default()
                },
                "malformed filter --header \"traceparent\": expected name=value",
            ),
            (
                FilterArgs {
                    headers: vec!["=x".into()],
                    ..FilterArgs::default()
                },
                "malformed filter --header \"=x\"",
            ),
            (
                FilterArgs {
                    reasons: vec![" ".into()],
                    ..FilterArgs::default()
                },
                "malformed filter --reason \" \"",
            ),
            (
                FilterArgs {
                    limit: Some(0),
                    ..FilterArgs::default()
                },
                "malformed filter --limit \"0\"",
            ),
            (
                FilterArgs {
                    partition: Some(-1),
                    ..FilterArgs::default()
                },
                "malformed filter --partition \"-1\"",
            ),
        ];
        for (args, expected) in cases {
            let err = parse(args.clone()).expect_err(&args.describe());
            assert!(err.to_string().starts_with(expected), "{err}");
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn each_filter_selects_what_it_names() {
        let dead = record(
            1,
            7,
            &[
                (dlq::ERROR_CLASS, "permanent"),
                (dlq::REASON, "unknown_schema_id"),
                (dlq::FAILED_AT, "2024-02-29T12:00:00.000Z"),
                ("traceparent", "00-abc"),
            ],
        );
        let all = parse(FilterArgs::default()).expect("no filters");
        assert!(all.matches(&dead));
        let check = |args: FilterArgs, expected: bool| {
            let what = args.describe();
            assert_eq!(
                parse(args).expect("filter").matches(&dead),
                expected,
                "{what}"
            );
        };
        let args = FilterArgs::default;
        check(
            FilterArgs {
                partition: Some(1),
                offsets: Some("7..7".into()),
                ..args()
            },
            true,
        );
        check(
            FilterArgs {
                partition: Some(1),
                offsets: Some("8..".into()),
                ..args()
            },
            false,
        );
        check(
            FilterArgs {
                partition: Some(0),
                ..args()
            },
            false,
        );
        check(
            FilterArgs {
                keys: vec!["other".into(), "acme:s-1".into()],
                ..args()
            },
            true,
        );
        check(
            FilterArgs {
                keys: vec!["acme:s-2".into()],
                ..args()
            },
            false,
        );
        check(
            FilterArgs {
                error_classes: vec!["transient".into()],
                ..args()
            },
            false,
        );
        check(
            FilterArgs {
                error_classes: vec!["permanent".into()],
                reasons: vec!["unknown_schema_id".into()],
                ..args()
            },
            true,
        );
        check(
            FilterArgs {
                reasons: vec!["undecodable_body".into()],
                ..args()
            },
            false,
        );
        check(
            FilterArgs {
                headers: vec!["traceparent=00-abc".into()],
                ..args()
            },
            true,
        );
        check(
            FilterArgs {
                headers: vec!["traceparent=00-abc".into(), "tenant=acme".into()],
                ..args()
            },
            false,
        );
        // The failed_at header decides, not the record timestamp (1970).
        check(
            FilterArgs {
                since: Some("2024-02-29T12:00:00Z".into()),
                until: Some("2024-02-29T12:00:00.001Z".into()),
                ..args()
            },
            true,
        );
        check(
            FilterArgs {
                until: Some("2024-02-29T12:00:00Z".into()),
                ..args()
            },
            false,
        );
        check(
            FilterArgs {
                since: Some("2024-02-29T12:00:00.001Z".into()),
                ..args()
            },
            false,
        );
    }

    #[test]
    fn plain_records_are_timed_by_their_timestamp() {
        let plain = record(0, 0, &[]);
        let filter = parse(FilterArgs {
            since: Some("1970-01-01T00:16:40Z".into()),
            ..FilterArgs::default()
        })
        .expect("filter");
        assert_eq!(Filter::record_time(&plain), Some(1_000_000));
        assert!(filter.matches(&plain));
        let filter = parse(FilterArgs {
            until: Some("1970-01-01T00:16:40Z".into()),
            ..FilterArgs::default()
        })
        .expect("filter");
        assert!(!filter.matches(&plain));
        let mut untimed = plain;
        untimed.timestamp_ms = None;
        assert!(!filter.matches(&untimed), "no time, no match in a range");
    }

    #[test]
    fn describe_reads_like_the_command_line() {
        let args = FilterArgs {
            since: Some("2h".into()),
            keys: vec!["k".into()],
            limit: Some(3),
            ..FilterArgs::default()
        };
        assert_eq!(args.describe(), "--since 2h --key k --limit 3");
        assert_eq!(FilterArgs::default().describe(), "every record");
    }
}
